"""One LightningModule for every model: model + loss weighting + per-task metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from mtlbench.data.schema import DatasetSchema
from mtlbench.errors import ConfigError, TrainingError
from mtlbench.metrics import (
    ANALYSIS_GROUPS,
    DEFAULT_METRICS,
    EvalRows,
    RowMetric,
    available_groups,
    batch_groups,
    build_metrics,
    group_labels,
    metric_specs,
)
from mtlbench.models.base import ModelOutput, as_output
from mtlbench.training.optim import build_optimizer, use_sparse_embeddings
from mtlbench.weighting.base import WeightingStrategy, task_means

EVAL_SPLITS = ("valid", "test")


class RowCollector(Metric):
    """Gathers (row index, scores) of every evaluated row across processes, for predictions files."""

    full_state_update = False
    index: list[Tensor] | Tensor  # "cat" states: lists, or after gathering for compute a tensor
    scores: list[Tensor] | Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("scores", default=[], dist_reduce_fx="cat")

    def update(self, index: Tensor, scores: Tensor) -> None:
        # lists between updates (torchmetrics concatenates them only while syncing for compute)
        assert isinstance(self.index, list) and isinstance(self.scores, list)
        self.index.append(index)
        self.scores.append(scores)

    def compute(self) -> tuple[Tensor, Tensor]:
        return dim_zero_cat(self.index), dim_zero_cat(self.scores)


class MetricSet(nn.Module):
    """The metrics of one task, in config order, with their names (names may hold any character).

    The row metrics (:class:`~mtlbench.metrics.RowMetric`: AUC, GAUC, NDCG, the per-group breakdowns) share one
    compact buffer of the rows (:class:`~mtlbench.metrics.EvalRows`) instead of each keeping its own copy, so a
    split of tens of millions of rows is evaluated exactly in bounded memory; other metrics (log loss, plugins'
    metrics) update and compute themselves.
    """

    def __init__(self, metrics: dict[str, Metric], groups: Sequence[str] = ()) -> None:
        super().__init__()
        self.names = list(metrics)
        self.metrics = nn.ModuleList(metrics.values())
        needed = {g for m in metrics.values() if isinstance(m, RowMetric) for g in m.row_groups(groups)}
        self.rows = EvalRows([g for g in groups if g in needed])
        self.shared = [isinstance(m, RowMetric) for m in metrics.values()]

    def __iter__(self) -> Iterator[Metric]:
        return cast("Iterator[Metric]", iter(self.metrics))  # holds the Metrics of __init__ only

    def items(self) -> Iterator[tuple[str, Metric]]:
        return zip(self.names, self)

    def update(self, preds: Tensor, target: Tensor, groups: Mapping[str, Tensor]) -> None:
        """One task's evaluated rows: probabilities, 0/1 targets, group ids by group name."""
        if any(self.shared):
            self.rows.update(preds, target, groups)
        for m, shared in zip(self, self.shared):
            if not shared:
                m.update(preds, target, groups)

    def compute(self) -> dict[str, float]:
        """Every metric's value (a ``dict_output`` metric's keys as they are), then reset. Every process calls it:
        the states of all processes are gathered."""
        rows = self.rows.compute() if any(self.shared) else None
        values: dict[str, float] = {}
        for (name, m), shared in zip(self.items(), self.shared):
            if shared:
                value = cast(RowMetric, m).compute_rows(*rows) if rows is not None else _empty(m)
            else:
                value = m.compute()
            values.update(value if isinstance(value, dict) else {name: float(value)})
        self.reset()
        return values

    def reset(self) -> None:
        self.rows.reset()
        for m in self:
            m.reset()


def _empty(metric: Metric) -> Any:
    """A row metric's value when the split has no labelled rows: NaN, or no keys for a ``dict_output`` metric."""
    return {} if getattr(metric, "dict_output", False) else float("nan")


def run_metrics(metrics: Sequence[str] = DEFAULT_METRICS, ndcg_k: Sequence[int] = (1, 5)) -> list[str]:
    """The metric names of a run, checked (unknown names: ConfigError): ``metrics`` in order, a bare ``ndcg``
    as ``ndcg@k`` for each k of ``ndcg_k``."""
    return metric_specs(metrics, {"ndcg": [int(k) for k in ndcg_k]})


