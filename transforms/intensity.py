"""Intensity normalisation robust to scanner ranges: percentile rescaling computed on nonzero voxels.

MONAI's :class:`~monai.transforms.ScaleIntensityRangePercentiles` computes its percentiles over every
voxel; a hippocampal crop or a whole-brain scan is padded with zeros (background, or the ROI padding),
which would pull the lower percentile to 0 and the upper one down. The subclass here adds MONAI's usual
``nonzero`` option (as in ``NormalizeIntensity``): the percentiles come from nonzero voxels only, and
the whole volume is then rescaled and clipped, so zeros stay at ``b_min``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import DtypeLike, NdarrayOrTensor
from monai.transforms import MapTransform, ScaleIntensityRange, ScaleIntensityRangePercentiles
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import convert_to_tensor

__all__ = [
    "ScaleIntensityRangePercentilesNonzero",
    "ScaleIntensityRangePercentilesNonzerod",
    "ScaleIntensityRangePercentilesNonzeroD",
    "ScaleIntensityRangePercentilesNonzeroDict",
]


class ScaleIntensityRangePercentilesNonzero(ScaleIntensityRangePercentiles):
    """Rescale ``[p_lower, p_upper]`` (percentiles of the nonzero voxels) to ``[b_min, b_max]``, per volume.

    With the defaults, a uint8 crop, an int16 scan and a float scan whose maximum is 100 or 1.7e6 all end
    in ``[0, 1]``: 0.5th percentile -> 0, 99.5th -> 1, clipped outside. A volume with no nonzero voxel
    falls back to all voxels. Input and output shape ``(C, X, Y, Z)``; not invertible (intensity only).

    Args:
        lower: lower percentile, in ``[0, 100]``.
        upper: upper percentile, in ``[0, 100]``.
        b_min: output value of the lower percentile.
        b_max: output value of the upper percentile.
        clip: clip the output to ``[b_min, b_max]``.
        relative: see :class:`~monai.transforms.ScaleIntensityRangePercentiles`.
        channel_wise: compute the percentiles of each channel separately.
        dtype: output data type.
        nonzero: compute the percentiles on nonzero voxels only.
    """

    def __init__(
        self,
        lower: float = 0.5,
        upper: float = 99.5,
        b_min: float | None = 0.0,
        b_max: float | None = 1.0,
        clip: bool = True,
        relative: bool = False,
        channel_wise: bool = False,
        dtype: DtypeLike = np.float32,
        nonzero: bool = True,
    ) -> None:
        super().__init__(lower, upper, b_min, b_max, clip, relative, channel_wise, dtype)
        self.nonzero = nonzero

    def _normalize(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        values = img[img != 0] if self.nonzero and bool((img != 0).any()) else img
        if isinstance(values, torch.Tensor) and values.device.type == "cpu":
            values = values.numpy()  # numpy's percentile is ~10x faster than torch.quantile on CPU
        b_min, b_max = self.b_min, self.b_max
        if self.relative:
            if b_min is None or b_max is None:
                raise ValueError("ScaleIntensityRangePercentilesNonzero: relative=True needs b_min and b_max.")
            b_min = (self.b_max - self.b_min) * (self.lower / 100.0) + self.b_min
            b_max = (self.b_max - self.b_min) * (self.upper / 100.0) + self.b_min
        scaler = ScaleIntensityRange(
            a_min=float(percentile(values, self.lower)),
            a_max=float(percentile(values, self.upper)),
            b_min=b_min,
            b_max=b_max,
            clip=self.clip,
            dtype=self.dtype,
        )
        return convert_to_tensor(scaler(img), track_meta=False)


class ScaleIntensityRangePercentilesNonzerod(MapTransform):
    """Dictionary wrapper of :class:`ScaleIntensityRangePercentilesNonzero` (images only, not labels).

    Args:
        keys: keys of the images to rescale.
        lower, upper, b_min, b_max, clip, relative, channel_wise, dtype, nonzero: as in the array class.
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable,
        lower: float = 0.5,
        upper: float = 99.5,
        b_min: float | None = 0.0,
        b_max: float | None = 1.0,
        clip: bool = True,
        relative: bool = False,
        channel_wise: bool = False,
        dtype: DtypeLike = np.float32,
        nonzero: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleIntensityRangePercentilesNonzero(
            lower, upper, b_min, b_max, clip, relative, channel_wise, dtype, nonzero
        )

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Return a copy of ``data`` with each key's image rescaled."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


ScaleIntensityRangePercentilesNonzeroD = ScaleIntensityRangePercentilesNonzerod
ScaleIntensityRangePercentilesNonzeroDict = ScaleIntensityRangePercentilesNonzerod
