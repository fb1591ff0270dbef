"""AdaptDHM (Li et al., 2022): Adaptive Distribution Hierarchical Model for multi-domain CTR prediction.

Instead of one network per (pre-defined, manually grouped) domain, AdaptDHM lets the data decide which
samples belong together: a clustering process routes each sample to one of ``K`` distribution clusters,
and a classification process scores it with the layers of its cluster. The model reads like the paper's
method section (equations named by what they compute):

1. **Embedding** ``x`` of every field (the domain indicator is one of them).
2. **Distribution adaptation module: dynamic routing.** ``K`` cluster centres ``c_j`` (unit vectors). For
   a batch, ``T`` routing iterations: the distribution coefficients ``r_ij = softmax_j(x_i · c_j)``, then
   the centres move towards the samples they attract,
   ``c_j ← normalise(β c_j + (1 − β) normalise(Σ_i r_ij x_i))``. Each sample goes to the cluster with the
   largest coefficient, ``k_i = argmax_j r_ij``. The centres are state, not parameters: updated in training
   only (no gradient), fixed in evaluation (one scoring pass), saved in checkpoints. The routing reads a
   stopped-gradient ``x``.
3. **Hierarchical classification.** The layers shared by all clusters and those of the sample's cluster
   combine as in STAR: ``W*_k = W ⊙ W_k``, ``b*_k = b + b_k`` (``mtlbench.models.star.StarLinear``), so a
   cluster learns what distinguishes it and the shared weights what is common. A sample runs only its own
   cluster's layers (one matmul per cluster over its rows): the cost does not grow with the number of
   domains or clusters, the paper's efficiency argument.

Multi-task form (the paper predicts CTR only): the routed star network is the bottom (``hidden``) and every
task has a routed star tower (``tower`` hidden layers, then a logit), all on the same routing. With one task
it is the paper's model.

Choices the paper leaves open (all in config): the number of clusters ``num_clusters`` (default 3),
``β`` (``momentum``, 0.9), the iterations ``routing_iters`` (3), the routing input (the whole embedding,
stopped gradient), the centres' initialisation (random unit vectors, from the model seed), and the centre
update: the attracted mass ``Σ_i r_ij x_i`` is normalised before the momentum step, so ``β`` weighs two unit
vectors whatever the batch size. Cluster weights start at 1 (every cluster starts as the shared network).

Departures from Scenario-Wise-Rec's ``AdaptDHM`` (read, not copied): it adds the *unnormalised* batch sum
``Σ_i r_ij x_i`` to ``β c_j``, so with batches of thousands of rows the momentum has no effect (each batch
resets the centres); it computes every cluster's network for every sample and then picks one; and its
centres are a plain tensor (not saved with the model). Ours: normalised update, only the routed cluster's
layers run, centres in the state dict.

Sources: written offline from the paper's abstract-level description (clustering process with a customised
dynamic routing, cluster-specific classification) and the public Scenario-Wise-Rec code; the routing and
update equations above are our reading of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import MultiTaskModel
from mtlbench.models.layers import FeatureEmbedding
from mtlbench.models.star import StarMLP
from mtlbench.registry import register_model


class DynamicRouter(nn.Module):
    """Dynamic routing of samples to ``K`` distribution clusters (centres updated without gradient)."""

    centers: Tensor

    def __init__(self, dim: int, num_clusters: int, momentum: float = 0.9, iters: int = 3) -> None:
        super().__init__()
        self.register_buffer("centers", F.normalize(torch.randn(num_clusters, dim), dim=1))
        self.momentum, self.iters = momentum, iters

    def coefficients(self, x: Tensor) -> Tensor:
        """Distribution coefficients ``r_ij = softmax_j(x_i · c_j)`` [B, K]."""
        return torch.softmax(x @ self.centers.T, dim=1)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """The cluster of every row [B]; in training, first ``iters`` centre updates on this batch."""
        x = x.detach()
        if self.training:
            for _ in range(self.iters):
                r = self.coefficients(x)  # r_ij
                pulled = F.normalize(r.T @ x, dim=1)  # normalise(Σ_i r_ij x_i)
                self.centers.copy_(F.normalize(self.momentum * self.centers + (1 - self.momentum) * pulled, dim=1))
        return self.coefficients(x).argmax(1)  # k_i = argmax_j r_ij


@register_model("adaptdhm")
class AdaptDHM(MultiTaskModel):
    """Embedding -> dynamic routing to clusters -> routed star bottom -> routed star tower per task."""

    required_fields = ("scenario",)

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        num_clusters: int = 3,
        momentum: float = 0.9,
        routing_iters: int = 3,
        hidden: tuple[int, ...] = (256, 128),
        tower: tuple[int, ...] = (64,),
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if num_clusters < 1 or not 0.0 <= momentum < 1.0 or routing_iters < 1:
            raise ConfigError(
                "adaptdhm: need num_clusters >= 1, 0 <= momentum < 1 and routing_iters >= 1; got "
                f"num_clusters={num_clusters}, momentum={momentum}, routing_iters={routing_iters}"
            )
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        d = self.embedding.output_dim
        self.router = DynamicRouter(d, num_clusters, momentum, routing_iters)
        self.bottom = StarMLP(d, list(hidden), num_clusters, None, dropout, activation)
        self.towers = nn.ModuleList(
            StarMLP(self.bottom.out_dim, list(tower), num_clusters, 1, dropout, activation) for _ in self.tasks
        )
        self.num_clusters = num_clusters
        self.last_clusters: Tensor = torch.zeros(0, dtype=torch.int64)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = self.embedding.flat(batch)
        k = self.router(x)  # clustering process
        self.last_clusters = k
        h = self.bottom(x, k)  # W*_k = W ⊙ W_k, b*_k = b + b_k
        return {t: tower(h, k).squeeze(-1) for t, tower in zip(self.tasks, self.towers)}
