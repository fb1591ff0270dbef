"""pCVR on the click space (ESMM Eq. 1-2, AEM2TL): the AUC of the conversion-given-click probability on the clicked
test rows, the only rows where a conversion label is a CVR label.

An entire-space model trains pCTCVR = pCTR x pCVR on every impression, so its conversion task's test AUC is that of
pCTCVR; ESMM's paper also reports pCVR on clicked impressions. The model returns pCVR in ``extras["cvr"]`` and names
its two tasks ``ctr_task`` / ``cvr_task``; ``model=esmm`` and ``model=aem2tl`` select this analysis
(``analysis=cvr``), which writes ``results.json["cvr"] = {task, given, test: {auc, rows}}``.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from mtlbench.data.loader import BatchLoader
from mtlbench.errors import ConfigError
from mtlbench.models.base import as_output
from mtlbench.registry import register_analysis


@torch.no_grad()
def clicked_cvr_auc(module: Any, datamodule: Any, ctr_task: str, cvr_task: str) -> dict[str, Any]:
    """AUC of pCVR (``extras["cvr"]``) on the clicked test rows, whole test split (also under DDP: rank zero)."""
    k_ctr, k_cvr = module.tasks.index(ctr_task), module.tasks.index(cvr_task)
    was_training = module.model.training
    module.model.eval()
    scores, labels = [], []
    try:
        rows = torch.from_numpy(datamodule.splits["test"])
        for batch in BatchLoader(datamodule.rows(), rows, datamodule.eval_batch_size):
            batch = {k: v.to(module.device) for k, v in batch.items()}
            out = as_output(module.model(batch))
            y = batch["labels"]
            clicked = (y[:, k_ctr] == 1) & ~torch.isnan(y[:, k_cvr])
            scores.append(out.extras["cvr"][clicked].float().cpu())
            labels.append(y[clicked, k_cvr].cpu())
    finally:
        module.model.train(was_training)
    from sklearn.metrics import roc_auc_score

    s_np, y_np = torch.cat(scores).numpy(), torch.cat(labels).numpy()
    auc = float(roc_auc_score(y_np, s_np)) if 0 < y_np.sum() < len(y_np) else float("nan")  # NaN: one class
    return {"cvr": {"task": cvr_task, "given": ctr_task, "test": {"auc": auc, "rows": int(len(y_np))}}}


@register_analysis("cvr")
class ClickedCvr(pl.Callback):
    """After testing (best checkpoint), on rank zero: :func:`clicked_cvr_auc` into ``results.json["cvr"]``."""

    def setup(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        model = pl_module.model
        if not (getattr(model, "ctr_task", None) and getattr(model, "cvr_task", None)):
            raise ConfigError(
                f"analysis=cvr needs an entire-space model with ctr_task / cvr_task and pCVR in its extras "
                f"(esmm, aem2tl); model {type(model).__name__} has none (use analysis=none)"
            )

    def on_test_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.is_global_zero:
            model = pl_module.model
            datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning's data connector
            pl_module.summaries.update(clicked_cvr_auc(pl_module, datamodule, model.ctr_task, model.cvr_task))
