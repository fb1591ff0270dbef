"""Contract checks for models, weightings and datasets: mtlbench's own tests and a plugin's tests call them.

A plugin's test file::

    from mtlbench.testing import check_dataset, check_model, check_weighting

    def test_my_model_honours_the_contract():
        check_model("my_model")  # or the class; settings as keywords: check_model("my_model", embedding_dim=4)

    def test_my_weighting_honours_the_contract():
        check_weighting("my_weighting")

    def test_my_dataset_honours_the_contract():
        check_dataset("my_dataset", n_rows=2000)

Every check raises ``AssertionError`` with a message that names the component and the broken rule, and returns
what it built, for further checks of your own. Nothing here imports pytest. The parts of :func:`check_model`
(:func:`check_forward_backward`, :func:`check_deterministic`, :func:`check_sparse_embeddings`,
:func:`check_config`) can be called alone; they run on :func:`toy_data` unless given ``data=(schema, batch)``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from mtlbench.config import register_configs
from mtlbench.data.derived import compute_derived
from mtlbench.data.rows import build_tensors
from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.data.source import DATASET_KEYS, DatasetSource, plain
from mtlbench.errors import MtlbenchError
from mtlbench.factory import check_settings
from mtlbench.models.base import ModelOutput, as_output
from mtlbench.models.layers import FeatureEmbedding
from mtlbench.registry import DATASETS, MODELS, WEIGHTINGS, Registry
from mtlbench.training.optim import build_optimizer, use_sparse_embeddings
from mtlbench.weighting.base import WeightedLoss, WeightingStrategy

ToyData = tuple[DatasetSchema, dict[str, Tensor]]
Component = str | Callable[..., Any]


def _require(ok: Any, message: str) -> None:
    """``assert`` that survives ``python -O``."""
    if not ok:
        raise AssertionError(message)


# -- data -------------------------------------------------------------------------------------------------
def toy_data(
    n: int = 64,
    tasks: Sequence[str] = ("click", "buy"),
    *,
    scenario: bool = True,
    sequence: bool = True,
    seed: int = 0,
) -> ToyData:
    """A tiny table as one batch: categorical user (20 ids, user role), item (30), a numeric ``price``,
    ``scenario`` (3 ids) and ``hist``, each user's 0-4 previous items (sharing the item table, then ``-1``
    padding); 0/1 labels for ``tasks``, ``click`` and ``buy`` taking the click and conversion roles."""
    rng = np.random.default_rng(seed)
    feats = [
        Feature("user", "categorical", 20, "user"),
        Feature("item", "categorical", 30, "item"),
        Feature("price", "numeric"),
    ]
    cols: dict[str, np.ndarray] = {
        "user": rng.integers(0, 20, n),
        "item": rng.integers(0, 30, n),
        "price": rng.random(n).astype(np.float32),
    }
    if scenario:
        feats.append(Feature("scenario", "categorical", 3))
        cols["scenario"] = rng.integers(0, 3, n)
    if sequence:
        feats.append(Feature("hist", "sequence", max_len=4, embedding="item", role="user"))
        hist = rng.integers(0, 30, (n, 4))
        hist[np.arange(4)[None, :] >= rng.integers(0, 5, n)[:, None]] = -1  # 0-4 real items, then PAD
        cols["hist"] = hist
    for t in tasks:
        cols[t] = rng.integers(0, 2, n).astype(np.float32)
    roles = {role: t for role, t in (("click", "click"), ("conversion", "buy")) if t in tasks}
    schema = DatasetSchema(
        "toy",
        feats,
        tasks=list(tasks),
        user_field="user",
        item_field="item",
        scenario_field="scenario" if scenario else None,
        task_roles=roles,
    )
    schema.validate(cols)
    return schema, build_tensors(schema, cols)


def with_inputs(names: Sequence[str], schema: DatasetSchema, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Add the derived per-row inputs ``names`` (a model's or weighting's ``required_inputs``) to ``batch``,
    computed over the batch's rows as the training rows; a schema without a time field gets ``time`` = row order."""
    n = len(batch["labels"])
    for name in names:
        if name in batch:
            continue
        cols: dict[str, np.ndarray] = {
            f.name: batch["categorical"][:, i].numpy() for i, f in enumerate(schema.categorical)
        }
        cols.update({t: batch["labels"][:, k].numpy() for k, t in enumerate(schema.tasks)})
        if schema.time_field is None:
            schema.time_field = "time"
        cols.setdefault(schema.time_field, np.arange(n))
        batch[name] = torch.from_numpy(np.ascontiguousarray(compute_derived(name, schema, cols, np.arange(n))))
    return batch