def task_metrics(
    schema: DatasetSchema,
    ndcg_k: Sequence[int] = (1, 5),
    metrics: Sequence[str] = DEFAULT_METRICS,
    groups: Sequence[str] | None = None,
) -> MetricSet:
    """The metrics of one task: those of ``metrics`` (a bare ``ndcg`` is ``ndcg@k`` for each k of ``ndcg_k``)
    whose groups the data has (``groups``; default: the schema's user / session / scenario fields). With the
    default list: AUC and logloss always; GAUC and NDCG@k with users; S-GAUC (AUC per session, SFPNet Eq. 13)
    with sessions; per-scenario AUC (and GAUC with users) with scenarios; per-stage AUC (and GAUC) with a stage
    analysis field (``true_stage``)."""
    groups = available_groups(schema) if groups is None else groups
    built = build_metrics(run_metrics(metrics, ndcg_k), groups)
    labels = group_labels(schema)
    for m in built.values():
        set_labels = getattr(m, "set_group_labels", None)
        if labels and callable(set_labels):
            set_labels(labels)  # e.g. the stage names of auc@stage=<name>
    return MetricSet(built, groups)


class MultiTaskModule(pl.LightningModule):
    """Trains ``model`` with ``weighting`` on binary cross-entropy per task, evaluates per task.

    The loss of a task is its per-sample BCE averaged over the rows that carry its label; the
    weighting strategy combines the tasks. Validation metrics drive checkpointing and early stopping;
    test metrics are computed once, after training, with the selected checkpoint.

    ``analysis_groups``: row-aligned ids of the analysis groups (``true_stage``: the dataset's reference stage,
    ``MultiTaskDataModule.analysis_groups``). They are not in batches; the evaluation step looks up the rows of a
    batch by its ``index`` and gives them to the metrics only, so no model can read them. An analysis group in
    ``groups`` without ids here is dropped (its metrics are skipped).
    """

    def __init__(
        self,
        model: nn.Module,
        weighting: WeightingStrategy,
        schema: DatasetSchema,
        optimizer: dict[str, Any] | None = None,
        ndcg_k: tuple[int, ...] = (1, 5),
        monitor_metric: str = "auc",
        metrics: Sequence[str] = DEFAULT_METRICS,
        groups: Sequence[str] | None = None,
        analysis_groups: Mapping[str, Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.weighting = weighting
        weighting.attach(model)
        self.schema = schema
        self.tasks = list(schema.tasks)
        self.optimizer_cfg = dict(optimizer or {})
        if self.optimizer_cfg.get("sparse_embeddings"):
            if weighting.gradient_based:
                raise ConfigError(
                    f"weighting {type(weighting).__name__} needs dense gradients of the shared "
                    "parameters; run it with optimizer.sparse_embeddings=false"
                )
            use_sparse_embeddings(model)
        self.ndcg_k = tuple(int(k) for k in ndcg_k)
        self.metric_names = list(metrics)
        #: row-aligned ids of the analysis groups, by group name (a plain dict, not buffers: never checkpointed,
        #: never broadcast; moved to the batches' device on first use)
        self.analysis_ids: dict[str, Tensor] = {
            g: torch.as_tensor(ids, dtype=torch.int64) for g, ids in (analysis_groups or {}).items()
        }
        self.metric_groups = tuple(
            g
            for g in (available_groups(schema) if groups is None else groups)
            if g not in ANALYSIS_GROUPS or g in self.analysis_ids
        )
        self.monitor_metric = monitor_metric
        probe = task_metrics(schema, self.ndcg_k, self.metric_names, self.metric_groups)
        known = sorted(name for name, m in probe.items() if not getattr(m, "dict_output", False))
        if monitor_metric not in known:
            raise ConfigError(
                f"monitor={monitor_metric!r} is not computed on dataset {schema.name!r}; "
                f"choose one of {known} (or add it to metrics)"
            )
        # per split, one metric set per task in task order: a ModuleList, because task names are the
        # publisher's (``forward``, ``train``, ``type``, names with dots) and can't be module attribute names
        self.metrics = nn.ModuleDict(
            {
                split: nn.ModuleList(
                    task_metrics(schema, self.ndcg_k, self.metric_names, self.metric_groups) for _ in self.tasks
                )
                for split in EVAL_SPLITS
            }
        )
        self.rows = RowCollector()
        self.results: dict[str, dict[str, dict[str, float]]] = {}
        #: what after-test analyses (``analysis`` callbacks) add to results.json, by key
        self.summaries: dict[str, Any] = {}
        self.train_samples = 0
        self.train_seconds = 0.0
        #: check the loss on the host every step (None: on the CPU, where it costs nothing, and under DDP); otherwise
        #: the first non-finite step is kept on the device and checked at logging steps and at the epoch's end
        self.sync_each_step: bool | None = None
        self._bad_step: Tensor | None = None
        self._t0: float | None = None

    # -- training ----------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        return as_output(self.model(batch))

    def task_logits(self, out: ModelOutput) -> Tensor:
        return torch.stack([out.logits[t] for t in self.tasks], dim=1)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self(batch)
        labels = batch["labels"]
        mask = ~torch.isnan(labels)
        losses = (
            F.binary_cross_entropy_with_logits(self.task_logits(out), labels.nan_to_num(0.0), reduction="none") * mask
        )
        distributed = getattr(self.trainer, "world_size", 1) > 1
        if distributed:
            losses = losses * self._global_count_scale(mask)
        weighted = self.weighting(losses, mask, batch, out)
        loss = weighted.loss + sum(out.aux_losses.values(), torch.zeros((), device=losses.device))
        each_step = self.sync_each_step
        if each_step if each_step is not None else (loss.device.type == "cpu" or distributed):
            bad = not bool(torch.isfinite(loss))  # a host sync: free on the CPU, and DDP decides together anyway
            if distributed:  # every process takes the same decision: none is left waiting in the all-reduce
                bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
            if bad:
                self._raise_non_finite(losses, mask, out)
        else:  # on one accelerator, no host sync per step: the first bad step is kept on the device
            first = self._first_bad(loss.device)
            self._bad_step = torch.where(
                ~torch.isfinite(loss) & (first < 0), torch.full_like(first, self.global_step), first
            )
        self.train_samples += len(labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        # Lightning writes step metrics when (steps so far + 1) is a multiple of log_every_n_steps
        # (set on the Trainer by Lightning's logger connector, not declared in its class)
        if (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:  # type: ignore[attr-defined]
            for t, v in zip(self.tasks, task_means(losses.detach(), mask)):
                self.log(f"train/loss_{t}", v, batch_size=len(labels))
            if weighted.task_weights is not None:
                w = weighted.task_weights.detach()
                w = w.mean(0) if w.dim() == 2 else w
                for t, v in zip(self.tasks, w):
                    self.log(f"train/weight_{t}", v, batch_size=len(labels))
            for name, v in out.aux_losses.items():
                self.log(f"train/aux_{name}", v.detach(), batch_size=len(labels))
            self._check_bad_step()
        return loss

    def _first_bad(self, device: torch.device) -> Tensor:
        """The first step whose loss was not finite (-1: none), kept on ``device``."""
        if self._bad_step is None or self._bad_step.device != device:
            self._bad_step = torch.full((), -1, dtype=torch.long, device=device)
        return self._bad_step

    def _check_bad_step(self) -> None:
        """Raise if an accelerator step had a non-finite loss (checked at logging steps and at epoch end)."""
        if self._bad_step is not None and int(self._bad_step) >= 0:
            raise TrainingError(
                f"non-finite loss at step {int(self._bad_step)} (epoch {self.current_epoch}; found at step "
                f"{self.global_step}); try a lower learning rate"
            )

    def _global_count_scale(self, mask: Tensor) -> Tensor:
        """Per-task factor that turns this process's mean over its labelled rows into its share of the
        mean over all processes' labelled rows, so DDP averages to the one-process loss even when a
        task's labels are sparse (e.g. CVR only on clicks)."""
        local = mask.sum(0).to(torch.float32)
        total = self.trainer.strategy.reduce(local.clone(), reduce_op="sum")
        return local * self.trainer.world_size / total.clamp_min(1.0)

    def _raise_non_finite(self, losses: Tensor, mask: Tensor, out: ModelOutput) -> None:
        per_task = task_means(losses.detach(), mask)
        bad = [t for t, v in zip(self.tasks, per_task) if not torch.isfinite(v)]
        bad += [f"aux:{n}" for n, v in out.aux_losses.items() if not torch.isfinite(v)]
        what = ", ".join(bad) or "the combined loss (weighting produced a non-finite value)"
        raise TrainingError(
            f"non-finite loss at step {self.global_step} (epoch {self.current_epoch}) in task "
            f"{what}; try a lower learning rate"
        )

    # Training speed (results.json ``train``): ``train_samples`` and ``train_seconds`` count the batches this process
    # trained and the time it spent on them, from the start of each epoch (or of a resumed fit) to its end, without
    # the validation inside fit. A resumed run's figures cover what it trained after resuming, never the batches of
    # the checkpoint it continued from.
    def _fitting(self) -> bool:
        """In ``trainer.fit`` (its validation included: ``trainer.training`` is False while it validates)."""
        return self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING

    def on_train_start(self) -> None:  # a run resumed mid-epoch starts training without an epoch start
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self) -> None:
        self._t0 = time.perf_counter()

    def on_validation_start(self) -> None:  # validation time doesn't count as training time
        if self._t0 is not None and self._fitting():
            self.train_seconds += time.perf_counter() - self._t0
            self._t0 = None

    def on_validation_end(self) -> None:
        if self._fitting():
            self._t0 = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        self._check_bad_step()
        if self._t0 is not None:
            self.train_seconds += time.perf_counter() - self._t0
            self._t0 = None
        self.weighting.on_train_epoch_end(self.current_epoch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.parameters(), self.optimizer_cfg)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the global torch RNG drives sampling inside some weightings (e.g. STAN's Beta draws)
        checkpoint["torch_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "torch_rng_state" in checkpoint and self.trainer is not None and self.trainer.state.fn == "fit":
            torch.set_rng_state(checkpoint["torch_rng_state"])

    # -- evaluation --------------------------------------------------------------------------------
    def _metric_sets(self, split: str) -> Sequence[MetricSet]:
        """The metric set of every task of ``split``, in task order."""
        return cast("Sequence[MetricSet]", self.metrics[split])  # an nn.ModuleList of MetricSets (__init__)

    def _eval_step(self, batch: dict[str, Tensor], split: str) -> None:
        probs = torch.sigmoid(self.task_logits(self(batch)).float())
        labels = batch["labels"]
        groups = {name: ids for name, ids in batch_groups(batch).items() if name in self.metric_groups}
        groups.update(self._analysis_groups(batch["index"]))
        for k in range(len(self.tasks)):
            keep = ~torch.isnan(labels[:, k])
            p, y = probs[keep, k], labels[keep, k]
            self._metric_sets(split)[k].update(p, y, {name: ids[keep] for name, ids in groups.items()})
        if split == "test":
            self.rows.update(batch["index"], probs)

    def _analysis_groups(self, index: Tensor) -> dict[str, Tensor]:
        """The analysis group ids of a batch's rows (``index``: their row numbers), for the metrics only."""
        out = {}
        for name in self.metric_groups:
            ids = self.analysis_ids.get(name)
            if ids is None:
                continue
            if ids.device != index.device:
                ids = self.analysis_ids[name] = ids.to(index.device)
            out[name] = ids[index]
        return out

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "valid")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _finish(self, split: str) -> None:
        values: dict[str, dict[str, float]] = {}
        for k, t in enumerate(self.tasks):
            values[t] = self._metric_sets(split)[k].compute()  # every rank calls it: it gathers all processes' states
            for name, v in values[t].items():  # identical on every process (metrics are gathered)
                self.log(f"{split}/{t}/{name}", v, sync_dist=True)
        mean = sum(values[t][self.monitor_metric] for t in self.tasks) / len(self.tasks)
        self.log(f"{split}/{self.monitor_metric}_mean", mean, prog_bar=True, sync_dist=True)
        self.results[split] = values

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._finish("valid")
        else:
            for task_metric_set in self._metric_sets("valid"):
                task_metric_set.reset()

    def on_test_epoch_end(self) -> None:
        self._finish("test")
        self.test_predictions = self.rows.compute()
        self.rows.reset()
