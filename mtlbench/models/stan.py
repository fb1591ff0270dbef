"""STAN (Li et al., RecSys 2023): a stage-detection network on top of a multi-task backbone.

The model reads like the paper's section 3:

1. Multi-task prediction network (3.1, Eq. 1-4): a PLE (default) or MMoE backbone over all features
   ``x = [vec(U), vec(V)]`` and one tower per task. The towers give the predictions.
2. User preference learning (3.2): the embeddings of the user's features form ``U`` (d1 fields x d2 dims;
   every categorical and sequence feature with role ``user``, a sequence such as the user's history mean-
   pooled into one row as in the backbone's input); a feature extractor ``f`` gives ``U'`` (Eq. 6): the DNN
   that section 4.1.3 says the experiments used (default) or the self-attention of Eq. 7; a task-specific
   attention gives ``s^k`` (Eq. 8); a single linear layer and a sigmoid give the preference ``y~^k``
   (Eq. 9), trained towards the pseudo-label ``l^k`` (Eq. 10, a derived input) by Eq. 11.
3. Latent stage detection and the stage-adaptive loss (3.3-3.4, Algorithm 1, Eq. 12-14) are the loss-
   weighting strategy ``stan_stage`` (``mtlbench/weighting/stan_stage.py``), which reads ``y~`` from
   ``extras["preference"]``; ``stan_wo_beta`` is the same network trained with the w/o-Beta weighting.

The user features and the backbone share one embedding table: ``U_i`` is the same matrix in both parts.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.backbones import MMoEBackbone, PLEBackbone
from mtlbench.models.base import ModelOutput, MultiTaskModel
from mtlbench.models.layers import MLP, FeatureEmbedding, Towers
from mtlbench.registry import register_model

PSEUDO_LABEL = "stan_pseudo_label"
_SINGLE_FIELD_WARNED: set[str] = set()  # datasets already warned about (one-field U)


# -- 3.1 multi-task prediction network ----------------------------------------------------------------
def make_backbone(
    name: str,
    num_tasks: int,
    in_dim: int,
    *,
    num_levels: int,
    num_specific_experts: int,
    num_shared_experts: int,
    num_experts: int,
    expert: list[int],
    dropout: float,
    activation: str,
) -> PLEBackbone | MMoEBackbone:
    """The swappable backbone: one representation per task, the towers' inputs (Eq. 1-3)."""
    if name == "ple":
        return PLEBackbone(
            num_tasks, in_dim, num_levels, num_specific_experts, num_shared_experts, expert, dropout, activation
        )
    if name == "mmoe":
        return MMoEBackbone(num_tasks, in_dim, num_experts, expert, dropout, activation)
    raise ConfigError(f"STAN backbone must be 'ple' or 'mmoe', got {name!r}")


# -- 3.2 user preference learning ---------------------------------------------------------------------
class FeatureSelfAttention(nn.Module):
    """Eq. 7: f(U) = Softmax(W_Q U (W_K U)^T / sqrt(d1)) W_V U with W_Q, W_K, W_V in R^{d1 x d1}.

    As written, the weights mix the d1 user *features* (they multiply U from the left), and the d1 x d1
    attention matrix says how much each feature attends to each other feature; softmax over its rows.
    """

    def __init__(self, d1: int) -> None:
        super().__init__()
        self.d1 = d1
        bound = 1.0 / math.sqrt(d1)
        self.w_q = nn.Parameter(torch.empty(d1, d1).uniform_(-bound, bound))
        self.w_k = nn.Parameter(torch.empty(d1, d1).uniform_(-bound, bound))
        self.w_v = nn.Parameter(torch.empty(d1, d1).uniform_(-bound, bound))

    def forward(self, u: Tensor) -> Tensor:  # [B, d1, d2] -> [B, d1, d2]
        q = torch.einsum("ij,bjd->bid", self.w_q, u)  # W_Q U
        k = torch.einsum("ij,bjd->bid", self.w_k, u)  # W_K U
        v = torch.einsum("ij,bjd->bid", self.w_v, u)  # W_V U
        # Eq. 7: Softmax(Q K^T / sqrt(d1)) V, through PyTorch's fused attention kernel as one head over the d1
        # features (3x faster than two batched matmuls for this op alone on CPU; a small part of a STAN step)
        return F.scaled_dot_product_attention(
            q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=1.0 / math.sqrt(self.d1)
        ).squeeze(1)