# -- building components by name or class -------------------------------------------------------------------
def _resolve(component: Component, registry: Registry[Any]) -> tuple[str | None, Callable[..., Any], str]:
    """(registered name or None, factory, a label for messages) of a name or a class."""
    if isinstance(component, str):
        return component, registry.get(component), f"{registry.kind} {component!r}"
    name = next((n for n in registry.names() if registry.get(n) is component), None)
    label = f"{registry.kind} {name!r}" if name else f"{registry.kind} {getattr(component, '__qualname__', component)}"
    return name, component, label


def build_model(model: Component, schema: DatasetSchema, **settings: Any) -> nn.Module:
    """A model by registered name or class, with checked settings (as ``mtlbench.create_model``)."""
    name, factory, _ = _resolve(model, MODELS)
    check_settings(factory, "model", str(name or getattr(factory, "__qualname__", "?")), settings, given=("schema",))
    return factory(schema, **settings)


def build_weighting(weighting: Component, tasks: Sequence[str], **settings: Any) -> WeightingStrategy:
    """A weighting by registered name or class, with checked settings (as ``mtlbench.create_weighting``)."""
    name, factory, _ = _resolve(weighting, WEIGHTINGS)
    check_settings(factory, "weighting", str(name or getattr(factory, "__qualname__", "?")), settings, given=("tasks",))
    return factory(list(tasks), **settings)


def loss_matrix(out: ModelOutput, labels: Tensor, tasks: Sequence[str]) -> tuple[Tensor, Tensor]:
    """The per-sample x per-task BCE matrix [B, K] (zero where a label is NaN) and its mask: a weighting's input."""
    mask = ~torch.isnan(labels)
    logits = torch.stack([out.logits[t] for t in tasks], dim=1)
    losses = F.binary_cross_entropy_with_logits(logits, labels.nan_to_num(0.0), reduction="none") * mask
    return losses, mask


def _objective(out: ModelOutput, batch: dict[str, Tensor], tasks: Sequence[str]) -> Tensor:
    """Σ_k mean BCE_k + the model's auxiliary losses (the equal weighting's objective)."""
    losses, mask = loss_matrix(out, batch["labels"], tasks)
    per_task = losses.sum(0) / mask.sum(0).clamp_min(1)
    return per_task.sum() + sum(out.aux_losses.values(), torch.zeros(()))


# -- models ------------------------------------------------------------------------------------------------
def check_forward_backward(
    model: Component, data: ToyData | None = None, *, seed: int = 0, **settings: Any
) -> tuple[nn.Module, ModelOutput]:
    """The model contract: one finite [B] logit tensor per task, in ``schema.tasks`` order (dict or
    ``ModelOutput``), scalar finite auxiliary losses, a finite gradient on every trainable parameter from the
    tasks' BCE plus the auxiliary losses, finite logits in eval mode. Returns the model and its output."""
    schema, batch = data if data is not None else toy_data()
    _, factory, label = _resolve(model, MODELS)
    batch = with_inputs(getattr(factory, "required_inputs", ()), schema, batch)
    torch.manual_seed(seed)
    net = build_model(model, schema, **settings)
    n = len(batch["labels"])
    out = as_output(net(batch))
    _require(
        list(out.logits) == list(schema.tasks),
        f"{label}: forward returned logits for {list(out.logits)}; the contract is one per task of schema.tasks, "
        f"in order: {list(schema.tasks)}",
    )
    for t, v in out.logits.items():
        _require(v.shape == (n,), f"{label}: logits of task {t!r} have shape {tuple(v.shape)}, expected ({n},)")
        _require(torch.isfinite(v).all(), f"{label}: logits of task {t!r} are not finite")
    for k, v in out.aux_losses.items():
        _require(v.dim() == 0 and torch.isfinite(v), f"{label}: aux loss {k!r} is not a finite scalar")
    _objective(out, batch, schema.tasks).backward()
    missing = [p for p, w in net.named_parameters() if w.requires_grad and w.grad is None]
    _require(not missing, f"{label}: parameters without a gradient from the tasks' losses: {missing}")
    bad = [p for p, w in net.named_parameters() if w.grad is not None and not torch.isfinite(_dense(w.grad)).all()]
    _require(not bad, f"{label}: non-finite gradients in {bad}")
    net.eval()
    with torch.no_grad():
        again = as_output(net(batch))
    _require(all(torch.isfinite(v).all() for v in again.logits.values()), f"{label}: eval-mode logits are not finite")
    return net, out


def _dense(t: Tensor) -> Tensor:
    return t.to_dense() if t.is_sparse else t


