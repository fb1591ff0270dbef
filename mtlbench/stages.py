"""The user-lifecycle stages of the STAN paper (section 2.1: New, Wander, Stick, Loyal), named in one place.

The simulator's ground-truth stages, the rule-based stage of section 2.1 (a derived input) and the metrics and
analyses that name stages all read these names.
"""

STAGE_NAMES: tuple[str, ...] = ("New", "Wander", "Stick", "Loyal")
#: the rule-based stage's id for rows without an earlier training row of their user
UNKNOWN_STAGE = len(STAGE_NAMES)
#: names of the rule-based stage ids, ``unknown`` last
RULE_STAGE_LABELS: tuple[str, ...] = (*STAGE_NAMES, "unknown")
