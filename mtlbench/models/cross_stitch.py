"""Cross-stitch networks (Misra et al., CVPR 2016).

One column (network) per task; after every layer a cross-stitch unit linearly recombines the columns'
activations (paper Eq. 1, for K tasks): ``x̃_i = Σ_j α_ij x_j``. The α are learned with the rest of the
network; the paper initialises them as a convex combination, (α_S, α_D) = (0.9, 0.1) for two tasks.

Paper's: one column per task, a cross-stitch unit after each layer (here each hidden layer of the MLP
columns; the paper stitches after pooling/conv layers of AlexNet), α learned end to end, near-identity init.
Ours: the columns are MLPs over the shared embedding and each column ends in its task's logit (the
column's output layer is its "tower"); one K×K α per layer shared by all units of the layer (the paper
also allows one α per channel); init α_ii = ``self_weight`` (0.9) and α_ij = (1 - 0.9) / (K - 1)
otherwise, so every row sums to one as in the paper's (0.9, 0.1). The paper scales the α learning rate by
10²-10³; we use the model's single learning rate.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput, MultiTaskModel
from mtlbench.models.layers import ExpertGroup, FeatureEmbedding
from mtlbench.registry import register_model


class CrossStitchUnit(nn.Module):
    """x̃_i = Σ_j α_ij x_j over K columns (Eq. 1); input and output [K, B, H]."""

    def __init__(self, num_tasks: int, self_weight: float = 0.9) -> None:
        super().__init__()
        k = num_tasks
        off = (1.0 - self_weight) / (k - 1) if k > 1 else 0.0
        alpha = torch.full((k, k), off)
        alpha.fill_diagonal_(self_weight if k > 1 else 1.0)
        self.alpha = nn.Parameter(alpha)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("ij,jbh->ibh", self.alpha, x)  # Eq. 1


@register_model("cross_stitch")
class CrossStitch(MultiTaskModel):
    """K MLP columns over the shared embedding, a cross-stitch unit after each hidden layer."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        hidden: tuple[int, ...] = (256, 128, 64),
        self_weight: float = 0.9,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if not hidden:
            raise ConfigError("model 'cross_stitch': hidden needs at least one layer to stitch after")
        if not 0.0 <= self_weight <= 1.0:
            raise ConfigError(f"model 'cross_stitch': self_weight must be in [0, 1], got {self_weight}")
        k = len(self.tasks)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        dims = [self.embedding.output_dim, *hidden]
        # layer l of all K columns at once: column i's weights are slot i of the group
        self.layers = nn.ModuleList(ExpertGroup(k, a, [b], dropout, activation) for a, b in zip(dims[:-1], dims[1:]))
        self.stitches = nn.ModuleList(CrossStitchUnit(k, self_weight) for _ in hidden)
        self.towers = ExpertGroup(k, dims[-1], [1], 0.0, activation)  # per-column output layer (no activation)
        self.towers.act = nn.Identity()

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        x = self.embedding.flat(batch)
        h = x.unsqueeze(0).expand(len(self.tasks), -1, -1)  # [K, B, D]: every column starts from x
        for layer, stitch in zip(self.layers, self.stitches):
            h = stitch(layer(h).transpose(0, 1))  # column layer, then the cross-stitch unit
        out = self.towers(h)[..., 0]  # [B, K]
        return ModelOutput(logits={t: out[:, i] for i, t in enumerate(self.tasks)})

    def shared_parameters(self) -> list[nn.Parameter]:
        """Nothing is literally shared but the embedding and the α that mix the columns."""
        return [*self.embedding.parameters(), *self.stitches.parameters()]
