"""Stage recovery (STAN's RQ3, section 4.4) with numbers: do learned user representations separate the true stages?

For each user the analysis takes one row, the user's *last test interaction* (users without test rows
are left out), and the dataset's ground-truth stage there (analysis column ``true_stage``, never seen by
a model). For every representation of those rows it reports

* ``kmeans_nmi``: normalised mutual information between a k-means clustering (k = number of true stages,
  columns standardised, 10 restarts) and the true stage, the paper's "clustering the stage
  representation vectors" turned into a number (0 = unrelated, 1 = the same partition);
* ``probe_accuracy``: 5-fold cross-validated accuracy of a multinomial logistic regression predicting the
  true stage from the representation (its top 50 principal components when wider): how much stage
  information is linearly decodable, next to ``majority_accuracy`` (always guessing the commonest stage).

Representations: ``backbone`` (the towers' inputs, i.e. the PLE/MMoE task representations g_B^k of
Eq. 3, concatenated; any model with ``towers``), and for STAN ``preference`` (y~, Eq. 9),
``user_representation`` (s^k of Eq. 8, concatenated), ``gamma_mean`` (alpha / (alpha + beta) of
Algorithm 1) and ``pseudo_label`` (Eq. 10, the raw running label means, a no-learning baseline). The
rule-based stage of section 2.1 is compared directly (``rule_stage_nmi``). ``stage_tsne.png`` is the
Fig. 6 picture: 2-D t-SNE of the representations coloured by true stage.

Stage shift over time (section 4.4.2, Fig. 7; :func:`stage_shift`, numbers and picture in
:mod:`mtlbench.analysis.shift`): each user's stage is inferred at an early and a late row of their timeline and the
early -> late transition matrix of the inferred stages is set against that of the true stages at the same rows
(``stage_shift`` in ``results.json``, ``stage_shift.png``). The rows: the user's *first row* and *last row* in time
order (ties by row number), for the users whose last row is a test row (under the per-user time split: every user
with test rows, and the late row is the last test row, the row of the stage recovery above) and who have two rows
or more. The first row is the paper's "first day": the start of the user's observed timeline. The inferred stage:
k-means (k = number of true stages present, columns standardised, 10 restarts) fitted on the early and late
representations together, so that a cluster means the same at both times, of ``shift_representation``
(STAN: ``preference``, y~ of Eq. 9, the vector STAN's stage weighting reads); clusters are named after the true
stage they overlap most (Hungarian matching; NMI and ARI do not depend on it). Datasets without a true stage skip
it: the rule-based stage cannot serve at the early row, where no user has an earlier training row.

In a run it is a Lightning callback chosen by the ``analysis`` config group: ``analysis=stages`` (any model with
towers; PLE_stage selects it; stage shift off by default, on ``backbone`` when turned on), ``analysis=stan_stages``
(STAN's, which model=stan selects: also writes ``user_stages.parquet``; stage shift on, ``shift=false`` turns it
off), ``analysis=none``. ``python -m mtlbench.cli.stages RUN_DIR ...`` runs the analysis (stage shift included
unless ``--no-shift``) on finished runs of any model with towers (e.g. vanilla ``ple`` for the paper's STAN-vs-PLE
comparison) and prints it as JSON.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from mtlbench.analysis.shift import SHIFT_FILE, plot_transitions, shift_summary
from mtlbench.data.lifecycle_inputs import rule_stage
from mtlbench.errors import ConfigError
from mtlbench.models.base import as_output
from mtlbench.registry import register_analysis
from mtlbench.rundir import write_parquet
from mtlbench.stages import STAGE_NAMES, UNKNOWN_STAGE
from mtlbench.weighting.stan_stage import StanWithoutBeta

STAGE_FIELD = "true_stage"
USER_STAGES_FILE = "user_stages.parquet"
TSNE_FILE = "stage_tsne.png"
#: representations the stage shift can cluster (``preference`` / ``user_representation``: STAN's extras)
SHIFT_REPRESENTATIONS = ("preference", "user_representation", "backbone")


# -- rows and representations ----------------------------------------------------------------------------
def last_rows(user: np.ndarray, time: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each user's last row in time order (ties: the highest row number): (row indices, user ids by id)."""
    return _end_rows(user, time, last=True)


