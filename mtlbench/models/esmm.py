"""ESMM (Ma et al., SIGIR 2018): Entire Space Multi-task Model.

The conversion rate is learned through the impression -> click -> conversion decomposition
``pCTCVR = pCTR x pCVR`` (paper Eq. 2): both supervised losses run over every impression, so the CVR
tower is never trained on the click-biased subset only (sample-selection bias) and benefits from the
abundant click signal (data sparsity).

Mapping to the benchmark: the schema's labels are per impression. The ``ctr_task`` label is the click,
the ``cvr_task`` label is the post-impression conversion (click AND conversion, 0 on unclicked rows), so the
logit the model returns for ``cvr_task`` is the logit of ``pCTR x pCVR``; the module's BCE on it is exactly
ESMM's CTCVR loss (Eq. 3). pCVR itself is returned in ``extras["cvr"]`` and reported in results.json
(``cvr``: AUC of pCVR on the clicked test rows, the only rows where a CVR label exists). Any other task
gets a plain tower over the shared embedding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput, MultiTaskModel
from mtlbench.models.layers import FeatureEmbedding, Towers
from mtlbench.registry import register_model


def check_task(model: str, setting: str, task: str | None, tasks: list[str], default: str) -> str:
    """A task named in a model's config, validated against the schema (``None`` -> ``default``)."""
    task = default if task is None else task
    if task not in tasks:
        raise ConfigError(f"model {model!r}: {setting}={task!r} is not a task of the dataset; tasks are {tasks}")
    return task


def conversion_pair(model: str, schema: DatasetSchema, ctr_task: str | None, cvr_task: str | None) -> tuple[str, str]:
    """(click task, conversion task): the config's names, else the dataset's ``click`` and ``conversion`` roles.

    The conversion task must be labelled on every impression (click AND conversion): a label that exists
    only on clicked rows is the sample-selection-biased CVR label the entire-space decomposition replaces.
    """
    tasks = list(schema.tasks)
    ctr = (
        schema.task_for_role("click", model)
        if ctr_task is None
        else check_task(model, "ctr_task", ctr_task, tasks, ctr_task)
    )
    cvr = (
        schema.task_for_role("conversion", model)
        if cvr_task is None
        else check_task(model, "cvr_task", cvr_task, tasks, cvr_task)
    )
    if ctr == cvr:
        raise ConfigError(f"model {model!r}: ctr_task and cvr_task are both {ctr!r}; they must differ")
    refuse_conditional(model, "cvr_task", cvr, schema)
    return ctr, cvr


def refuse_conditional(model: str, setting: str, task: str, schema: DatasetSchema) -> None:
    """A conversion-chain step must be labelled on every impression, not only where the previous step is."""
    if task in schema.conditional_tasks:
        entire = schema.task_roles.get("conversion")
        others = [t for t in schema.tasks if t not in schema.conditional_tasks]
        hint = (
            f"; this dataset's entire-space conversion task is {entire!r}"
            if entire
            else f"; entire-space tasks of this dataset: {others}"
        )
        raise ConfigError(
            f"model {model!r}: {setting} names {task!r}, labelled only where "
            f"{schema.conditional_tasks[task]!r} is positive; it needs the conversion label over "
            f"every impression (e.g. ctcvr){hint}"
        )


def ctcvr_logit(ctr_logit: Tensor, cvr_logit: Tensor) -> Tensor:
    """logit(σ(a)·σ(b)) computed stably (ESMM Eq. 2 in logit space).

    With p = σ(a)σ(b): p / (1 - p) = 1 / (e^-a + e^-b + e^-(a+b)), so logit(p) = -logsumexp(-a, -b, -a-b),
    which equals log(pCTR·pCVR) - log(1 - pCTR·pCVR) without ever forming 1 - p.
    """
    a, b = ctr_logit, cvr_logit
    return -torch.logsumexp(torch.stack([-a, -b, -a - b]), dim=0)


@register_model("esmm")
class ESMM(MultiTaskModel):
    """Shared embeddings (Eq. 1's shared lookup table), a CTR tower and a CVR tower; pCTCVR = pCTR x pCVR.

    ``ctr_task`` / ``cvr_task`` name the click and the (post-impression) conversion task; by default the
    tasks that play the dataset's ``click`` and ``conversion`` roles (``DatasetSchema.task_roles``).
    """

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        tower: tuple[int, ...] = (360, 200, 80),
        ctr_task: str | None = None,
        cvr_task: str | None = None,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        self.ctr_task, self.cvr_task = conversion_pair("esmm", schema, ctr_task, cvr_task)
        self.embedding = FeatureEmbedding(schema, embedding_dim)  # shared lookup table: feature transfer
        # one tower per task: the ctr_task tower gives pCTR, the cvr_task tower gives pCVR
        self.towers = Towers(self.tasks, self.embedding.output_dim, list(tower), dropout, activation)

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        logits = self.towers([self.embedding.flat(batch)] * len(self.tasks))
        ctr, cvr = logits[self.ctr_task], logits[self.cvr_task]
        logits[self.cvr_task] = ctcvr_logit(ctr, cvr)  # Eq. 2: pCTCVR = pCTR x pCVR, over all impressions
        return ModelOutput(logits=logits, extras={"ctr": torch.sigmoid(ctr), "cvr": torch.sigmoid(cvr)})
