"""DeepFM (Guo et al., IJCAI 2017): a factorisation machine and a DNN on the same field embeddings.

The model reads like the paper's section 2:

1. every field ``j`` has a latent vector ``V_j`` (its embedding ``e_j``); the FM component and the deep
   component read the **same** embeddings (no pre-training, no feature engineering);
2. **FM component** (Eq. 2): ``y_FM = <w, x> + Σ_{j1} Σ_{j2 > j1} <V_j1, V_j2> x_j1 x_j2``: the first-order
   weights of the active features plus the pairwise inner products of the field embeddings, computed in
   linear time as ``½ Σ_d [(Σ_j e_jd)² − Σ_j e_jd²]``;
3. **deep component**: a feed-forward network on the concatenated field embeddings
   ``a⁰ = [e_1, …, e_m]``, ``a^{l+1} = σ(W^l a^l + b^l)``, ending in one logit ``y_DNN``;
4. ``ŷ = sigmoid(y_FM + y_DNN)`` (Eq. 1).

Multi-task form (the paper predicts CTR only), our choice: the embeddings and the FM's pairwise term are
shared by all tasks (the pairwise term has no parameters of its own beyond the shared embeddings); each
task has its own first-order weights ``w^k`` and bias, and the deep component is a shared DNN (``dnn``) with
one tower per task (``tower``) ending in that task's ``y_DNN``. Task k's logit is
``y_FM^k + y_DNN^k``. With one task this is the paper's model (the DNN ``dnn`` + ``tower`` is one MLP).

Inputs the paper leaves open: a numeric feature ``x_f`` is a field with vector ``x_f · v_f`` (the FM's
real-valued feature) and first-order term ``w_f x_f``; a multi-valued sequence field is its embeddings'
mean, i.e. an FM field whose active ids have weight 1/n each (the pairs *within* the field are not counted),
with the matching mean of first-order weights. The first-order weights start at zero (the model starts
as the pairwise FM + DNN), the embeddings with :class:`~mtlbench.models.layers.FeatureEmbedding`'s init.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.fields import FieldEmbedding
from mtlbench.models.layers import MLP, FeatureEmbedding, Towers
from mtlbench.registry import register_model


def fm_pairwise(e: Tensor) -> Tensor:
    """``Σ_{i<j} <e_i, e_j>`` over the fields of e [B, F, D] -> [B], as ``½ Σ_d [(Σ_i e_id)² − Σ_i e_id²]``."""
    return 0.5 * (e.sum(1).square() - e.square().sum(1)).sum(1)


@register_model("deepfm")
class DeepFM(MultiTaskModel):
    """y_k = <w^k, x> + b_k + Σ_{i<j} <e_i, e_j> + tower_k(DNN(e_1 ⊕ … ⊕ e_m)); embeddings shared by both parts."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        dnn: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        k = len(self.tasks)
        self.fields = FieldEmbedding(schema, embedding_dim)  # V_j, shared by the FM and the DNN
        self.first_order = FeatureEmbedding(schema, k)  # w_j: one weight per feature value and task
        nn.init.zeros_(self.first_order.table.weight)
        self.first_order_numeric = nn.Linear(len(schema.numeric), k, bias=False) if schema.numeric else None
        if self.first_order_numeric is not None:
            nn.init.zeros_(self.first_order_numeric.weight)
        self.bias = nn.Parameter(torch.zeros(k))
        self.dnn = MLP(self.fields.num_fields * embedding_dim, list(dnn), None, dropout, activation)
        self.towers = Towers(self.tasks, self.dnn.out_dim, list(tower), dropout, activation)

    def fm(self, batch: dict[str, Tensor], e: Tensor) -> Tensor:
        """Eq. 2 for every task [B, K]: first-order terms + bias + the shared pairwise interactions."""
        linear = self.first_order.fields(batch).sum(1) + self.bias  # <w^k, x> over categorical / sequence fields
        if self.first_order_numeric is not None:
            linear = linear + self.first_order_numeric(batch["numeric"].to(e.dtype))  # w_f x_f
        return linear + fm_pairwise(e).unsqueeze(1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        e = self.fields(batch)  # [B, F, D]
        y_fm = self.fm(batch, e)
        y_dnn = self.towers([self.dnn(e.flatten(1))] * len(self.tasks))  # a⁰ = [e_1, …, e_m]
        return {t: y_fm[:, k] + y_dnn[t] for k, t in enumerate(self.tasks)}  # Eq. 1 (before the sigmoid)