def first_rows(user: np.ndarray, time: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each user's first row in time order (ties: the lowest row number): (row indices, user ids by id)."""
    return _end_rows(user, time, last=False)


def _end_rows(user: np.ndarray, time: np.ndarray | None, last: bool) -> tuple[np.ndarray, np.ndarray]:
    user = np.asarray(user)
    n = len(user)
    time = np.arange(n) if time is None else np.asarray(time)
    order = np.lexsort((np.arange(n), time, user))
    u = user[order]
    end = np.ones(n, dtype=bool)
    if last:
        end[:-1] = u[1:] != u[:-1]
    else:
        end[1:] = u[1:] != u[:-1]
    return order[end], u[end]


@torch.no_grad()
def model_representations(
    module: Any, datamodule: Any, rows: np.ndarray, batch_size: int = 16384
) -> dict[str, np.ndarray]:
    """Run the trained model on ``rows``: the towers' inputs (``backbone``) and every ``extras`` tensor."""
    model = module.model
    was_training = model.training
    model.eval()
    captured: list[torch.Tensor] = []
    hook = None
    if isinstance(getattr(model, "towers", None), torch.nn.Module):
        hook = model.towers.register_forward_pre_hook(
            lambda _m, args: captured.append(torch.cat([t.flatten(1) for t in args[0]], 1).float().cpu())
        )
    extras: dict[str, list[torch.Tensor]] = {}
    try:
        device = next(model.parameters()).device
        for chunk in torch.split(torch.as_tensor(rows, dtype=torch.int64), batch_size):
            batch = {k: v.to(device) for k, v in datamodule.rows().gather(chunk).items()}
            out = as_output(model(batch))
            for name, v in out.extras.items():
                extras.setdefault(name, []).append(v.float().cpu().reshape(len(chunk), -1))
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)
    reps = {name: torch.cat(v).numpy() for name, v in extras.items()}
    if captured:
        reps["backbone"] = torch.cat(captured).numpy()
    return reps


# -- numbers --------------------------------------------------------------------------------------------
def _standardise(x: np.ndarray, max_dims: int | None = None, seed: int = 0) -> np.ndarray:
    """Columns to zero mean and unit variance (NaN -> column mean); optionally PCA down to ``max_dims``."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    x = np.where(np.isnan(x), np.nanmean(x, axis=0, keepdims=True), x) if np.isnan(x).any() else x
    std = x.std(0)
    x = (x - x.mean(0)) / np.where(std > 0, std, 1.0)
    if max_dims is not None and x.shape[1] > max_dims:
        from sklearn.decomposition import PCA

        x = PCA(max_dims, random_state=seed).fit_transform(x)
    return x


def kmeans_nmi(x: np.ndarray, stage: np.ndarray, seed: int = 0) -> float:
    """NMI between k-means clusters of ``x`` (k = number of distinct stages) and the true stages."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    k = len(np.unique(stage))
    if k < 2 or len(x) <= k:
        return float("nan")
    clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(_standardise(x))
    return float(normalized_mutual_info_score(stage, clusters))