def check_deterministic(model: Component, data: ToyData | None = None, *, seed: int = 0, **settings: Any) -> None:
    """Same seed, same numbers: two builds after ``torch.manual_seed(seed)`` have equal parameters and buffers
    and give equal logits, in eval mode and in a train-mode step (dropout and sampling included)."""
    schema, batch = data if data is not None else toy_data()
    _, factory, label = _resolve(model, MODELS)
    batch = with_inputs(getattr(factory, "required_inputs", ()), schema, batch)
    nets, train_out, eval_out = [], [], []
    for _ in range(2):
        torch.manual_seed(seed)
        net = build_model(model, schema, **settings)
        torch.manual_seed(seed + 1)
        train_out.append(as_output(net(batch)).logits)
        net.eval()
        with torch.no_grad():
            eval_out.append(as_output(net(batch)).logits)
        nets.append(net)
    a, b = (net.state_dict() for net in nets)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    _require(not differ, f"{label}: two builds with seed {seed} differ in {differ}")
    for mode, (x, y) in (("train", train_out), ("eval", eval_out)):
        differ = [t for t in x if not torch.equal(x[t], y[t])]
        _require(not differ, f"{label}: the same seed gives different {mode}-mode logits for tasks {differ}")


def check_sparse_embeddings(
    model: Component, data: ToyData | None = None, *, seed: int = 0, **settings: Any
) -> nn.Module:
    """``optimizer.sparse_embeddings=true``: every ``FeatureEmbedding`` table gets a row-sparse gradient and the
    lazy Adam step changes some rows of it, none outside the rows the batch looked up. Fails on a model with no
    ``FeatureEmbedding``."""
    schema, batch = data if data is not None else toy_data()
    _, factory, label = _resolve(model, MODELS)
    batch = with_inputs(getattr(factory, "required_inputs", ()), schema, batch)
    torch.manual_seed(seed)
    net = build_model(model, schema, **settings)
    _require(use_sparse_embeddings(net) >= 1, f"{label}: no embedding table to switch to sparse gradients")
    tables = {n: m.table.weight for n, m in net.named_modules() if isinstance(m, FeatureEmbedding)}
    _require(tables, f"{label}: no FeatureEmbedding (mtlbench.models.layers) to check")
    opt = build_optimizer(net.parameters(), {"name": "adam", "sparse_embeddings": True})
    before = {t: w.detach().clone() for t, w in tables.items()}
    _objective(as_output(net(batch)), batch, schema.tasks).backward()
    looked_up: dict[str, Tensor] = {}
    for t, weight in tables.items():
        grad = weight.grad
        if grad is None or not grad.is_sparse:
            raise AssertionError(f"{label}: table {t!r} has no row-sparse gradient")
        looked_up[t] = torch.zeros(len(weight), dtype=torch.bool)
        looked_up[t][grad.coalesce().indices()[0]] = True
    opt.step()
    for t, weight in tables.items():
        changed = (weight != before[t]).any(1)
        _require(changed.any(), f"{label}: the sparse step changed no row of table {t!r}")
        outside = (changed & ~looked_up[t]).nonzero().flatten().tolist()
        _require(not outside, f"{label}: the sparse step changed rows {outside} of {t!r} that no row looked up")
    return net


def check_model(
    model: Component,
    data: ToyData | None = None,
    *,
    config: bool = True,
    sparse_embeddings: bool | None = None,
    seed: int = 0,
    **settings: Any,
) -> nn.Module:
    """Every model check: :func:`check_forward_backward`, :func:`check_deterministic`,
    :func:`check_sparse_embeddings` (``None``: when the model has a ``FeatureEmbedding``) and, for a registered
    model with ``config=True``, :func:`check_config` of ``model=<name>``. Returns the model of the first check."""
    net, _ = check_forward_backward(model, data, seed=seed, **settings)
    check_deterministic(model, data, seed=seed, **settings)
    if sparse_embeddings is None:
        sparse_embeddings = any(isinstance(m, FeatureEmbedding) for m in net.modules())
    if sparse_embeddings:
        check_sparse_embeddings(model, data, seed=seed, **settings)
    name, _, _ = _resolve(model, MODELS)
    if config and name is not None:
        check_config("model", name)
    return net


