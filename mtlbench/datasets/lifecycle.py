"""Seeded user-lifecycle simulator: the default dataset of the benchmark.

Generative story (after the STAN paper, sec. 2.1):

* Users move through latent lifecycle stages 0..3 = New, Wander, Stick, Loyal along their own
  timeline. The stage process is a semi-Markov chain: a user stays in a stage for a geometric number of
  interactions (stay probability ``stage_persistence``, Loyal leaves slowest) and then jumps, mostly
  forward (New -> Wander/Stick -> Loyal) with some back-moves. Observation starts mid-life, so the
  first stage of a user is random, biased towards New.
* Each user has a heavy-tailed (lognormal) number of interactions summing to ``n_rows``, grouped into
  sessions of a few interactions; timestamps increase along each user's timeline and users interleave.
* The item shown depends on the stage: New users see popular items, Wanderers browse the long tail,
  Stick and Loyal users keep to their favourite category.
* Labels: ``click``; ``long_view``, a continuous log stay time binarised at its median over rows (equal
  frequency binning, as STAN does with staytime); ``purchase``, only possible after a click (entire
  space: purchase=1 implies click=1, 0 when not clicked). Each logit is a stage propensity (New: low
  click; Wander: high click, low stay; Stick: high click and stay, low purchase; Loyal: steady on all
  three) + a stage-scaled user x item latent affinity + scenario offset + item / demographic x category
  biases + Gaussian noise of std ``noise``.
* Observable features only hint at the stage: ``activity_level`` is a noisy function of it,
  ``tenure_bucket`` buckets the position along the user's timeline, ``hist_items`` holds the user's
  previous items (most recent first). The true stage is kept in the analysis field ``true_stage``
  (``schema.stage_field``, named by ``schema.stage_labels``), and the true log-odds of every label in the
  analysis fields ``true_logit_<task>`` (the logit of the oracle probability of the label as it was generated,
  row noise marginalised, accidental positives included; clipped to +-34.5). No model reads analysis fields.

Three knobs set what stage awareness can gain (STAN's premise); at their defaults the data is exactly what it
was without them (same random draws in the same order; the knobs draw their own randomness from
``np.random.default_rng([seed, k])``):

* ``task_conflict`` (default 0: none): how far the tasks' item preferences diverge within a stage; one number
  rho in [-1, 1] for every stage or ``{stage_name: rho}`` (unnamed stages: 0). A task's *item preference* is
  the item-dependent part of its label's logit: ``Q_click`` = the click logit's affinity + item bias +
  demographic x category terms, ``Q_long_view`` = the same terms of the mean log stay time, and
  ``Q_purchase`` = ``Q_click`` + the conversion logit's terms (price included), since purchase = click AND
  conversion. On the rows of a stage with rho != 0 each Q_t is standardised over those rows (z_t), the
  tasks' mean z_bar is taken and ``z'_t = (1 - rho) z_bar + (1 + rho) (z_t - z_bar)``, rescaled to unit std
  and mapped back to Q_t's mean and std over the rows; the conversion logit's item term becomes
  ``Q'_purchase - Q'_click``. rho = 0 leaves the preferences as they are; rho = 1 keeps only their contrast
  (three preferences at pairwise correlation -1/2: what one task ranks high another ranks low; the true
  logits, which keep shared context terms such as the scenario offsets, correlate negatively within users:
  -0.35 / -0.13 / -0.57 for click~long_view / click~purchase / long_view~purchase in Wander of the default
  data, against +0.64 / +0.58 / +0.54 without conflict); rho = -1 gives every task the same preference
  (correlations rise towards 1). Each stage keeps its marginal label rates: per task, one offset on the
  stage's rows is solved (bisection, in the order click, long_view, purchase) so that the mean true
  probability over the stage's rows equals the one without conflict. The labels reuse the very same random
  draws (common random numbers): rows of other stages keep their labels and true logits, and ``long_view`` is
  binarised at the median log stay time of the setting without conflict.
* ``label_noise`` (default 0: none): accidental, item-independent positives per stage and task; one number
  eps for every stage and task, or ``{stage_name: eps}`` (every task), or ``{stage_name: {task: eps}}``
  (unnamed: 0). After the labels are drawn, ``y = max(y_true, a)`` with ``a ~ Bernoulli(eps[stage, task])``
  drawn independently per row and task, so eps does not depend on the positive rate. For ``purchase`` the
  accidental positive lands only on rows whose (observed) click is 1, so purchase = 1 still implies
  click = 1: ``purchase = max(purchase_true, click * a)``. The oracle probabilities account for it
  (``1 - (1 - p)(1 - eps)``; purchase: ``p_purchase + (P(click observed) - p_purchase) eps``).
* ``stage_dwell`` (default null: today's dwell): the mean number of interactions a user stays in a stage, in
  units of the history window ``seq_len`` (the length of ``hist_items``); one number for every stage or
  ``{stage_name: windows}`` (unnamed stages keep the default). A stay is geometric with leaving probability
  ``1 / (stage_dwell * seq_len)`` per interaction (needs ``stage_dwell * seq_len >= 1``). The default is
  ``1 / ((1 - stage_persistence) * LEAVE_FACTOR[stage])`` interactions: 22.2, 27.8, 33.3 and 83.3 at
  ``stage_persistence=0.97``, i.e. 2.2, 2.8, 3.3 and 8.3 windows of ``seq_len=10``. Only the stages move:
  the stage process (and the favourite-category picks that follow it) draw from the knob's stream while the
  main stream still makes the default's draws, so users, sessions, timestamps, scenarios and the label draws
  are those of the default setting.

Everything is vectorised with numpy; the only Python loops run over stage segments, stages and tasks (and
the bisection steps of ``task_conflict``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
from scipy.special import expit, logit, ndtr

from mtlbench.data.schema import DatasetSchema, Feature, true_logit_column
from mtlbench.data.source import DatasetSource
from mtlbench.datasets.features import recent_items
from mtlbench.errors import ConfigError
from mtlbench.registry import register_dataset
from mtlbench.stages import STAGE_NAMES

TASKS = ["click", "long_view", "purchase"]
N_STAGES = len(STAGE_NAMES)

# -- stage dynamics ----------------------------------------------------------------------------------
#: stage of a user's first observed interaction
INITIAL_STAGE_P = np.array([0.55, 0.20, 0.15, 0.10])
#: where a user goes when leaving a stage (rows: from, cols: to); mostly forward, some back-moves
JUMP_P = np.array(
    [
        [0.00, 0.55, 0.45, 0.00],  # New -> Wander / Stick
        [0.15, 0.00, 0.45, 0.40],  # Wander -> Stick / Loyal, sometimes back to New
        [0.05, 0.25, 0.00, 0.70],  # Stick -> Loyal, sometimes back to Wander
        [0.00, 0.30, 0.70, 0.00],  # Loyal -> back to Stick / Wander (fatigue)
    ]
)
#: multiplies ``1 - stage_persistence``: New is left quickly, Loyal slowly
LEAVE_FACTOR = np.array([1.5, 1.2, 1.0, 0.4])

# -- stage propensities (logits; long_view: mean log stay time) --------------------------------------
CLICK_LOGIT = np.array([-2.0, -0.3, -1.0, -1.2])
STAY_MEAN = np.array([0.15, -0.6, 0.6, 0.35])
CVR_LOGIT = np.array([-2.0, -1.4, -3.2, -1.6])
#: how strongly user x item affinity drives the labels per stage (Wanderers browse, Loyal users choose)
AFFINITY_SCALE = np.array([0.7, 0.4, 1.0, 1.3])
#: log stay time bonus of clicked impressions (couples the two tasks)
STAY_CLICK_BONUS = 0.5
#: residual std of log stay time (on top of ``noise``)
STAY_RESIDUAL = 1.0
#: purchase logit drop from the cheapest to the most expensive price bucket
PRICE_EFFECT = 1.0
#: click logit amplitude of the time-of-day cycle
HOUR_EFFECT = 0.3

# -- item choice per stage -------------------------------------------------------------------------------
#: Zipf exponent of the popularity-based item draw: New sees the head, Wander the long tail
ZIPF_EXPONENT = np.array([1.2, 0.6, 1.0, 1.0])
#: probability that an impression comes from the user's favourite category
FAVOURITE_P = np.array([0.0, 0.0, 0.5, 0.6])

# -- features ---------------------------------------------------------------------------------------
N_CATEGORIES = 30
N_BRANDS = 200
N_PRICE_BUCKETS = 10
N_AGE = 7
N_GENDER = 3
N_CITY = 50
N_ACTIVITY = 5
N_TENURE = 8  # log2 buckets of the position on the user's timeline
ACTIVITY_NOISE = 0.9  # std of activity_level around its stage mean
LATENT_DIM = 8
USER_COUNT_SIGMA = 1.0  # lognormal sigma of interactions per user
SESSION_MEAN_LEN = 4.0  # mean interactions per session
HORIZON_S = 30 * 86400  # observation window (s)
IN_SESSION_GAP_S = 40.0  # mean gap between interactions of a session (s)
DAY_S = 86400

# -- knobs -------------------------------------------------------------------------------------------------
#: second key of ``np.random.default_rng([seed, key])``: the knobs' own random streams (the default path never
#: draws from them)
LABEL_NOISE_STREAM = 1
STAGE_DWELL_STREAM = 2
#: bisection steps of the per-stage offsets that keep the label rates under ``task_conflict``
CALIBRATION_STEPS = 60
CALIBRATION_RANGE = 30.0
#: true logits are stored clipped to the logit of 1e-15 (a probability of 0 or 1 has no finite logit)
TRUE_LOGIT_EPS = 1e-15


class Simulation(NamedTuple):
    """Output of :meth:`LifecycleSimulator.simulate`: the dataset plus the true label probabilities."""

    schema: DatasetSchema
    columns: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]  # task -> true P(label = 1) per row (oracle predictions)


@register_dataset("lifecycle")
class LifecycleSimulator(DatasetSource):
    """Synthetic multi-task, multi-scenario data whose label distributions follow latent user stages."""

    # 2: item_popularity from the catalogue rank (no future counts); 3: task roles; 4: the knobs task_conflict,
    # label_noise and stage_dwell, true_logit_<task> analysis columns, the stage field (same columns at defaults)
    version = "4"

    def __init__(
        self,
        n_users: int = 5000,
        n_items: int = 5000,
        n_rows: int = 300000,
        seq_len: int = 10,
        n_scenarios: int = 3,
        seed: int = 0,
        stage_persistence: float = 0.97,
        noise: float = 0.5,
        task_conflict: float | dict[str, float] = 0.0,
        label_noise: float | dict[str, Any] = 0.0,
        stage_dwell: float | dict[str, float] | None = None,
    ) -> None:
        """``stage_persistence``: per-interaction probability of staying in a stage (scaled by
        ``LEAVE_FACTOR``); ``noise``: std of the unobservable per-row Gaussian noise on every logit;
        ``task_conflict``, ``label_noise``, ``stage_dwell``: see the module docstring (defaults: none, none,
        today's dwell)."""
        if min(n_users, n_items, n_rows, seq_len, n_scenarios) <= 0:
            raise ConfigError("lifecycle: n_users, n_items, n_rows, seq_len and n_scenarios must be positive")
        if not 0.0 <= stage_persistence < 1.0:
            raise ConfigError(f"lifecycle: stage_persistence must be in [0, 1), got {stage_persistence}")
        if noise < 0:
            raise ConfigError(f"lifecycle: noise must be >= 0, got {noise}")
        self.n_users, self.n_items, self.n_rows = int(n_users), int(n_items), int(n_rows)
        self.seq_len, self.n_scenarios, self.seed = int(seq_len), int(n_scenarios), int(seed)
        self.stage_persistence, self.noise = float(stage_persistence), float(noise)
        #: rho per stage (0: the tasks' preferences as they are)
        self.conflict = _per_stage("task_conflict", task_conflict, 0.0, -1.0, 1.0)
        #: eps per stage x task (0: no accidental positives)
        self.label_eps = _label_noise(label_noise)
        #: probability of leaving each stage after an interaction: by default from ``stage_persistence``
        self.default_leave = np.clip((1.0 - self.stage_persistence) * LEAVE_FACTOR, 1e-9, 1.0)
        self.leave = self.default_leave
        self.dwell_set = stage_dwell is not None
        if stage_dwell is not None:
            windows = _per_stage("stage_dwell", stage_dwell, np.nan, 1.0 / self.seq_len, np.inf)
            self.leave = np.where(np.isnan(windows), self.default_leave, 1.0 / (windows * self.seq_len))

    # -- contract -------------------------------------------------------------------------------------
    def build(self) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
        sim = self.simulate()
        return sim.schema, sim.columns

    def make_schema(self) -> DatasetSchema:
        """The schema of this simulator's columns (vocabularies follow the settings)."""
        return DatasetSchema(
            name="lifecycle",
            features=[
                Feature("user_id", vocab_size=self.n_users, role="user"),
                Feature("age_bucket", vocab_size=N_AGE, role="user"),
                Feature("gender", vocab_size=N_GENDER, role="user"),
                Feature("city", vocab_size=N_CITY, role="user"),
                Feature("activity_level", vocab_size=N_ACTIVITY, role="user"),
                Feature("tenure_bucket", vocab_size=N_TENURE, role="user"),
                Feature("item_id", vocab_size=self.n_items, role="item"),
                Feature("category", vocab_size=N_CATEGORIES, role="item"),
                Feature("brand", vocab_size=N_BRANDS, role="item"),
                Feature("price_bucket", vocab_size=N_PRICE_BUCKETS, role="item"),
                Feature("scenario", vocab_size=self.n_scenarios, role="context"),
                Feature("item_popularity", kind="numeric", role="item"),
                Feature("hour", kind="numeric", role="context"),
                Feature("hist_items", kind="sequence", max_len=self.seq_len, embedding="item_id", role="user"),
            ],
            tasks=list(TASKS),
            user_field="user_id",
            item_field="item_id",
            scenario_field="scenario",
            time_field="timestamp",
            session_field="session_id",
            analysis_fields=["true_stage", *(true_logit_column(t) for t in TASKS)],
            stage_field="true_stage",
            stage_labels=list(STAGE_NAMES),
            task_roles={"click": "click", "conversion": "purchase"},  # purchase: entire space (needs a click)
        )

    # -- simulation -----------------------------------------------------------------------------------
    def simulate(self) -> Simulation:
        """Generate all rows (sorted by timestamp), validated, plus the true label probabilities."""
        rng = np.random.default_rng(self.seed)
        n_users, n_items = self.n_users, self.n_items

        # static user and item attributes; latents partly explained by the observable attributes
        age = rng.integers(0, N_AGE, n_users)
        gender = rng.integers(0, N_GENDER, n_users)
        city = rng.integers(0, N_CITY, n_users)
        user_lat = (
            rng.normal(size=(N_AGE, LATENT_DIM))[age] * 0.6
            + rng.normal(size=(N_GENDER, LATENT_DIM))[gender] * 0.4
            + rng.normal(size=(n_users, LATENT_DIM)) * 0.7
        )
        user_bias = rng.normal(0.0, 0.4, n_users)
        cat_lat = rng.normal(size=(N_CATEGORIES, LATENT_DIM))
        category = rng.integers(0, N_CATEGORIES, n_items)
        brand = rng.integers(0, N_BRANDS, n_items)
        item_lat = cat_lat[category] * 0.7 + rng.normal(size=(n_items, LATENT_DIM)) * 0.7
        brand_bias = rng.normal(0.0, 0.3, N_BRANDS)
        log_price = rng.normal(0.0, 1.0, N_CATEGORIES)[category] + rng.normal(0.0, 0.5, n_items)
        price_bucket = _equal_frequency_buckets(log_price, N_PRICE_BUCKETS)
        item_bias = {t: rng.normal(0.0, 0.3, n_items) + brand_bias[brand] for t in TASKS}
        demo_cat = {t: rng.normal(0.0, 0.3, (N_AGE, N_GENDER, N_CATEGORIES)) for t in TASKS}
        task_dim_w = {t: rng.uniform(0.3, 1.7, LATENT_DIM) for t in TASKS}
        favourite = np.argmax(user_lat @ cat_lat.T, axis=1)
        item_of_rank = rng.permutation(n_items)  # popularity rank -> item id

        # interactions per user (heavy-tailed), rows laid out user-major in time order
        counts = self._user_counts(rng)
        n = int(counts.sum())
        user = np.repeat(np.arange(n_users), counts)
        user_start = np.cumsum(counts) - counts
        pos = np.arange(n) - np.repeat(user_start, counts)
        dwell_rng = np.random.default_rng([self.seed, STAGE_DWELL_STREAM])
        stage, default_stage = self._stages(rng, dwell_rng, counts, user_start)

        # items: stage-dependent Zipf draw, favourite category for Stick/Loyal
        item = np.empty(n, dtype=np.int64)
        u = rng.random(n)
        for s in range(N_STAGES):
            rows = np.flatnonzero(stage == s)
            cdf = np.cumsum((np.arange(n_items) + 1.0) ** -ZIPF_EXPONENT[s])
            ranks = np.minimum(np.searchsorted(cdf, u[rows] * cdf[-1], side="right"), n_items - 1)
            item[rows] = item_of_rank[ranks]
        fav_u = rng.random(n)
        fav_rows = np.flatnonzero(fav_u < FAVOURITE_P[stage])
        pick_rng = rng
        if self.dwell_set:  # rng makes the default stages' draws; the picks of these stages come from the knob's
            rng.random(int(np.count_nonzero(fav_u < FAVOURITE_P[default_stage])))
            pick_rng = dwell_rng
        picked = _uniform_item_of_category(pick_rng, category, favourite[user[fav_rows]], N_CATEGORIES)
        ok = picked >= 0  # a category may have no items
        item[fav_rows[ok]] = picked[ok]

        # sessions and timestamps
        timestamp, session_id = self._timeline(rng, counts, user_start, pos)
        hour = ((timestamp % DAY_S) / DAY_S).astype(np.float32)

        # context and observable stage hints
        scen_p = 0.6 ** np.arange(self.n_scenarios)
        scenario = rng.choice(self.n_scenarios, size=n, p=scen_p / scen_p.sum())
        activity = np.clip(
            np.rint(stage * (N_ACTIVITY - 1) / (N_STAGES - 1) + rng.normal(0.0, ACTIVITY_NOISE, n)), 0, N_ACTIVITY - 1
        ).astype(np.int64)
        tenure = np.minimum(np.floor(np.log2(pos + 1.0)), N_TENURE - 1).astype(np.int64)

        # labels
        cat = category[item]
        aff_scale = AFFINITY_SCALE[stage]
        uv = user_lat[user] * item_lat[item] / np.sqrt(2.0 * LATENT_DIM)

        def base(t: str) -> np.ndarray:
            affinity = aff_scale * (uv @ task_dim_w[t])
            return affinity + item_bias[t][item] + demo_cat[t][age[user], gender[user], cat]

        offsets = np.linspace(0.5, -0.5, self.n_scenarios) if self.n_scenarios > 1 else np.zeros(1)
        pref = {t: base(t) for t in TASKS}  # the tasks' item-dependent terms
        price = price_bucket[item] / (N_PRICE_BUCKETS - 1)
        click_logit = (
            CLICK_LOGIT[stage]
            + offsets[scenario]
            + user_bias[user]
            + pref["click"]
            + HOUR_EFFECT * np.sin(2 * np.pi * hour)
        )
        stay_mean = STAY_MEAN[stage] + 0.5 * offsets[scenario] + pref["long_view"]
        cvr_logit = CVR_LOGIT[stage] - offsets[scenario] - PRICE_EFFECT * price + pref["purchase"]
        # the row draws, in the order the labels always took them (the left operand of ``<`` first)
        u_click = rng.random(n)
        e_click = rng.normal(0.0, self.noise, n)
        e_stay = rng.normal(0.0, self.noise, n)
        r_stay = rng.normal(0.0, STAY_RESIDUAL, n)
        u_cvr = rng.random(n)
        e_cvr = rng.normal(0.0, self.noise, n)

        # the row noise is unobservable: oracle probabilities marginalise it (probit approximation)
        shrink = 1.0 / np.sqrt(1.0 + np.pi * self.noise**2 / 8.0)
        stay_std = np.sqrt(STAY_RESIDUAL**2 + self.noise**2)

        def p_stay(mean: np.ndarray, p_click: np.ndarray, threshold: float) -> np.ndarray:
            return p_click * ndtr((mean + STAY_CLICK_BONUS - threshold) / stay_std) + (1 - p_click) * ndtr(
                (mean - threshold) / stay_std
            )

        click = u_click < expit(click_logit + e_click)
        log_stay = (stay_mean + e_stay) + STAY_CLICK_BONUS * click + r_stay
        threshold = np.median(log_stay)  # long_view: above the median (of the setting without task_conflict)
        if np.any(self.conflict != 0):
            click_logit, stay_mean, cvr_logit = self._conflict(
                stage, pref, price, (click_logit, stay_mean, cvr_logit), shrink, lambda m, p: p_stay(m, p, threshold)
            )
            click = u_click < expit(click_logit + e_click)
            log_stay = (stay_mean + e_stay) + STAY_CLICK_BONUS * click + r_stay
        long_view = log_stay > threshold
        purchase = click & (u_cvr < expit(cvr_logit + e_cvr))
        p_click, p_cvr = expit(shrink * click_logit), expit(shrink * cvr_logit)
        truth = {"click": p_click, "long_view": p_stay(stay_mean, p_click, threshold), "purchase": p_click * p_cvr}
        labels = {"click": click, "long_view": long_view, "purchase": purchase}
        if np.any(self.label_eps > 0):
            labels, truth = self._label_noise(stage, labels, truth)

        # history: previous seq_len items of the same user, most recent first (rows are user-major in time order)
        hist = recent_items(user, item, self.seq_len)

        # the item's a-priori catalogue popularity (its rank), not counts over all rows: those would leak
        # impressions of the validation and test periods into a training feature
        rank_of_item = np.empty(n_items, dtype=np.int64)
        rank_of_item[item_of_rank] = np.arange(n_items)
        popularity = (1.0 - np.log1p(rank_of_item) / np.log1p(n_items)).astype(np.float32)

        columns = {
            "user_id": user,
            "age_bucket": age[user],
            "gender": gender[user],
            "city": city[user],
            "activity_level": activity,
            "tenure_bucket": tenure,
            "item_id": item,
            "category": cat,
            "brand": brand[item],
            "price_bucket": price_bucket[item],
            "scenario": scenario,
            "item_popularity": popularity[item],
            "hour": hour,
            "hist_items": hist,
            "click": labels["click"],
            "long_view": labels["long_view"],
            "purchase": labels["purchase"],
            "timestamp": timestamp,
            "session_id": session_id,
            "true_stage": stage,
        }
        for t in TASKS:  # analysis only: the log-odds of the oracle probabilities
            p = np.clip(truth[t], TRUE_LOGIT_EPS, 1.0 - TRUE_LOGIT_EPS)
            columns[true_logit_column(t)] = logit(p)
        order = np.lexsort((pos, user, timestamp))  # global time order, ties broken by user then position
        columns = {k: _as_column(k, v[order]) for k, v in columns.items()}
        truth = {k: v[order].astype(np.float32) for k, v in truth.items()}
        schema = self.make_schema()
        schema.validate(columns, source="lifecycle simulator")
        return Simulation(schema, columns, truth)

    def _conflict(
        self,
        stage: np.ndarray,
        pref: dict[str, np.ndarray],
        price: np.ndarray,
        logits: tuple[np.ndarray, np.ndarray, np.ndarray],
        shrink: float,
        p_stay: Callable[[np.ndarray, np.ndarray], np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``task_conflict``: (click logit, mean log stay, conversion logit) with the tasks' item preferences
        mixed on each conflicting stage's rows, and one offset per task and stage that keeps the stage's mean
        true probabilities those without conflict."""
        click_logit, stay_mean, cvr_logit = (x.copy() for x in logits)
        for s in np.flatnonzero(self.conflict != 0):
            rows = np.flatnonzero(stage == s)
            if len(rows) < 2:
                continue
            conversion = pref["purchase"][rows] - PRICE_EFFECT * price[rows]  # the conversion logit's item term
            q = np.stack([pref["click"][rows], pref["long_view"][rows], pref["click"][rows] + conversion])
            click_logit[rows], stay_mean[rows], cvr_logit[rows] = _conflict_rows(
                (click_logit[rows], stay_mean[rows], cvr_logit[rows]), q, float(self.conflict[s]), shrink, p_stay
            )
        return click_logit, stay_mean, cvr_logit

    def _label_noise(
        self, stage: np.ndarray, labels: dict[str, np.ndarray], truth: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``label_noise``: accidental positives ``y = max(y, Bernoulli(eps[stage, task]))`` from their own random
        stream (purchase: only on clicked rows); the oracle probabilities of the labels as observed."""
        own = np.random.default_rng([self.seed, LABEL_NOISE_STREAM])
        n = len(stage)
        eps = {t: self.label_eps[stage, k] for k, t in enumerate(TASKS)}
        accident = {t: own.random(n) < eps[t] for t in TASKS}
        click = labels["click"] | accident["click"]
        out = {
            "click": click,
            "long_view": labels["long_view"] | accident["long_view"],
            "purchase": labels["purchase"] | (click & accident["purchase"]),
        }
        p_click = 1.0 - (1.0 - truth["click"]) * (1.0 - eps["click"])
        p = {
            "click": p_click,
            "long_view": 1.0 - (1.0 - truth["long_view"]) * (1.0 - eps["long_view"]),
            "purchase": truth["purchase"] + (p_click - truth["purchase"]) * eps["purchase"],
        }
        return out, p

    def _user_counts(self, rng: np.random.Generator) -> np.ndarray:
        """Heavy-tailed interactions per user summing to ``n_rows``; every user has one when possible."""
        weights = rng.lognormal(0.0, USER_COUNT_SIGMA, self.n_users)
        floor = 1 if self.n_rows >= self.n_users else 0
        return floor + rng.multinomial(self.n_rows - floor * self.n_users, weights / weights.sum())

    def _stages(
        self, rng: np.random.Generator, own: np.random.Generator, counts: np.ndarray, user_start: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(stage of every row, stage under the default dwell). ``rng`` always makes the draws of the default
        dwell; with ``stage_dwell`` set the stages come from ``own`` (the knob's stream), so every later draw of
        ``rng`` is the default setting's (common random numbers)."""
        default = self._stage_process(rng, counts, user_start, self.default_leave)
        if not self.dwell_set:
            return default, default
        return self._stage_process(own, counts, user_start, self.leave), default

    def _stage_process(
        self, rng: np.random.Generator, counts: np.ndarray, user_start: np.ndarray, leave: np.ndarray
    ) -> np.ndarray:
        """Geometric dwell times (leaving probability ``leave`` per stage), then a jump by ``JUMP_P``; loops over
        segments."""
        jump_cdf = np.cumsum(JUMP_P, axis=1)
        n = int(counts.sum())
        change = np.full(n, -1, dtype=np.int64)  # stage entered at this row, -1 = unchanged
        users = np.flatnonzero(counts > 0)
        cur = rng.choice(N_STAGES, size=len(users), p=INITIAL_STAGE_P)
        t = np.zeros(len(users), dtype=np.int64)
        while len(users):
            change[user_start[users] + t] = cur
            t = t + rng.geometric(leave[cur])
            alive = t < counts[users]
            users, cur, t = users[alive], cur[alive], t[alive]
            nxt = (rng.random(len(users))[:, None] > jump_cdf[cur]).sum(axis=1)
            cur = np.minimum(nxt, N_STAGES - 1)
        # forward fill within users: every user's first row holds a change
        last = np.maximum.accumulate(np.where(change >= 0, np.arange(n), 0))
        return change[last]

    def _timeline(
        self, rng: np.random.Generator, counts: np.ndarray, user_start: np.ndarray, pos: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Integer timestamps (strictly increasing per user) and globally unique session ids."""
        n = len(pos)
        new_session = (pos == 0) | (rng.random(n) < 1.0 / SESSION_MEAN_LEN)
        session_id = np.cumsum(new_session) - 1
        # gaps between a user's sessions are scaled to fill a random part of the horizon
        user = np.repeat(np.arange(self.n_users), counts)
        span = rng.uniform(0.2, 1.0, self.n_users) * HORIZON_S
        origin = rng.uniform(0.0, 1.0, self.n_users) * (HORIZON_S - span)
        session_gap = np.where(new_session & (pos > 0), rng.exponential(1.0, n), 0.0)
        total = np.bincount(user, weights=session_gap, minlength=self.n_users)
        session_gap *= (span / np.maximum(total, 1e-12))[user]
        gap = np.where(new_session, session_gap, rng.exponential(IN_SESSION_GAP_S, n))
        gap = np.floor(gap) + 1.0  # >= 1 s: strictly increasing within a user
        gap[pos == 0] = 0.0
        elapsed = np.cumsum(gap)
        elapsed -= elapsed[user_start[user]]  # first gap of a user is 0
        timestamp = (np.floor(origin)[user] + elapsed).astype(np.int64)
        return timestamp, session_id.astype(np.int64)


def _conflict_rows(
    logits: tuple[np.ndarray, np.ndarray, np.ndarray],
    q: np.ndarray,
    rho: float,
    shrink: float,
    p_stay: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One stage's rows under ``task_conflict`` rho: swap the label-level item preferences ``q`` (click,
    long_view, purchase) for the mixed ones, then restore the stage's mean true probability per task."""
    click, stay, cvr = logits
    p_click = expit(shrink * click)
    target_click = p_click.mean()
    target_stay = p_stay(stay, p_click).mean()
    target_purchase = (p_click * expit(shrink * cvr)).mean()
    mixed = _mix_preferences(q, rho)
    click = click - q[0] + mixed[0]
    stay = stay - q[1] + mixed[1]
    cvr = cvr - (q[2] - q[0]) + (mixed[2] - mixed[0])  # purchase = click AND conversion
    click = click + _solve_offset(lambda d: expit(shrink * (click + d)).mean(), target_click)
    p_click = expit(shrink * click)
    stay = stay + _solve_offset(lambda d: p_stay(stay + d, p_click).mean(), target_stay)
    cvr = cvr + _solve_offset(lambda d: (p_click * expit(shrink * (cvr + d))).mean(), target_purchase)
    return click, stay, cvr


def _mix_preferences(q: np.ndarray, rho: float) -> np.ndarray:
    """``task_conflict`` on one stage's rows: ``q`` [K, rows] item preferences -> the mixed ones.

    z = q standardised per task; z' = (1 - rho) z_bar + (1 + rho) (z - z_bar), z_bar the tasks' mean; z' is
    rescaled to unit std and mapped back to q's mean and std per task (rho = 0: q itself).
    """
    mean = q.mean(axis=1, keepdims=True)
    std = q.std(axis=1, keepdims=True)
    std = np.where(std > 0, std, 1.0)
    z = (q - mean) / std
    z_bar = z.mean(axis=0, keepdims=True)
    mixed = (1.0 - rho) * z_bar + (1.0 + rho) * (z - z_bar)
    scale = mixed.std(axis=1, keepdims=True)
    return mean + std * mixed / np.where(scale > 0, scale, 1.0)


def _solve_offset(rate: Callable[[float], float], target: float) -> float:
    """The offset d with ``rate(d) == target`` for an increasing ``rate`` (bisection; one vectorised call a step)."""
    lo, hi = -CALIBRATION_RANGE, CALIBRATION_RANGE
    for _ in range(CALIBRATION_STEPS):
        mid = 0.5 * (lo + hi)
        if rate(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"lifecycle: {name} must be a number, got {value!r}")
    return float(value)


def _stage_index(name: str, key: Any) -> int:
    if key not in STAGE_NAMES:
        raise ConfigError(f"lifecycle: {name} names an unknown stage {key!r}; the stages are {STAGE_NAMES}")
    return STAGE_NAMES.index(key)


def _per_stage(name: str, value: Any, default: float, low: float, high: float) -> np.ndarray:
    """One value per stage from a number (every stage) or ``{stage_name: value}`` (others: ``default``)."""
    out = np.full(N_STAGES, default, dtype=np.float64)
    if isinstance(value, Mapping):
        for key, v in value.items():
            out[_stage_index(name, key)] = _number(f"{name}.{key}", v)
    else:
        out[:] = _number(name, value)
    given = out[~np.isnan(out)]
    if np.any((given < low) | (given > high)):
        raise ConfigError(f"lifecycle: {name} must lie in [{low:g}, {high:g}], got {value!r}")
    return out


def _label_noise(value: Any) -> np.ndarray:
    """eps per stage x task from a number, ``{stage: eps}`` or ``{stage: {task: eps}}`` (unnamed: 0)."""
    eps = np.zeros((N_STAGES, len(TASKS)), dtype=np.float64)
    if not isinstance(value, Mapping):
        eps[:] = _number("label_noise", value)
    else:
        for key, v in value.items():
            s = _stage_index("label_noise", key)
            if not isinstance(v, Mapping):
                eps[s] = _number(f"label_noise.{key}", v)
                continue
            for task, e in v.items():
                if task not in TASKS:
                    raise ConfigError(f"lifecycle: label_noise.{key} names an unknown task {task!r}; tasks: {TASKS}")
                eps[s, TASKS.index(task)] = _number(f"label_noise.{key}.{task}", e)
    if np.any((eps < 0) | (eps > 1)):
        raise ConfigError(f"lifecycle: label_noise must lie in [0, 1], got {value!r}")
    return eps


def _equal_frequency_buckets(x: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket ids 0..n_buckets-1 by quantiles of ``x``."""
    edges = np.quantile(x, np.linspace(0.0, 1.0, n_buckets + 1)[1:-1])
    return np.searchsorted(edges, x, side="right").astype(np.int64)


def _uniform_item_of_category(
    rng: np.random.Generator, category: np.ndarray, wanted: np.ndarray, n_categories: int
) -> np.ndarray:
    """A uniformly random item of each wanted category (-1 where the category has no items)."""
    by_category = np.argsort(category, kind="stable")
    size = np.bincount(category, minlength=n_categories)
    start = np.cumsum(size) - size
    offset = np.floor(rng.random(len(wanted)) * size[wanted]).astype(np.int64)
    return np.where(size[wanted] > 0, by_category[np.minimum(start[wanted] + offset, len(category) - 1)], -1)


def _as_column(name: str, v: np.ndarray) -> np.ndarray:
    """Cast to the schema dtypes: float32 labels and numerics, int64 ids."""
    if name in TASKS or v.dtype.kind == "f":
        return np.ascontiguousarray(v, dtype=np.float32)
    return np.ascontiguousarray(v, dtype=np.int64)