def probe_accuracy(x: np.ndarray, stage: np.ndarray, seed: int = 0, folds: int = 5, max_dims: int = 50) -> float:
    """Cross-validated accuracy of a multinomial logistic regression predicting the stage from ``x``
    (representations wider than ``max_dims`` are first projected on their top principal components)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    classes, counts = np.unique(stage, return_counts=True)
    folds = min(folds, int(counts.min()))
    if len(classes) < 2 or folds < 2:
        return float("nan")
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = cross_val_score(LogisticRegression(max_iter=500), _standardise(x, max_dims, seed), stage, cv=cv)
    return float(scores.mean())


def stage_recovery(
    reps: dict[str, np.ndarray], stage: np.ndarray, seed: int = 0, probe: bool = True
) -> dict[str, dict[str, float]]:
    """``kmeans_nmi`` (and ``probe_accuracy``) of every representation against the true stages."""
    out = {}
    for name, x in reps.items():
        x = np.asarray(x).reshape(len(stage), -1)
        out[name] = {"dims": int(x.shape[1]), "kmeans_nmi": kmeans_nmi(x, stage, seed)}
        if probe:
            out[name]["probe_accuracy"] = probe_accuracy(x, stage, seed)
    return out


def plot_tsne(
    reps: dict[str, np.ndarray], stage: np.ndarray, path: Path, seed: int = 0, titles: dict[str, str] | None = None
) -> None:
    """Fig. 6: one 2-D t-SNE panel per representation, points coloured by true stage (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    fig, axes = plt.subplots(1, len(reps), figsize=(5 * len(reps), 4.6), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (name, x) in zip(axes[0], reps.items()):
        x = _standardise(x, 50, seed)
        xy = TSNE(2, init="pca", random_state=seed, perplexity=min(30.0, (len(x) - 1) / 3.0)).fit_transform(x)
        for s in np.unique(stage):
            m = stage == s
            label = STAGE_NAMES[s] if 0 <= s < len(STAGE_NAMES) else str(s)
            ax.scatter(xy[m, 0], xy[m, 1], s=5, alpha=0.6, color=colours(int(s)), label=label)
        ax.set_title((titles or {}).get(name, name))
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(markerscale=3, fontsize=8, title="true stage")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- one run ----------------------------------------------------------------------------------------------
TITLES = {
    "preference": "STAN preference y~ (Eq. 9)",
    "user_representation": "STAN user embedding s^k (Eq. 8)",
    "backbone": "backbone task representations (Eq. 3)",
}


def stage_analysis(
    module: Any,
    datamodule: Any,
    run_dir: Path,
    max_users: int = 5000,
    tsne_users: int = 0,
    probe: bool = True,
    stage_field: str = STAGE_FIELD,
    extra: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """``{"stage_analysis": {...}}`` for a trained module, or ``{}`` without a ``stage_field`` column.

    ``extra``: more per-user representations, aligned with the users' last rows (see :func:`last_rows`).
    """
    schema, columns = datamodule.schema, datamodule.columns
    if stage_field not in columns or schema.user_field is None:
        return {}
    seed = int(getattr(datamodule, "seed", 0))
    rows, users = last_rows(
        columns[schema.user_field], columns[schema.time_field] if schema.time_field in columns else None
    )
    in_test = np.isin(rows, datamodule.splits["test"])
    pick = np.flatnonzero(in_test)
    rng = np.random.default_rng(seed)
    if len(pick) > max_users:
        pick = np.sort(rng.choice(pick, max_users, replace=False))
    stage = np.asarray(columns[stage_field])[rows[pick]].astype(np.int64)
    if len(pick) < 10 or len(np.unique(stage)) < 2:
        return {"stage_analysis": {"skipped": f"only {len(pick)} users with a test row"}}
    reps = model_representations(module, datamodule, rows[pick], datamodule.eval_batch_size)
    reps.update({name: np.asarray(v)[pick] for name, v in (extra or {}).items()})
    if "stan_pseudo_label" in datamodule.rows():
        reps["pseudo_label"] = datamodule.rows().column("stan_pseudo_label", rows[pick]).cpu().numpy()
    rules = rule_stage(schema, columns, datamodule.splits["train"])[rows[pick]]
    from threadpoolctl import threadpool_limits

    # one BLAS/OpenMP thread for scikit-learn: its BLAS threads and torch's idle OpenMP threads contend for the
    # cores (the probes took 60 s instead of 10 s on 2 cores); these problems are too small to gain from threads
    with threadpool_limits(limits=1):
        return _stage_report(reps, stage, rules, run_dir, seed, len(pick), tsne_users, probe, rng)


def _stage_report(
    reps: dict[str, np.ndarray],
    stage: np.ndarray,
    rules: np.ndarray,
    run_dir: Path,
    seed: int,
    users: int,
    tsne_users: int,
    probe: bool,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Clustering, probes and the t-SNE picture of the representations of ``users`` users."""
    from sklearn.metrics import normalized_mutual_info_score

    result: dict[str, Any] = {
        "rows": "each user's last test interaction",
        "users": int(users),
        "seed": seed,
        "stage_counts": {
            STAGE_NAMES[s] if s < len(STAGE_NAMES) else str(s): int(c)
            for s, c in zip(*np.unique(stage, return_counts=True))
        },
        "majority_accuracy": float(np.bincount(stage).max() / len(stage)),
        "representations": stage_recovery(reps, stage, seed, probe),
        "rule_stage_nmi": float(normalized_mutual_info_score(stage, rules)),
        "rule_stage_unknown_share": float(np.mean(rules == UNKNOWN_STAGE)),
    }
    shown = {k: reps[k] for k in ("preference", "user_representation", "backbone") if k in reps}
    if shown and tsne_users > 0:
        sub = np.sort(rng.choice(users, min(tsne_users, users), replace=False))
        plot_tsne({k: v[sub] for k, v in shown.items()}, stage[sub], run_dir / TSNE_FILE, seed, TITLES)
        result["tsne"] = TSNE_FILE
    return {"stage_analysis": result}


def stage_shift(
    module: Any,
    datamodule: Any,
    run_dir: Path,
    representation: str = "preference",
    max_users: int = 5000,
    stage_field: str = STAGE_FIELD,
    plot: bool = True,
) -> dict[str, Any]:
    """``{"stage_shift": {...}}`` (:func:`mtlbench.analysis.shift.shift_summary` and ``stage_shift.png``) for a
    trained module, or ``{}`` without a ``stage_field`` column; rows and clustering as the module doc says.

    ``max_users`` users at most (a seeded sample); the picture only with ``plot``.
    """
    schema, columns = datamodule.schema, datamodule.columns
    if stage_field not in columns or schema.user_field is None:
        return {}
    seed = int(getattr(datamodule, "seed", 0))
    user = columns[schema.user_field]
    time = columns[schema.time_field] if schema.time_field in columns else None
    late, users = last_rows(user, time)
    early, early_users = first_rows(user, time)
    assert np.array_equal(users, early_users)  # both in user id order
    pick = np.flatnonzero(np.isin(late, datamodule.splits["test"]) & (early != late))
    if len(pick) > max_users:
        pick = np.sort(np.random.default_rng(seed).choice(pick, max_users, replace=False))
    truth = np.asarray(columns[stage_field]).astype(np.int64)
    true_early, true_late = truth[early[pick]], truth[late[pick]]
    present = np.unique(np.concatenate([true_early, true_late]))
    if len(pick) < 10 or len(present) < 2:
        return {"stage_shift": {"skipped": f"only {len(pick)} users with two rows and a test row"}}
    reps = model_representations(
        module, datamodule, np.concatenate([early[pick], late[pick]]), datamodule.eval_batch_size
    )
    if representation not in reps:
        name = type(module.model).__name__
        return {"stage_shift": {"skipped": f"model {name} has no {representation!r} representation ({sorted(reps)})"}}
    labels = list(getattr(schema, "stage_labels", None) or [])
    names = [labels[i] if i < len(labels) else str(i) for i in range(max(len(labels), int(present.max()) + 1))]
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # as in stage_analysis: scikit-learn's BLAS threads contend with torch's
        x = _standardise(reps[representation])
        clusters = KMeans(n_clusters=len(present), n_init=10, random_state=seed).fit_predict(x)
        result = shift_summary(true_early, true_late, clusters[: len(pick)], clusters[len(pick) :], names)
    result = {
        "rows": "each user's first row and last row (a test row) in time order",
        "representation": representation,
        "clusters": int(len(present)),
        "seed": seed,
        **result,
    }
    if plot:
        title = f"inferred stage: k-means of {representation}"
        plot_transitions(result, run_dir / SHIFT_FILE, title)
        result["picture"] = SHIFT_FILE
    return {"stage_shift": result}


def stan_run_summary(module: Any, datamodule: Any, run_dir: Path, **settings: Any) -> dict[str, Any]:
    """STAN after testing: ``user_stages.parquet`` (every user's last y~, gamma, alpha, beta) + stage analysis.

    The user's last row is their last interaction in time order over all splits (for users with test
    rows, their last test row); y~ is computed on it. ``gamma_<task>`` is one draw from the user's final
    Beta(alpha, beta) (seeded), ``gamma_mean_<task>`` its mean; with ``stan_wo_beta``, gamma = y~.
    """
    schema, columns = datamodule.schema, datamodule.columns
    rows, users = last_rows(
        columns[schema.user_field], columns[schema.time_field] if schema.time_field in columns else None
    )
    reps = model_representations(module, datamodule, rows, datamodule.eval_batch_size)
    pref = reps["preference"]
    out: dict[str, np.ndarray] = {"user_id": users, "row": rows}
    weighting = module.weighting
    gamma_mean = None
    for k, t in enumerate(schema.tasks):
        out[f"preference_{t}"] = pref[:, k]
    if hasattr(weighting, "expected_gamma") and hasattr(weighting, "alpha"):
        u = torch.as_tensor(users, device=weighting.alpha.device)
        alpha, beta = weighting.alpha[u], weighting.beta[u]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(getattr(datamodule, "seed", 0)))
            draw = torch.distributions.Beta(alpha, beta).sample().cpu().numpy()
        gamma_mean = weighting.expected_gamma()[u].cpu().numpy()
        for k, t in enumerate(schema.tasks):
            out[f"gamma_{t}"] = draw[:, k]
            out[f"gamma_mean_{t}"] = gamma_mean[:, k]
            out[f"alpha_{t}"] = alpha[:, k].cpu().numpy()
            out[f"beta_{t}"] = beta[:, k].cpu().numpy()
        out["count"] = weighting.count[u].cpu().numpy()
    elif isinstance(weighting, StanWithoutBeta):
        for k, t in enumerate(schema.tasks):
            out[f"gamma_{t}"] = pref[:, k]
    stage_field = settings.get("stage_field", STAGE_FIELD)
    if stage_field in columns:
        out[stage_field] = np.asarray(columns[stage_field])[rows]
    write_parquet(run_dir / USER_STAGES_FILE, out)
    return stage_analysis(
        module, datamodule, run_dir, extra={"gamma_mean": gamma_mean} if gamma_mean is not None else None, **settings
    )


# -- in a run: after-test callbacks -----------------------------------------------------------------------
@register_analysis("stages")
class StageAnalysis(pl.Callback):
    """After testing (best checkpoint), on rank zero: :func:`stage_analysis` (and, with ``shift``,
    :func:`stage_shift`) into ``results.json``.

    ``max_users``: users (last test interaction) for the k-means NMI and the linear probe, and at most as many for
    the stage shift; ``tsne_users``: users in ``stage_tsne.png`` (0 = no picture); ``probe``: fit the linear probes;
    ``stage_field``: the ground-truth stage column (a dataset without it, every real log, skips the analysis);
    ``shift``: the stage shift over time (``stage_shift`` and ``stage_shift.png``) on the representation
    ``shift_representation`` (``backbone``: the towers' inputs, any model; ``preference``,
    ``user_representation``: STAN's).
    """

    def __init__(
        self,
        max_users: int = 5000,
        tsne_users: int = 0,
        probe: bool = True,
        stage_field: str = STAGE_FIELD,
        shift: bool = False,
        shift_representation: str = "backbone",
    ) -> None:
        if shift_representation not in SHIFT_REPRESENTATIONS:
            raise ConfigError(
                f"analysis shift_representation must be one of {', '.join(SHIFT_REPRESENTATIONS)}, "
                f"got {shift_representation!r}"
            )
        if not isinstance(max_users, int) or isinstance(max_users, bool) or max_users < 10:
            raise ConfigError(f"analysis max_users must be an integer >= 10, got {max_users!r}")
        self.settings: dict[str, Any] = {
            "max_users": max_users,
            "tsne_users": tsne_users,
            "probe": probe,
            "stage_field": stage_field,
        }
        self.shift = bool(shift)
        self.shift_settings: dict[str, Any] = {
            "representation": shift_representation,
            "max_users": max_users,
            "stage_field": stage_field,
        }

    def on_test_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.is_global_zero:
            # trainer.datamodule: set by Lightning's data connector, not declared in the Trainer class
            datamodule = trainer.datamodule  # type: ignore[attr-defined]
            pl_module.summaries.update(self.analyse(pl_module, datamodule, Path(trainer.default_root_dir)))

    def analyse(self, module: Any, datamodule: Any, run_dir: Path) -> dict[str, Any]:
        out = stage_analysis(module, datamodule, run_dir, **self.settings)
        return {**out, **self.analyse_shift(module, datamodule, run_dir)}

    def analyse_shift(self, module: Any, datamodule: Any, run_dir: Path) -> dict[str, Any]:
        return stage_shift(module, datamodule, run_dir, **self.shift_settings) if self.shift else {}


@register_analysis("stan_stages")
class StanStageAnalysis(StageAnalysis):
    """STAN's: :func:`stan_run_summary` (``user_stages.parquet`` + the stage analysis with gamma and y~).

    The defaults draw the paper's Fig. 6 picture (1000 users in ``stage_tsne.png``) and its Fig. 7 question, the
    stage shift over time of y~ (``stage_shift``, ``stage_shift.png``; ``shift=false`` turns it off).
    """

    def __init__(
        self,
        max_users: int = 5000,
        tsne_users: int = 1000,
        probe: bool = True,
        stage_field: str = STAGE_FIELD,
        shift: bool = True,
        shift_representation: str = "preference",
    ) -> None:
        super().__init__(max_users, tsne_users, probe, stage_field, shift, shift_representation)

    def setup(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        if not getattr(pl_module.model, "outputs_preference", False):
            raise ConfigError(
                f"analysis=stan_stages needs STAN's preference output; model "
                f"{type(pl_module.model).__name__} has none (use analysis=stages)"
            )

    def analyse(self, module: Any, datamodule: Any, run_dir: Path) -> dict[str, Any]:
        out = stan_run_summary(module, datamodule, run_dir, **self.settings)
        return {**out, **self.analyse_shift(module, datamodule, run_dir)}
