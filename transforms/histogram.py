"""Piecewise-linear histogram standardisation (Nyúl & Udupa 1999) of whole-brain ROI boxes onto the training crops.

The network learned its intensities from MSD hippocampus crops rescaled by
:class:`~hippogan.transforms.intensity.ScaleIntensityRangePercentilesNonzero`. A box cut from a whole-brain scan
holds the same anatomy but another mix of tissue and another contrast (skull on, a scanner's own T1 weighting,
resampling that smears a skull-stripped brain's edge), so the same rescaling puts grey and white matter at other
levels; the shipped network is brittle to that: the native T1s lost 50-80% of their hippocampal volume and
a 2-voxel change of a skull-stripped brain's edge cut the template's own volumes tenfold (benchmarks/results/
registration.md). Here each box's nonzero-voxel percentiles ``percentiles`` are mapped piecewise-linearly onto
``landmarks``, the mean percentiles of the training crops (:func:`histogram_landmarks`), so every box reaches
the network with the training crops' histogram, whatever its scanner, skull or edge.

Applied to whole-brain boxes only (``sides``): MSD-like crops already have the training histogram, and
standardising them too cost 0.003 binary Dice on folds 0-1.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_tensor

from .keys import IMAGE, LEFT, RIGHT, SIDE

__all__ = [
    "DEFAULT_PERCENTILES",
    "HistogramStandardize",
    "HistogramStandardized",
    "HistogramStandardizeD",
    "HistogramStandardizeDict",
    "histogram_landmarks",
]

DEFAULT_PERCENTILES = (0.5, 1, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98, 99, 99.5)
"""Percentiles of the nonzero voxels used as landmarks."""


def _nonzero_percentiles(img: np.ndarray, percentiles: Sequence[float]) -> np.ndarray | None:
    values = img[img != 0]
    return None if values.size == 0 else np.percentile(values, percentiles)


class HistogramStandardize(Transform):
    """Map the nonzero voxels' ``percentiles`` of an image piecewise-linearly onto ``landmarks``; zeros stay 0.

    Args:
        landmarks: target intensity of each percentile, increasing (e.g. :func:`histogram_landmarks` of the
            training crops after the same intensity scaling).
        percentiles: the percentiles (in [0, 100], increasing) that ``landmarks`` belong to.

    Input and output ``(C, X, Y, Z)`` (all channels share one map); intensities below the first or above the
    last percentile are clamped to the first or last landmark. An all-zero image passes through.
    """

    def __init__(self, landmarks: Sequence[float], percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> None:
        self.landmarks = np.asarray(landmarks, dtype=np.float64)
        self.percentiles = np.asarray(percentiles, dtype=np.float64)
        if self.landmarks.shape != self.percentiles.shape or self.landmarks.ndim != 1 or len(self.landmarks) < 2:
            raise ValueError(
                f"HistogramStandardize: landmarks ({len(self.landmarks)}) and percentiles ({len(self.percentiles)}) "
                "must be two lists of one length, at least 2."
            )
        if np.any(np.diff(self.landmarks) < 0) or np.any(np.diff(self.percentiles) <= 0):
            raise ValueError("HistogramStandardize: landmarks must not decrease and percentiles must increase.")
        if self.percentiles[0] < 0 or self.percentiles[-1] > 100:
            raise ValueError(f"HistogramStandardize: percentiles must lie in [0, 100], got {percentiles!r}.")

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Return ``img`` with its histogram standardised (same type, shape, dtype and metadata)."""
        array = np.asarray(convert_to_tensor(img, track_meta=False).detach().cpu().numpy())
        points = _nonzero_percentiles(array, self.percentiles)
        if points is None:
            return img
        points = np.maximum.accumulate(points)  # equal percentiles (a flat histogram) must not break interp
        mapped = np.where(array != 0, np.interp(array, points, self.landmarks), 0.0).astype(array.dtype)
        if not isinstance(img, torch.Tensor):
            return mapped
        out = img.clone()  # a MetaTensor keeps its metadata and trace
        out.copy_(torch.as_tensor(mapped))
        return out


class HistogramStandardized(MapTransform):
    """Dictionary wrapper of :class:`HistogramStandardize`, for the samples of some sides only.

    Args:
        keys: image keys.
        landmarks, percentiles: as in :class:`HistogramStandardize`.
        sides: standardise a sample only when its ``side_key`` is one of these (default: the whole-brain boxes,
            ``left`` and ``right``; a hippocampus crop's side is ``unknown``); ``None``: every sample.
        side_key: the key holding the sample's side (:class:`~hippogan.transforms.roi.HippocampalROICropd`'s).
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable = IMAGE,
        landmarks: Sequence[float] = (),
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        sides: Sequence[str] | None = (LEFT, RIGHT),
        side_key: str = SIDE,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.standardize = HistogramStandardize(landmarks, percentiles)
        self.sides = None if sides is None else {str(s) for s in sides}
        self.side_key = side_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Return a copy of ``data``, its images standardised when the sample's side is in ``sides``."""
        d = dict(data)
        if self.sides is not None and str(d.get(self.side_key)) not in self.sides:
            return d
        for key in self.key_iterator(d):
            d[key] = self.standardize(d[key])
        return d


HistogramStandardizeD = HistogramStandardizeDict = HistogramStandardized


def histogram_landmarks(
    images: Iterable[torch.Tensor | np.ndarray], percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> list[float]:
    """Mean nonzero-voxel ``percentiles`` of ``images`` (e.g. the training crops after intensity scaling).

    Returns:
        one landmark per percentile, rounded to 4 decimals (for a config file).

    Raises:
        ValueError: no image has a nonzero voxel.
    """
    rows = []
    for img in images:
        array = np.asarray(convert_to_tensor(img, track_meta=False).detach().cpu().numpy())
        points = _nonzero_percentiles(array, percentiles)
        if points is not None:
            rows.append(points)
    if not rows:
        raise ValueError("histogram_landmarks: no image with a nonzero voxel.")
    return [round(float(v), 4) for v in np.mean(rows, axis=0)]
