"""MSSM: Multiple-level Sparse Sharing Model (Ding et al., SIGIR 2021).

Two levels of learned sparse sharing:

- **Field-level sparse connection module (FSCM).** Each task t has a mask m_t over the input feature
  fields; task t's input is ``x_t = [m_{t,1} e_1, ..., m_{t,F} e_F]`` (e_f the field's embedding, or a
  numeric feature), so a task can drop fields that only hurt it while the embeddings stay shared.
- **Cell-level sparse sharing module (CSSM).** Every layer holds K task-specific cells and S shared cells;
  the input of a cell c at layer l+1 is ``Σ_{c'} z^l_{c c'} h^l_{c'}``, a sparse, learned combination of all
  cells of layer l (coding variables z select which cells are routed to which). Task t's tower reads its
  own cell of the last layer. At layer 0 task cell t reads x_t and the shared cells read all fields (ours:
  the paper gives masks to the tasks; whether shared cells get a field mask too it leaves open).

Masks and coding variables are hard-concrete gates (the L0 relaxation, see ``hard_concrete.py``): exact
zeros are reachable, the gates are differentiable in their parameters, and their expected L0 norms are
penalised (aux losses ``field_l0`` and ``cell_l0``) to make them sparse.

Paper's: the two modules, task-specific plus shared cells, sparse coding variables between cells of
consecutive layers, field masks per task. Ours (the short paper leaves them open): the hard-concrete
relaxation for both masks (shared with SNR), gates initialised near open (0.9), each numeric feature is
its own field, a cell is one Linear+activation layer, the shared cells' unmasked input, the penalty weights
``field_l0_weight`` / ``cell_l0_weight``. No public implementation was available to compare with, and the
paper's full text was not reachable when this was last checked (the abstract states the two modules, the
per-task field selection and the coding variables that route cells to tasks, which is what is built here).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError
from mtlbench.models.base import ModelOutput, MultiTaskModel
from mtlbench.models.hard_concrete import HardConcreteGates
from mtlbench.models.layers import ExpertGroup, FeatureEmbedding, Towers
from mtlbench.registry import register_model


@register_model("mssm")
class MSSM(MultiTaskModel):
    """Per-task field masks (FSCM) -> layers of task + shared cells with sparse cell connections (CSSM)."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        num_shared: int = 2,
        cells: tuple[int, ...] = (256, 128),
        field_l0_weight: float = 1e-3,
        cell_l0_weight: float = 1e-3,
        tower: tuple[int, ...] = (64,),
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        if num_shared < 0 or not cells or min(field_l0_weight, cell_l0_weight) < 0:
            raise ConfigError("model 'mssm': need num_shared >= 0, at least one cell layer and l0 weights >= 0")
        k = len(self.tasks)
        self.num_cells = k + num_shared
        self.field_l0_weight, self.cell_l0_weight = field_l0_weight, cell_l0_weight
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        self.num_fields = self.embedding.num_fields + self.embedding.num_numeric
        self.field_masks = HardConcreteGates((k, self.num_fields))  # FSCM: m_{t,f}
        dims = [self.embedding.output_dim, *cells]
        self.layers = nn.ModuleList(
            ExpertGroup(self.num_cells, a, [b], dropout, activation) for a, b in zip(dims[:-1], dims[1:])
        )  # cell c of layer l is slot c
        self.connections = HardConcreteGates((len(cells) - 1, self.num_cells, self.num_cells))  # CSSM: z^l_{cc'}
        self.towers = Towers(self.tasks, dims[-1], list(tower), dropout, activation)

    def task_inputs(self, batch: dict[str, Tensor], masks: Tensor) -> Tensor:
        """[K + S, B, D]: x_t = the fields scaled by m_t for task cells, all fields for the shared cells."""
        e = self.embedding.fields(batch)  # [B, F, d]
        b = len(e)
        num = self.embedding.num_numeric
        fields = e.flatten(1)
        if num:
            fields = torch.cat([fields, batch["numeric"].to(fields.dtype)], dim=1)
        # per-column mask: each embedding field's d columns, then one column per numeric feature
        widths = torch.tensor([self.embedding.dim] * self.embedding.num_fields + [1] * num, device=e.device)
        col_masks = masks.repeat_interleave(widths, dim=1)  # [K, D]
        task_x = col_masks.unsqueeze(1) * fields.unsqueeze(0)  # FSCM: [K, B, D]
        shared = fields.unsqueeze(0).expand(self.num_cells - len(self.tasks), b, -1)
        return torch.cat([task_x, shared], dim=0)

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        masks = self.field_masks()
        h = self.layers[0](self.task_inputs(batch, masks))  # [B, C, H]
        if len(self.layers) > 1:
            z = self.connections()
            for layer, zl in zip(self.layers[1:], z):
                h = layer(torch.einsum("ij,bjh->ibh", zl, h))  # CSSM: cell i reads Σ_j z_ij h_j
        logits = self.towers(list(h[:, : len(self.tasks)].unbind(1)))
        aux: dict[str, Tensor] = {}
        if self.field_l0_weight > 0:
            aux["field_l0"] = self.field_l0_weight * self.field_masks.expected_l0()
        if self.cell_l0_weight > 0 and len(self.layers) > 1:
            aux["cell_l0"] = self.cell_l0_weight * self.connections.expected_l0()
        return ModelOutput(logits=logits, aux_losses=aux, extras={})