# -- configs -----------------------------------------------------------------------------------------------
def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The run config ``mtlbench <overrides>`` composes to (plugins' config folders included)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    register_configs()
    with initialize_config_module("mtlbench.configs", version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def check_config(group: str, option: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``<group>=<option>`` composes (from mtlbench's configs or a plugin's folder), names a registered component,
    and its settings build it (a model on :func:`toy_data`; a dataset only when no setting is ``???``).
    Returns the settings (without ``name``)."""
    from hydra.errors import HydraException

    registries: dict[str, Registry[Any]] = {"model": MODELS, "weighting": WEIGHTINGS, "dataset": DATASETS}
    _require(group in registries, f"check_config: group must be one of {list(registries)}, not {group!r}")
    try:
        cfg = compose([f"{group}={option}", *overrides])
    except HydraException as e:
        raise AssertionError(f"{group}={option} does not compose: {e}") from e
    node = cfg[group]
    name = node.get("name")
    _require(name in registries[group], f"configs/{group}/{option}.yaml names {name!r}, which is not registered")
    _require("/" in option or name == option, f"configs/{group}/{option}.yaml has name {name!r}, not {option!r}")
    values = cast("dict[str, Any]", OmegaConf.to_container(node, resolve=True, throw_on_missing=False))
    keys = DATASET_KEYS if group == "dataset" else ("name",)
    settings = {k: v for k, v in values.items() if k not in keys}
    where = f"{group}={option}"
    try:
        if group == "model":
            schema, _ = toy_data()
            build_model(name, schema, **settings)
        elif group == "weighting":
            build_weighting(name, ["click", "buy"], **settings)
        elif not any(OmegaConf.is_missing(node, k) for k in settings):
            registries[group].get(name)(**settings)
    except MtlbenchError as e:
        raise AssertionError(f"{where}: its settings do not build it: {e}") from e
    return settings


# -- weightings --------------------------------------------------------------------------------------------
def check_weighting(
    weighting: Component,
    data: ToyData | None = None,
    *,
    model: Component = "mmoe",
    model_settings: Mapping[str, Any] | None = None,
    steps: int = 3,
    config: bool = True,
    seed: int = 0,
    **settings: Any,
) -> WeightingStrategy:
    """The weighting contract, trained with ``model`` for ``steps`` steps on :func:`toy_data` (a third of the
    second task's labels missing): ``forward(losses, mask, batch, output)`` returns a ``WeightedLoss`` whose loss
    is a finite scalar that reaches the model's parameters and whose ``task_weights`` are None, [K] or [B, K] and
    finite; ``on_train_epoch_end`` runs between steps; its state dict loads into a fresh instance; with
    ``config=True`` a registered weighting's config composes and builds (:func:`check_config`)."""
    schema, batch = data if data is not None else toy_data()
    name, factory, label = _resolve(weighting, WEIGHTINGS)
    _, model_factory, _ = _resolve(model, MODELS)
    needs = (*getattr(model_factory, "required_inputs", ()), *getattr(factory, "required_inputs", ()))
    batch = with_inputs(needs, schema, batch)
    if len(schema.tasks) > 1:  # rows without the second task's label, as a conversion task off the click space
        batch = dict(batch, labels=batch["labels"].clone())
        batch["labels"][::3, 1] = float("nan")
    torch.manual_seed(seed)
    net = build_model(model, schema, **dict(model_settings or {}))
    strategy = build_weighting(weighting, schema.tasks, **settings)
    strategy.attach(net)
    opt = torch.optim.Adam([*net.parameters(), *strategy.parameters()], lr=1e-3)
    k, n = len(schema.tasks), len(batch["labels"])
    for step in range(steps):
        opt.zero_grad()
        out = as_output(net(batch))
        losses, mask = loss_matrix(out, batch["labels"], schema.tasks)
        res = strategy(losses, mask, batch, out)
        _require(isinstance(res, WeightedLoss), f"{label}: forward returned {type(res).__name__}, not WeightedLoss")
        _require(res.loss.dim() == 0, f"{label}: the loss has shape {tuple(res.loss.shape)}, expected a scalar")
        _require(torch.isfinite(res.loss), f"{label}: the loss at step {step} is {res.loss.item()}")
        _require(res.loss.requires_grad, f"{label}: the loss carries no gradient")
        w = res.task_weights
        if w is not None:
            _require(
                tuple(w.shape) in ((k,), (n, k)),
                f"{label}: task_weights have shape {tuple(w.shape)}, expected ({k},) or ({n}, {k})",
            )
            _require(torch.isfinite(w).all(), f"{label}: task_weights are not finite: {w}")
        (res.loss + sum(out.aux_losses.values(), torch.zeros(()))).backward()
        reached = [p for p in net.parameters() if p.grad is not None and _dense(p.grad).abs().sum() > 0]
        _require(reached, f"{label}: the loss gives no gradient to the model's parameters")
        bad = [p for p, v in net.named_parameters() if v.grad is not None and not torch.isfinite(_dense(v.grad)).all()]
        _require(not bad, f"{label}: non-finite gradients in {bad}")
        opt.step()
        strategy.on_train_epoch_end(step)
    fresh = build_weighting(weighting, schema.tasks, **settings)
    fresh.attach(net)
    try:
        fresh.load_state_dict(strategy.state_dict())
    except RuntimeError as e:
        raise AssertionError(f"{label}: its state dict does not load into a fresh instance: {e}") from e
    if config and name is not None:
        check_config("weighting", name)
    return strategy


# -- datasets ----------------------------------------------------------------------------------------------
def check_dataset_settings(dataset: Component, **settings: Any) -> DatasetSource:
    """``settings`` are recorded as plain config data (lists, dicts, strings: they key the cache entry), each
    equal to the value given, next to every other constructor parameter's default; the fingerprint is stable."""
    _, factory, label = _resolve(dataset, DATASETS)
    source = factory(**settings)
    _require(isinstance(source, DatasetSource), f"{label}: {type(source).__name__} is not a DatasetSource")
    recorded = source.settings
    try:
        json.dumps(recorded)
    except TypeError as e:
        raise AssertionError(f"{label}: settings are not plain config data: {recorded}") from e
    for key, value in settings.items():
        _require(key in recorded, f"{label}: setting {key!r} is not recorded in .settings: {recorded}")
        _require(
            recorded[key] == plain(value), f"{label}: setting {key!r} is recorded as {recorded[key]!r}, given {value!r}"
        )
    _require(source.fingerprint() == factory(**settings).fingerprint(), f"{label}: the fingerprint is not stable")
    return source


def check_dataset(
    dataset: Component,
    *,
    model: Component | None = "mmoe",
    config: bool = True,
    deterministic: bool = True,
    **settings: Any,
) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
    """The dataset contract with ``settings``: :func:`check_dataset_settings`; ``build()`` returns a schema and
    columns that pass ``schema.validate``, all of one length, each task a float32 label column of 0, 1 and NaN
    with both classes; ``deterministic``: a second build gives the same columns; ``model``: the data prepared
    (cache, split) by the data module gives a training batch that ``model`` trains on
    (:func:`check_forward_backward`); ``config``: a registered dataset's config composes (:func:`check_config`)."""
    name, factory, label = _resolve(dataset, DATASETS)
    source = check_dataset_settings(dataset, **settings)
    schema, cols = source.build()
    _require(isinstance(schema, DatasetSchema), f"{label}: build() returned {type(schema).__name__}, not a schema")
    try:
        schema.validate(cols, source=label)
    except MtlbenchError as e:
        raise AssertionError(f"{label}: its columns do not match its schema: {e}") from e
    lengths = {k: len(v) for k, v in cols.items()}
    _require(len(set(lengths.values())) == 1, f"{label}: columns differ in length: {lengths}")
    for t in schema.tasks:
        y = cols[t]
        _require(y.dtype == np.float32, f"{label}: label column {t!r} is {y.dtype}, not float32")
        seen = set(np.unique(y[~np.isnan(y)]).tolist())
        _require(seen <= {0.0, 1.0}, f"{label}: label column {t!r} has values {sorted(seen - {0.0, 1.0})}")
        _require(seen == {0.0, 1.0}, f"{label}: label column {t!r} has only the value(s) {sorted(seen)}")
    if deterministic:
        _, again = factory(**settings).build()
        differ = sorted(
            k for k in cols if k not in again or not np.array_equal(cols[k], again[k], equal_nan=_is_float(cols[k]))
        )
        _require(not differ, f"{label}: two builds with the same settings differ in columns {differ}")
    if model is not None:
        _check_batches(name, factory, model, settings, label)
    if config and name is not None:
        check_config("dataset", name)
    return schema, cols


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating)


def _check_batches(
    name: str | None, factory: Callable[..., Any], model: Component, settings: dict[str, Any], label: str
) -> None:
    """The data module prepares the dataset (cache, split) and ``model`` trains on a training batch of it."""
    from mtlbench.data.datamodule import MultiTaskDataModule

    if name is None:
        raise AssertionError(f"{label}: register the dataset (@register_dataset) to check its batches")
    with tempfile.TemporaryDirectory() as cache:
        dm = MultiTaskDataModule(name, settings, cache_dir=cache, batch_size=64)
        schema = dm.load()
        batch = next(iter(dm.train_dataloader()))
        labels = batch["labels"]
        _require(
            labels.shape[1] == len(schema.tasks), f"{label}: batch labels {tuple(labels.shape)} for {schema.tasks}"
        )
        check_forward_backward(model, (schema, dict(batch)))
