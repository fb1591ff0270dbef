"""ESCM² (Wang et al., SIGIR 2022): Entire Space Counterfactual Multi-task Model.

ESMM's structure (shared embedding, a CTR tower and a CVR tower over every impression, pCTCVR = pCTR·pCVR;
the BCE on the conversion task's logit is the CTCVR loss) plus a *counterfactual risk regulariser* on the
CVR tower, which makes its estimate unbiased over the entire exposure space with the CTR tower's output as
the propensity ô = pCTR (o = click, r = conversion, e_i = BCE(r_i, pCVR_i)):

- ESCM²-IPS (the paper's IPS risk): ``R_IPS = 1/|D| Σ_D o_i e_i / ô_i``;
- ESCM²-DR (the paper's DR risk): an imputation tower predicts the CVR error ê_i of every impression;
  ``R_DR = 1/|D| Σ_D [ê_i + o_i (e_i - ê_i) / ô_i]``, and the imputation tower is fitted by
  ``1/|D| Σ_D o_i (e_i - ê_i)² / ô_i`` (jointly: no term is detached but the propensity).

The objective is ``L_CTR + λ_c R + λ_g L_CTCVR`` (the paper's total loss): the module's per-task BCEs give L_CTR and
L_CTCVR (their weights come from the weighting), and ``cvr_weight · R`` (plus, for DR, the imputation
loss with weight ``imputation_weight``) is returned as aux losses ``counterfactual`` and ``imputation``.
On the training step the regulariser reads the batch's labels; rows with a missing click or conversion
label are left out.

Paper's: the towers, the entire-space decomposition, the IPS and DR risks with pCTR as propensity.
Ours: the propensity is detached in the regulariser (it weights the CVR risk; the CTR tower learns from
the click loss; the authors' PaddleRec code does the same) and clipped below at ``propensity_clip`` (their
code clips 1/ô at 15 and, for IPS, also rescales by the batch's click share, which we do not: the paper's
IPS risk has none); the imputed error is ``softplus`` of the imputation tower (non-negative like a BCE; their
code uses a probability, capped at 1). The conversion label is the post-impression one (click AND
conversion), which equals the CVR label r on clicked rows, the only rows where o_i = 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput, MultiTaskModel
from mtlbench.models.esmm import conversion_pair, ctcvr_logit
from mtlbench.models.layers import MLP, FeatureEmbedding, Towers
from mtlbench.registry import register_model

VARIANTS = ("ips", "dr")


def ips_risk(cvr_logit: Tensor, click: Tensor, conversion: Tensor, propensity: Tensor) -> Tensor:
    """IPS risk: 1/|D| Σ o_i e_i / ô_i, e_i = BCE(r_i, pCVR_i)."""
    e = F.binary_cross_entropy_with_logits(cvr_logit, conversion, reduction="none")
    return (click * e / propensity).mean()


def dr_risk(
    cvr_logit: Tensor, imputed_error: Tensor, click: Tensor, conversion: Tensor, propensity: Tensor
) -> tuple[Tensor, Tensor]:
    """DR risk and imputation loss: (R_DR, imputation loss) for the imputed errors ê_i."""
    e = F.binary_cross_entropy_with_logits(cvr_logit, conversion, reduction="none")
    delta = e - imputed_error
    risk = (imputed_error + click * delta / propensity).mean()  # DR risk
    imputation = (click * delta**2 / propensity).mean()  # imputation loss
    return risk, imputation


@register_model("escm2")
class ESCM2(MultiTaskModel):
    """ESMM's CTR/CVR towers over all impressions plus the IPS or DR counterfactual CVR regulariser."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        variant: str = "ips",
        tower: tuple[int, ...] = (360, 200, 80),
        cvr_weight: float = 0.1,
        imputation_weight: float = 1.0,
        propensity_clip: float = 0.05,
        ctr_task: str | None = None,
        cvr_task: str | None = None,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if variant not in VARIANTS:
            raise ConfigError(f"model 'escm2': variant must be one of {list(VARIANTS)}, got {variant!r}")
        if not 0.0 < propensity_clip <= 1.0 or cvr_weight < 0 or imputation_weight < 0:
            raise ConfigError("model 'escm2': need 0 < propensity_clip <= 1, cvr_weight >= 0, imputation_weight >= 0")
        self.ctr_task, self.cvr_task = conversion_pair("escm2", schema, ctr_task, cvr_task)
        self.variant, self.cvr_weight, self.imputation_weight = variant, cvr_weight, imputation_weight
        self.propensity_clip = propensity_clip
        self.ctr_index, self.cvr_index = self.tasks.index(self.ctr_task), self.tasks.index(self.cvr_task)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        d = self.embedding.output_dim
        self.towers = Towers(self.tasks, d, list(tower), dropout, activation)  # CTR, CVR (and other) towers
        self.imputation = MLP(d, list(tower), 1, dropout, activation) if variant == "dr" else None

    def regularizer(self, ctr: Tensor, cvr: Tensor, imputed: Tensor | None, labels: Tensor) -> dict[str, Tensor]:
        """The counterfactual risk (and imputation loss) on the rows with both labels."""
        o, r = labels[:, self.ctr_index], labels[:, self.cvr_index]
        keep = ~(torch.isnan(o) | torch.isnan(r))
        o, r, ctr, cvr = o[keep], r[keep], ctr[keep], cvr[keep]
        if len(o) == 0:
            return {"counterfactual": cvr.sum() * 0.0}
        propensity = torch.sigmoid(ctr).detach().clamp_min(self.propensity_clip)  # ô = pCTR
        if imputed is None:
            return {"counterfactual": self.cvr_weight * ips_risk(cvr, o, r, propensity)}
        risk, imputation = dr_risk(cvr, imputed[keep], o, r, propensity)
        return {"counterfactual": self.cvr_weight * risk, "imputation": self.imputation_weight * imputation}

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        x = self.embedding.flat(batch)
        logits = self.towers([x] * len(self.tasks))
        ctr, cvr = logits[self.ctr_task], logits[self.cvr_task]
        logits[self.cvr_task] = ctcvr_logit(ctr, cvr)  # pCTCVR = pCTR x pCVR over all impressions
        imputed = F.softplus(self.imputation(x).squeeze(-1)) if self.imputation is not None else None  # ê
        aux = self.regularizer(ctr, cvr, imputed, batch["labels"]) if self.training and "labels" in batch else {}
        return ModelOutput(logits=logits, aux_losses=aux, extras={"ctr": torch.sigmoid(ctr), "cvr": torch.sigmoid(cvr)})

    def shared_parameters(self) -> list[torch.nn.Parameter]:
        """The shared embedding (towers are per task; the imputation tower serves the DR risk only)."""
        return list(self.embedding.parameters())
