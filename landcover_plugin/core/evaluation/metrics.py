"""Confusion matrix and the per-class scores derived from it."""
from __future__ import annotations

import numpy as np

from ..model.classes import NODATA_CLASS


def confusion(reference: np.ndarray, predicted: np.ndarray, class_ids, ignore=(NODATA_CLASS,)) -> np.ndarray:
    """Counts[i, j]: pixels of reference class_ids[i] predicted as class_ids[j].

    The extra last column counts pixels of each reference class left without a known
    class (nodata in the prediction): they lower recall and IoU. Pixels whose
    reference is in `ignore` are left out.
    """
    ids = np.asarray(list(class_ids), np.int64)
    lut = np.full(256, -1, np.int64)
    lut[ids] = np.arange(len(ids))
    ref = lut[reference.astype(np.uint8).ravel()]
    pred = lut[predicted.astype(np.uint8).ravel()]
    keep = ref >= 0
    for v in ignore:
        keep &= reference.ravel() != v
    n = len(ids)
    pred = np.where(pred >= 0, pred, n)
    return np.bincount(ref[keep] * (n + 1) + pred[keep], minlength=n * (n + 1)).reshape(n, n + 1)


def scores(matrix: np.ndarray, names) -> dict:
    """Per-class IoU, F1, precision and recall; mean IoU over the classes present in reference or prediction."""
    m = matrix.astype(np.float64)
    n = m.shape[0]
    tp = np.diag(m[:, :n])
    ref_total = m.sum(axis=1)
    pred_total = m[:, :n].sum(axis=0)
    union = ref_total + pred_total - tp
    present = (ref_total + pred_total) > 0

    def ratio(a, b):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)

    iou, prec, rec = ratio(tp, union), ratio(tp, pred_total), ratio(tp, ref_total)
    f1 = ratio(2 * tp, ref_total + pred_total)
    total = m.sum()

    def per_class(values):
        return {name: (None if not present[i] or np.isnan(values[i]) else float(values[i]))
                for i, name in enumerate(names)}

    return {
        "miou": float(np.nanmean(np.where(present, iou, np.nan))) if present.any() else None,
        "mean_f1": float(np.nanmean(np.where(present, f1, np.nan))) if present.any() else None,
        "accuracy": float(tp.sum() / total) if total else None,
        "iou": per_class(iou),
        "f1": per_class(f1),
        "precision": per_class(prec),
        "recall": per_class(rec),
        "pixels": {name: int(ref_total[i]) for i, name in enumerate(names)},
        "confusion": matrix.astype(int).tolist(),
    }
