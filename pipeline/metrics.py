"""Segmentation metrics of one case: overlap (DSC, SEN, PPV, Jaccard) and surface distances (HD95, ASD).

With A the prediction and B the reference (Deng et al., equations 6-9, with the standard PPV and Jaccard:
the paper prints a spurious factor 2 in both):

- ``dsc`` = 2|A∩B| / (|A| + |B|), ``sen`` = |A∩B| / |B|, ``ppv`` = |A∩B| / |A|, ``jaccard`` = |A∩B| / |A∪B|;
- ``hd95``: symmetric 95th-percentile Hausdorff distance in mm (MONAI: the larger of the two directed
  95th percentiles of edge-voxel distances); ``asd``: average symmetric surface distance in mm (MONAI: the
  mean of the edge-voxel distances pooled over both directions).

Each case is scored on the binary mask ``label > 0`` (the hippocampus of the paper) and on each class
(MSD Task04: 1 anterior, 2 posterior), keys ``<metric>`` and ``<metric>_class<c>``.

Empty masks, per mask pair:

=================  ====  ====  ====  =======  ====  ====
case               dsc   sen   ppv   jaccard  hd95  asd
=================  ====  ====  ====  =======  ====  ====
both empty         1     1     1     1        0     0
prediction empty   0     0     NaN   0        NaN   NaN
reference empty    0     NaN   0     0        NaN   NaN
=================  ====  ====  ====  =======  ====  ====

NaN means "undefined" (0/0, or no surface to measure from); summaries skip it and count it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_confusion_matrix_metric,
    compute_dice,
    compute_hausdorff_distance,
    get_confusion_matrix,
)
from monai.utils import convert_to_tensor

__all__ = ["METRICS", "evaluate_case", "metric_key"]

METRICS = ("dsc", "sen", "ppv", "jaccard", "hd95", "asd")
"""Metric names, in the order of the keys :func:`evaluate_case` returns."""

_CONFUSION_NAMES = {"sen": "sensitivity", "ppv": "precision", "jaccard": "threat score"}


def metric_key(metric: str, label_class: int | None = None) -> str:
    """Return the result key of ``metric`` on the binary mask (``label_class=None``) or on one class.

    Example: ``metric_key("dsc") == "dsc"``, ``metric_key("hd95", 2) == "hd95_class2"``.
    """
    return metric if label_class is None else f"{metric}_class{label_class}"


def _as_labels(array: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """Return ``array`` as an integer CPU tensor of labels (floats are rounded)."""
    labels = convert_to_tensor(array, device="cpu")
    if labels.is_floating_point():
        labels = torch.round(labels)
    if labels.ndim == 0:
        raise ValueError(f"{name} must be a spatial label array, got a scalar")
    return labels.to(torch.int64)


def evaluate_case(
    pred: np.ndarray | torch.Tensor,
    ref: np.ndarray | torch.Tensor,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    classes: Sequence[int] | None = (1, 2),
) -> dict[str, float]:
    """Score one predicted label map against its reference.

    Args:
        pred: predicted label map, shape ``(H, W, D)`` (or any spatial shape of ``len(spacing)`` dims);
            0 is background, float labels are rounded.
        ref: reference label map, same shape as ``pred``.
        spacing: voxel size in mm along each array axis (e.g. from the NIfTI affine).
        classes: label values scored on their own besides the binary mask ``label > 0``;
            ``None`` or empty for the binary mask only.

    Returns:
        ``{metric_key(m): value}`` for each of :data:`METRICS` on the binary mask, then for each class
        (``metric_key(m, c)``); overlap metrics are fractions in [0, 1], distances in mm. Empty masks
        follow the table in the module docstring (NaN where undefined).

    Raises:
        ValueError: if the shapes differ, ``spacing`` does not match the number of spatial dims or is
            not positive, or a class is not a positive integer.
    """
    pred_labels, ref_labels = _as_labels(pred, "pred"), _as_labels(ref, "ref")
    if pred_labels.shape != ref_labels.shape:
        raise ValueError(f"pred and ref must have the same shape, got {tuple(pred_labels.shape)} and {tuple(ref_labels.shape)}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != pred_labels.ndim or min(spacing) <= 0:
        raise ValueError(f"spacing must hold {pred_labels.ndim} positive voxel sizes in mm, got {spacing}")
    classes = tuple(classes or ())
    if any(not isinstance(c, (int, np.integer)) or isinstance(c, bool) or c <= 0 for c in classes):
        raise ValueError(f"classes must be positive integer label values, got {classes}")

    # one channel per scored mask: the binary hippocampus, then each class; shape (1, C, *spatial)
    selections = [None, *(int(c) for c in classes)]
    pred_masks = torch.stack([pred_labels > 0 if c is None else pred_labels == c for c in selections])[None].float()
    ref_masks = torch.stack([ref_labels > 0 if c is None else ref_labels == c for c in selections])[None].float()

    values = {"dsc": compute_dice(pred_masks, ref_masks, include_background=True, ignore_empty=False)[0]}
    confusion = get_confusion_matrix(pred_masks, ref_masks, include_background=True)
    for metric, monai_name in _CONFUSION_NAMES.items():
        values[metric] = compute_confusion_matrix_metric(monai_name, confusion)[0]

    pred_any = pred_masks.flatten(2).any(-1)[0]
    ref_any = ref_masks.flatten(2).any(-1)[0]
    both_empty = ~pred_any & ~ref_any
    for metric in ("sen", "ppv", "jaccard"):
        values[metric] = torch.where(both_empty, torch.ones_like(values[metric]), values[metric])

    # surface distances only where both masks have a surface (MONAI warns and returns inf/NaN otherwise)
    both = torch.nonzero(pred_any & ref_any).flatten()
    for metric in ("hd95", "asd"):
        values[metric] = torch.where(both_empty, 0.0, float("nan"))
    if len(both):
        p, r = pred_masks[:, both], ref_masks[:, both]
        values["hd95"][both] = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=spacing)[0]
        values["asd"][both] = compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=spacing)[0]

    return {metric_key(m, c): float(values[m][i]) for i, c in enumerate(selections) for m in METRICS}