class FeatureDNN(nn.Module):
    """Section 4.1.3's user feature extractor: a DNN on vec(U), reshaped back to d1 x d2 (Eq. 6)."""

    def __init__(self, d1: int, d2: int, hidden: list[int], act: str = "relu") -> None:
        super().__init__()
        self.d1, self.d2 = d1, d2
        self.mlp = MLP(d1 * d2, hidden, d1 * d2, act=act)

    def forward(self, u: Tensor) -> Tensor:
        return self.mlp(u.flatten(1)).view(-1, self.d1, self.d2)


class TaskAttention(nn.Module):
    """Eq. 8: s^k = U' ⊙ Softmax(W^k · U'), W^k in R^{d2 x d2}, for all K tasks at once.

    W^k · U' does not multiply as written (U' is d1 x d2). The reading that type-checks: W^k transforms
    each user feature's d2-vector, i.e. the rows u'_j of U' become W^k u'_j (the matrix U' W^k^T). The
    softmax then runs over the d1 features for each dimension (``softmax_over="features"``, default), so
    s^k re-weights U' "according to the importance of different features", as the text says; or over the
    d2 dimensions of each feature (``"dims"``).
    """

    def __init__(self, num_tasks: int, d2: int, softmax_over: str = "features") -> None:
        super().__init__()
        if softmax_over not in ("features", "dims"):
            raise ConfigError(f"STAN task_attention_softmax must be 'features' or 'dims', got {softmax_over!r}")
        bound = 1.0 / math.sqrt(d2)
        self.weight = nn.Parameter(torch.empty(num_tasks, d2, d2).uniform_(-bound, bound))  # W^k
        self.dim = 2 if softmax_over == "features" else 3

    def forward(self, u: Tensor) -> Tensor:  # [B, d1, d2] -> [B, K, d1, d2]
        scores = torch.einsum("bfd,ked->bkfe", u, self.weight)  # (W^k u'_f)_e
        return u.unsqueeze(1) * torch.softmax(scores, dim=self.dim)  # Eq. 8


class PreferenceHeads(nn.Module):
    """Eq. 9: y~^k = Sigmoid(MLP^k(s^k)), MLP^k a single linear layer on vec(s^k); returns logits [B, K]."""

    def __init__(self, num_tasks: int, in_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(num_tasks, in_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_tasks).uniform_(-bound, bound))

    def forward(self, s: Tensor) -> Tensor:  # [B, K, d1, d2] -> [B, K]
        return torch.einsum("bki,ki->bk", s.flatten(2), self.weight) + self.bias


def preference_loss(pref: Tensor, pseudo: Tensor) -> Tensor:
    """Eq. 11 summed over tasks (Eq. 13): Σ_k mean_i (l_i^k - y~_i^k)^2 over rows with a pseudo-label.

    The per-task mean over the batch (not the paper's sum over samples) matches the per-task mean BCE of
    Eq. 14 used by the weighting, so both terms of Eq. 13 keep the paper's relative scale.
    """
    defined = ~torch.isnan(pseudo)
    sq = (pseudo.nan_to_num(0.0) - pref) ** 2 * defined
    return (sq.sum(0) / defined.sum(0).clamp_min(1)).sum()


