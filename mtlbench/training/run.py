"""One training run from a resolved config: data -> model -> fit on train/valid -> test -> run directory."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mtlbench.data.datamodule import MultiTaskDataModule
from mtlbench.data.source import DATASET_KEYS
from mtlbench.errors import ConfigError
from mtlbench.factory import check_settings, create_model, create_weighting
from mtlbench.log import get_logger, quiet
from mtlbench.metrics import available_groups, higher_is_better
from mtlbench.metrics.base import GROUP_SOURCES
from mtlbench.metrics.resolve import metric_class
from mtlbench.models.layers import init_embeddings
from mtlbench.registry import ANALYSES, DERIVED, MODELS, WEIGHTINGS
from mtlbench.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    ENVIRONMENT_FILE,
    LAST_CHECKPOINT,
    LOG_DIR,
    PREDICTIONS_FILE,
    PREEMPTED_FILE,
    RESULTS_FILE,
    write_json,
    write_parquet,
    write_text,
)
from mtlbench.training.console import progress_bar
from mtlbench.training.csv_log import ResumableCSVLogger, checkpoint_step
from mtlbench.training.module import MultiTaskModule, run_metrics
from mtlbench.training.preemption import AtomicCheckpointIO, Preemption, checkpoint_version
from mtlbench.version import __version__

log = get_logger(__name__)


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def build_datamodule(cfg: DictConfig, extra_inputs: tuple[str, ...] = ()) -> MultiTaskDataModule:
    ds = _plain(cfg.dataset)
    split = ds.get("split") or {}
    settings = {k: v for k, v in ds.items() if k not in DATASET_KEYS}
    return MultiTaskDataModule(
        ds["name"],
        settings,
        cache_dir=cfg.get("cache_dir"),
        split_method=split.get("method", "auto"),
        split_ratios=tuple(split.get("ratios", (0.8, 0.1, 0.1))),
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size,
        seed=cfg.seed,
        extra_inputs=extra_inputs,
        extra_settings=_plain(cfg.get("derived")) or {},
        hash_buckets=_plain(cfg.get("hash_buckets")),
        tasks=_plain(cfg.get("tasks")),
        subset=_plain(cfg.get("subset")),
        resident=cfg.get("resident_data"),
    )


def warn_hashed_stage_users(dm: MultiTaskDataModule, weighting: torch.nn.Module) -> None:
    """One warning when ``hash_buckets`` hashes the user field while STAN keeps per-user α/β stage state.

    STAN's stage weighting (``stan_stage``) indexes its α/β/c state by user id; hashed users that share a
    bucket share that state, so their latent stages mix.
    """
    from mtlbench.weighting.stan_stage import StanStage

    schema = dm.schema
    assert schema is not None, "load the data module first"
    user = schema.user_field
    if isinstance(weighting, StanStage) and user is not None and user in dm.hashed_fields:
        warnings.warn(
            f"hash_buckets hashes the user field {user!r} into {schema.feature(user).vocab_size} "
            f"buckets: users that share a bucket share STAN's per-user stage state (α/β of weighting "
            f"stan_stage), so their stages mix; leave {user!r} out of hash_buckets to keep one state per "
            "user",
            UserWarning,
            stacklevel=3,
        )


def metric_inputs(specs: list[str]) -> tuple[str, ...]:
    """The derived inputs the metrics' groups are read from (group ``stage``: ``rule_stage``), so that a run
    computes them for its metrics whether or not its model reads them."""
    sources = (GROUP_SOURCES.get(g) for name in specs for g in getattr(metric_class(name), "groups", ()))
    return tuple(dict.fromkeys(s for s in sources if s is not None and s in DERIVED))


def build_components(cfg: DictConfig) -> tuple[MultiTaskDataModule, MultiTaskModule]:
    """Data module and LightningModule for a config; loads (or prepares) the dataset."""
    specs = run_metrics(_plain(cfg.metrics), tuple(cfg.ndcg_k))  # unknown metric names fail before any data is read
    model_cfg = _plain(cfg.model)
    weighting_cfg = _plain(cfg.weighting)
    model_cls = MODELS.get(model_cfg["name"])
    weighting_cls = WEIGHTINGS.get(weighting_cfg["name"])
    extra = tuple(
        dict.fromkeys(
            getattr(model_cls, "required_inputs", ())
            + getattr(weighting_cls, "required_inputs", ())
            + metric_inputs(specs)  # e.g. rule_stage for the metric rule_stage (auc@rule_stage=Wander)
        )
    )
    dm = build_datamodule(cfg, extra)
    schema = dm.load()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = create_model(model_cfg.pop("name"), schema, **model_cfg)
    if cfg.get("embedding_init_std") is not None:
        if not cfg.embedding_init_std > 0:
            raise ConfigError(f"embedding_init_std must be > 0, got {cfg.embedding_init_std}")
        init_embeddings(model, float(cfg.embedding_init_std))
    weighting = create_weighting(weighting_cfg.pop("name"), schema.tasks, **weighting_cfg)
    warn_hashed_stage_users(dm, weighting)
    module = MultiTaskModule(
        model,
        weighting,
        schema,
        optimizer=_plain(cfg.optimizer),
        ndcg_k=tuple(cfg.ndcg_k),
        monitor_metric=cfg.monitor,
        metrics=list(cfg.metrics),
        groups=available_groups(schema, extra),
        analysis_groups=dm.analysis_groups,  # e.g. true_stage: looked up by row index for metrics, not in batches
    )
    return dm, module


def _csv_logger(cfg: DictConfig, run_dir: Path, resume_step: int | None, **settings: Any) -> Any:
    return ResumableCSVLogger(save_dir=str(run_dir), name=LOG_DIR, version="", resume_step=resume_step, **settings)


def _wandb_logger(cfg: DictConfig, run_dir: Path, resume_step: int | None, **settings: Any) -> Any:
    from mtlbench.training.tracking import wandb_logger  # wandb is imported only when it is chosen

    return wandb_logger(run_dir, _plain(cfg), **settings)


def _no_logger(cfg: DictConfig, run_dir: Path, resume_step: int | None) -> Any:
    return False


#: the ``logger`` config group: name -> builder(cfg, run_dir, resume_step, **settings); resume_step is the step a
#: resumed run continues at (None for a new run)
LOGGERS = {"csv": _csv_logger, "wandb": _wandb_logger, "none": _no_logger}


def build_logger(cfg: DictConfig, run_dir: Path, resume_step: int | None = None) -> Any:
    settings = _plain(cfg.logger) or {"name": "none"}
    name = settings.pop("name")
    if name not in LOGGERS:
        raise ConfigError(f"unknown logger {name!r}; known: {', '.join(LOGGERS)}")
    check_settings(LOGGERS[name], "logger", name, settings, given=("cfg", "run_dir", "resume_step"))
    return LOGGERS[name](cfg, run_dir, resume_step, **settings)


def build_analyses(cfg: DictConfig) -> list[pl.Callback]:
    """The after-test analysis of the ``analysis`` config group (a registered Lightning callback), if any."""
    settings = _plain(cfg.get("analysis")) or {"name": "none"}
    name = settings.pop("name")
    if name == "none":
        return []
    factory = ANALYSES.get(name)
    check_settings(factory, "analysis", name, settings)
    return [factory(**settings)]


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list[pl.Callback]:
    """Checkpoints (``best.ckpt``, weights only, on the monitored validation metric; ``last.ckpt``, the full
    training state, after every epoch and, with ``callbacks.checkpoint_every_n_steps``, every N training steps),
    early stopping, the after-test analysis."""
    c = _plain(cfg.callbacks)
    monitor = f"valid/{cfg.monitor}_mean"
    mode = "max" if higher_is_better(cfg.monitor) else "min"  # the metric class's higher_is_better
    save_last = bool(c.get("save_last", False))
    callbacks: list[pl.Callback] = [
        pl.callbacks.ModelCheckpoint(  # first: the trainer's checkpoint_callback (best.ckpt)
            dirpath=str(run_dir / CHECKPOINT_DIR),
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            filename="best",
            # the weights are all the final validate/test read: no optimizer state to load beside the live one
            save_weights_only=True,
            enable_version_counter=False,
        ),
    ]
    if save_last:  # the full training state after every epoch (resume)
        callbacks.append(
            pl.callbacks.ModelCheckpoint(  # no monitor, top 1: the latest epoch (save_last alone, in Lightning 2.6,
                dirpath=str(run_dir / CHECKPOINT_DIR),  # saves only where a top-k checkpoint was saved)
                filename=Path(LAST_CHECKPOINT).stem,
                save_top_k=1,
                enable_version_counter=False,
            )
        )
    every = c.get("checkpoint_every_n_steps")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ConfigError(f"callbacks.checkpoint_every_n_steps must be a positive number of steps or null, got {every}")
    if every and save_last:  # last.ckpt mid-epoch too: the training loader's position is in it (preemption.py)
        callbacks.append(
            pl.callbacks.ModelCheckpoint(
                dirpath=str(run_dir / CHECKPOINT_DIR),
                every_n_train_steps=int(every),
                save_top_k=0,
                save_last=True,
                enable_version_counter=False,
            )
        )
    if c.get("early_stopping_patience") is not None:
        callbacks.append(
            pl.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=int(c["early_stopping_patience"]))
        )
    return callbacks + build_analyses(cfg)


#: config keys a continued run may change: what it prints and how it gets to its end, never its results
RESUME_FREE = (
    "resume",
    "verbose",
    "print_summary",
    "skip_complete",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "callbacks.checkpoint_every_n_steps",
)


def _flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (unset values left out: a key added later with a null default is absent)."""
    if not isinstance(cfg, dict):
        return {} if cfg is None else {prefix: cfg}
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The dotted keys in which two resolved configs differ, the keys of :data:`RESUME_FREE` aside."""
    a, b = _flat(before), _flat(now)
    return sorted(k for k in set(a) | set(b) if k not in RESUME_FREE and a.get(k) != b.get(k))


def _config_changes(cfg: DictConfig, saved: Path) -> list[str]:
    """The keys in which ``cfg`` differs from the config a run dir was started with (:func:`config_changes`)."""
    if not saved.exists():
        return []
    # both mappings: config.yaml is written from the run's DictConfig
    before = cast("dict[str, Any]", OmegaConf.to_container(OmegaConf.load(saved), resolve=True))
    now = cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True))
    return config_changes(before, now)


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint a run continues from: ``resume=true``, or a run dir whose run a signal stopped
    (``checkpoints/preempted.json``: the requeued job runs the same command). The run dir must hold the same
    config and the checkpoint must come from this mtlbench version: ``resume=true`` refuses otherwise, a
    preempted run starts over (with a warning)."""
    last = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    marker = run_dir / CHECKPOINT_DIR / PREEMPTED_FILE
    asked = bool(cfg.get("resume"))
    if not asked and not marker.exists():
        return None
    if not last.exists():
        log.info("%s does not exist: starting from scratch", last)
        return None
    problem = None
    changed = _config_changes(cfg, run_dir / CONFIG_FILE)
    if changed:
        problem = f"{run_dir} was started with a different config (differs in {', '.join(changed)})"
    else:
        try:
            written = checkpoint_version(last)
        except Exception as e:  # not a checkpoint torch can read (e.g. cut short by a pre-0.1 writer)
            problem = f"{last} cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        else:
            if written != __version__:
                problem = f"{last} was written by mtlbench {written or '< 0.1.0'}, this is mtlbench {__version__}"
    if problem is not None:
        if asked:
            raise ConfigError(f"resume=true: {problem}; use the same overrides and version, or another run dir")
        log.warning("not continuing the preempted run: %s; starting over", problem)
        shutil.rmtree(run_dir / CHECKPOINT_DIR)
        return None
    log.info("resuming from %s%s", last, "" if asked else " (the run was stopped by a signal)")
    return str(last)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a Slurm or taskset limit, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def processes_per_node(trainer_cfg: dict[str, Any]) -> int:
    """The training processes that share this machine's CPUs: DDP runs one per device of the node."""
    strategy, devices = str(trainer_cfg.get("strategy", "auto")), trainer_cfg.get("devices", 1)
    if "ddp" not in strategy:
        return 1
    if isinstance(devices, int) and devices > 0:
        return devices
    if str(trainer_cfg.get("accelerator")) in ("gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.device_count()  # devices: -1 / "auto", every GPU of the node
    return 1


def default_threads(cfg: DictConfig) -> int:
    """torch's intra-op threads when ``threads`` is unset: the usable CPUs divided by the processes sharing them,
    so that no run oversubscribes the cores (torch's own default counts every core of the machine)."""
    return max(1, usable_cpus() // processes_per_node(_plain(cfg.trainer) or {}))


def environment() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "usable_cpus": usable_cpus(),
        "cuda": torch.cuda.is_available(),
    }


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train, select on validation, test once; write results.json and predictions.parquet in ``run_dir``.

    Unless ``verbose``, Lightning's banners and tips and the warnings of :data:`mtlbench.log.QUIET_WARNINGS` are
    not shown and the progress bar is one transient line (:mod:`mtlbench.training.console`)."""
    with quiet(bool(cfg.get("verbose", False))):
        return _train(cfg, Path(run_dir))


def _train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = resume_checkpoint(cfg, run_dir)  # may refuse: before deleting
    (run_dir / RESULTS_FILE).unlink(missing_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    torch.set_num_threads(int(cfg.threads) if cfg.get("threads") else default_threads(cfg))
    dm, module = build_components(cfg)
    assert dm.schema is not None  # build_components loaded the data
    preemption = Preemption(run_dir)  # a signal: checkpoint at the next step boundary, exit to be requeued
    with preemption.signals():
        trainer_settings = _plain(cfg.trainer)
        trainer = pl.Trainer(
            **trainer_settings,
            logger=build_logger(cfg, run_dir, checkpoint_step(ckpt_path) if ckpt_path else None),
            callbacks=[
                *build_callbacks(cfg, run_dir),
                *progress_bar(trainer_settings, bool(cfg.get("verbose", False))),
                preemption,
            ],
            default_root_dir=str(run_dir),
            use_distributed_sampler=False,
            plugins=[AtomicCheckpointIO()],
        )
        try:
            start = time.perf_counter()
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
            fit_seconds = time.perf_counter() - start
            checkpoint = trainer.checkpoint_callback  # build_callbacks' ModelCheckpoint
            best = None
            if isinstance(checkpoint, pl.callbacks.ModelCheckpoint) and checkpoint.best_model_path:
                best = checkpoint
            # the path rather than "best": Lightning warns about "best" with several ModelCheckpoints (every N steps)
            ckpt = best.best_model_path if best is not None else None
            trainer.validate(module, datamodule=dm, ckpt_path=ckpt, verbose=False, weights_only=True)
            trainer.test(module, datamodule=dm, ckpt_path=ckpt, verbose=False, weights_only=True)
        except SIGTERMException:
            preemption.stop(trainer)
    if not trainer.is_global_zero:
        return {}
    world = trainer.world_size
    samples = module.train_samples * world
    results = {
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "weighting": cfg.weighting.name,
        "seed": int(cfg.seed),
        "version": __version__,
        "metrics": module.results,
        "train": {
            "seconds": round(module.train_seconds, 3),
            "fit_seconds": round(fit_seconds, 3),
            "samples": samples,
            "samples_per_second": samples / max(module.train_seconds, 1e-9),
            "epochs": trainer.current_epoch,
            "best_checkpoint": str(Path(best.best_model_path).relative_to(run_dir)) if best is not None else None,
            "world_size": world,
        },
        "params": sum(p.numel() for p in module.model.parameters()),
        "task_roles": dict(dm.schema.task_roles),
        "scenario_labels": list(dm.schema.scenario_labels),
        "environment": environment(),
        "config": resolved,
    }
    info = getattr(module.model, "model_info", None)  # optional: what the model read (e.g. STAN's user fields)
    if callable(info):
        results["model_info"] = info()
    results.update(module.summaries)  # the after-test analyses' results (e.g. STAN's stage analysis)
    if cfg.get("predictions", True):
        write_predictions(run_dir / PREDICTIONS_FILE, dm, module)
    write_json(run_dir / ENVIRONMENT_FILE, results["environment"], indent=1)
    write_json(run_dir / RESULTS_FILE, results)  # last: its presence means the run completed
    (run_dir / CHECKPOINT_DIR / PREEMPTED_FILE).unlink(missing_ok=True)
    return results


def write_predictions(path: Path, dm: MultiTaskDataModule, module: MultiTaskModule) -> None:
    index_t, scores_t = module.test_predictions
    order = torch.argsort(index_t)
    index, scores = index_t[order].cpu().numpy(), scores_t[order].cpu().numpy()
    schema, columns = dm.schema, dm.columns
    assert schema is not None, "load the data module first"
    out: dict[str, np.ndarray] = {"row": index}
    for key, field in (
        ("user_id", schema.user_field),
        ("item_id", schema.item_field),
        ("session_id", schema.session_field),
        ("scenario", schema.scenario_field),
    ):
        if field is not None:
            out[key] = np.asarray(columns[field])[index]
    for field in schema.analysis_fields:
        out[field] = np.asarray(columns[field])[index]
    for k, t in enumerate(schema.tasks):
        out[f"label_{t}"] = np.asarray(columns[t])[index]
        out[f"score_{t}"] = scores[:, k]
    write_parquet(path, out)