@register_model("stan")
class STAN(MultiTaskModel):
    """STAN: backbone + towers for the predictions, user preference learning for the stage (see module doc).

    Settings: ``backbone`` ``ple`` | ``mmoe`` (with the PLE settings ``num_levels``, ``num_specific_experts``,
    ``num_shared_experts`` or MMoE's ``num_experts``); ``user_fields`` the features forming U (default:
    every categorical and sequence feature with role ``user``; one field only is warned about, as Eq. 7-8
    then have a single row to attend over); ``user_extractor`` ``dnn`` (section 4.1.3: the f of the paper's
    experiments, hidden sizes ``extractor_hidden``; default) | ``attention`` (Eq. 7 of section 3.2);
    ``task_attention_softmax`` (see :class:`TaskAttention`); ``stage_analysis`` settings of the after-test
    stage analysis. :meth:`model_info` (written to ``results.json``) names the fields U was built from.
    """

    required_inputs = (PSEUDO_LABEL,)
    outputs_preference = True  # the stan_stage / stan_wo_beta weightings check this
    user_index: Tensor

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        backbone: str = "ple",
        num_levels: int = 2,
        num_specific_experts: int = 1,
        num_shared_experts: int = 2,
        num_experts: int = 4,
        expert: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        dropout: float = 0.0,
        activation: str = "relu",
        user_fields: list[str] | None = None,
        user_extractor: str = "dnn",
        extractor_hidden: tuple[int, ...] = (256,),
        task_attention_softmax: str = "features",
    ) -> None:
        super().__init__(schema)
        k = len(self.tasks)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        # 3.1: Eq. 1-3 backbone and Eq. 4 towers on x = [vec(U), vec(V)] (all features)
        self.backbone = make_backbone(
            backbone,
            k,
            self.embedding.output_dim,
            num_levels=num_levels,
            num_specific_experts=num_specific_experts,
            num_shared_experts=num_shared_experts,
            num_experts=num_experts,
            expert=list(expert),
            dropout=dropout,
            activation=activation,
        )
        self.towers = Towers(self.tasks, self.backbone.out_dim, list(tower), dropout, activation)
        # 3.2: U = embeddings of the user features (d1 x d2)
        self.user_fields = self._user_fields(schema, user_fields)
        names = self.embedding.field_names
        self.register_buffer("user_index", torch.tensor([names.index(n) for n in self.user_fields]), persistent=False)
        d1, d2 = len(self.user_fields), embedding_dim
        self.user_extractor = user_extractor
        if user_extractor == "attention":
            self.extractor: nn.Module = FeatureSelfAttention(d1)
        elif user_extractor == "dnn":
            self.extractor = FeatureDNN(d1, d2, list(extractor_hidden), activation)
        else:
            raise ConfigError(f"STAN user_extractor must be 'attention' or 'dnn', got {user_extractor!r}")
        self.task_attention = TaskAttention(k, d2, task_attention_softmax)
        self.preference_heads = PreferenceHeads(k, d1 * d2)

    @staticmethod
    def _user_fields(schema: DatasetSchema, fields: list[str] | None) -> list[str]:
        if schema.user_field is None:
            raise ConfigError(f"model STAN needs a user field; dataset {schema.name!r} has none")
        embedded = [f.name for f in schema.categorical] + [f.name for f in schema.sequences]
        if fields is None:
            fields = [f.name for f in schema.features if f.role == "user" and f.name in embedded]
        fields = list(fields)
        bad = [n for n in fields if n not in embedded]
        if bad or not fields:
            raise ConfigError(
                f"STAN user_fields must be categorical or sequence features of dataset {schema.name!r}, got {fields}"
            )
        if len(fields) == 1 and schema.name not in _SINGLE_FIELD_WARNED:  # once per dataset and process
            _SINGLE_FIELD_WARNED.add(schema.name)
            warnings.warn(
                f"STAN on dataset {schema.name!r}: the user feature set U has a single field "
                f"({fields[0]!r}): the preference network (Eq. 6-9) learns from one embedding and its "
                "feature attention (Eq. 8, and Eq. 7) has nothing to weigh; give the dataset more "
                "user-side fields (e.g. a user history, dataset.hist_len > 0, where the dataset has one) "
                "or set model.user_fields",
                UserWarning,
                stacklevel=2,
            )
        return fields

    def model_info(self) -> dict[str, Any]:
        """What this run's preference network read, for ``results.json`` (``model_info``)."""
        return {"user_fields": list(self.user_fields), "user_extractor": self.user_extractor}

    def user_preference(self, fields: Tensor) -> tuple[Tensor, Tensor]:
        """Section 3.2 on the field embeddings [B, F, D]: preference logits [B, K] and s^k [B, K, d1, d2]."""
        u = fields.index_select(1, self.user_index)  # U_i (index_select: its backward is one index_add_)
        u_prime = self.extractor(u)  # Eq. 6-7
        s = self.task_attention(u_prime)  # Eq. 8
        return self.preference_heads(s), s  # Eq. 9 (before the sigmoid)

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        fields = self.embedding.fields(batch)
        x = fields.flatten(1)
        if self.embedding.num_numeric:
            x = torch.cat([x, batch["numeric"].to(x.dtype)], dim=1)
        logits = self.towers(self.backbone(x))  # Eq. 1-4
        pref_logits, s = self.user_preference(fields)
        pref = torch.sigmoid(pref_logits)  # Eq. 9
        aux = {}
        if PSEUDO_LABEL in batch:
            aux["preference"] = preference_loss(pref, batch[PSEUDO_LABEL].to(pref.dtype))  # Eq. 11
        return ModelOutput(
            logits=logits, aux_losses=aux, extras={"preference": pref, "user_representation": s.flatten(1)}
        )


@register_model("stan_wo_beta")
class STANWithoutBeta(STAN):
    """STAN w/o Beta (section 4.1.2): the same network; its config trains it with ``weighting=stan_wo_beta``
    (gamma := y~ instead of the Beta resampling of Algorithm 1)."""
