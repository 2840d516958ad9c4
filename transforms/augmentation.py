"""Random augmentation of the 2D training planes and of 3D training volumes (beyond the paper, which trains
without augmentation)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

from monai.transforms import (
    Compose,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandScaleIntensityd,
)

from .keys import IMAGE, LABEL

__all__ = ["get_plane_augmentation", "get_volume_augmentation"]


def get_plane_augmentation(
    keys: Sequence[Hashable] = (IMAGE, LABEL),
    image_key: Hashable = IMAGE,
    prob: float = 0.5,
    rotate_degrees: float = 15.0,
    scale: float = 0.1,
    gamma: tuple[float, float] = (0.7, 1.5),
    intensity: float = 0.1,
    intensity_prob: float = 0.3,
    spatial_size: Sequence[int] = (64, 64),
    elastic_prob: float = 0.0,
    elastic_spacing: float = 16.0,
    elastic_magnitude: tuple[float, float] = (1.0, 2.0),
    bias_field_prob: float = 0.0,
    bias_field_coeff: tuple[float, float] = (0.0, 0.1),
) -> Compose:
    """Random in-plane affine, elastic deformation and contrast, bias-field and intensity jitter of a 2D plane
    and its label.

    1. ``RandAffined`` (probability ``prob``): rotation within ±``rotate_degrees`` and isotropic-per-axis scaling
       within ±``scale`` about the plane's centre; bilinear for the image, nearest for the label, zeros outside;
    2. ``Rand2DElasticd`` (``elastic_prob``; off by default): a B-spline deformation whose control points,
       ``elastic_spacing`` pixels apart, move by a normal offset times a magnitude drawn from
       ``elastic_magnitude`` (pixels); same modes and padding;
    3. ``RandAdjustContrastd`` (``intensity_prob``): gamma in ``gamma`` on the image (values stay in [0, 1]);
    4. ``RandBiasFieldd`` (``bias_field_prob``; off by default): the image times a smooth multiplicative field,
       the exponential of a degree-3 polynomial with coefficients drawn from ``bias_field_coeff``;
    5. ``RandScaleIntensityd`` (``intensity_prob``): image times ``1 + U(-intensity, intensity)``.

    Args:
        keys: the plane's keys moved together (image first, then labels).
        image_key: the key whose intensities are jittered.
        prob, rotate_degrees, scale, gamma, intensity, intensity_prob: as above.
        spatial_size: the planes' ``(H, W)`` (the sampling grid is cached for it; other sizes are resampled to it).
        elastic_prob, elastic_spacing, elastic_magnitude, bias_field_prob, bias_field_coeff: as above.

    Shapes: ``{key: (C, H, W)}`` -> same shapes (the label stays integer-valued). About 1.3 ms per 64x64 plane
    and label on one CPU thread with ``monai.data.set_track_meta(False)``, 3-4 ms with meta tracking.
    """
    modes = tuple("nearest" if key != image_key else "bilinear" for key in keys)
    return Compose(
        [
            RandAffined(
                keys, prob=prob, rotate_range=math.radians(rotate_degrees), scale_range=(scale, scale),
                mode=modes, padding_mode="zeros", spatial_size=tuple(spatial_size), cache_grid=True,
            ),
            Rand2DElasticd(
                keys, spacing=elastic_spacing, magnitude_range=tuple(elastic_magnitude), prob=elastic_prob,
                mode=modes, padding_mode="zeros", spatial_size=tuple(spatial_size),
            ),
            RandAdjustContrastd(image_key, prob=intensity_prob, gamma=gamma),
            RandBiasFieldd(image_key, coeff_range=tuple(bias_field_coeff), prob=bias_field_prob),
            RandScaleIntensityd(image_key, factors=intensity, prob=intensity_prob),
        ]
    )


def get_volume_augmentation(
    keys: Sequence[Hashable] = (IMAGE, LABEL),
    image_key: Hashable = IMAGE,
    prob: float = 0.5,
    rotate_degrees: Sequence[float] = (15.0, 5.0, 5.0),
    scale: float = 0.1,
    gamma: tuple[float, float] = (0.7, 1.5),
    intensity: float = 0.1,
    intensity_prob: float = 0.3,
    spatial_size: Sequence[int] = (48, 64, 64),
    mirror_prob: float = 0.0,
) -> Compose:
    """The 3D counterpart of :func:`get_plane_augmentation`, for whole ROI volumes and their labels.

    1. ``RandAffined`` (probability ``prob``): rotation within ±``rotate_degrees`` about the x, y and z axes
       (RAS; the default turns mostly within the sagittal plane, as the 2D recipe does) and scaling within
       ±``scale`` per axis about the centre; bilinear for the image, nearest for the label, zeros outside;
    2. ``RandFlipd`` (``mirror_prob``; off by default): left-right mirroring (along x), which turns a left
       hippocampus into a right one;
    3. ``RandAdjustContrastd`` (``intensity_prob``): gamma in ``gamma`` on the image;
    4. ``RandScaleIntensityd`` (``intensity_prob``): image times ``1 + U(-intensity, intensity)``.

    Args:
        keys, image_key, prob, scale, gamma, intensity, intensity_prob, mirror_prob: as above.
        rotate_degrees: largest rotation about x, y and z, in degrees.
        spatial_size: the volumes' ``(X, Y, Z)`` in voxels (the sampling grid is cached for it).

    Shapes: ``{key: (C, X, Y, Z)}`` -> same shapes (the label stays integer-valued).
    """
    modes = tuple("nearest" if key != image_key else "bilinear" for key in keys)
    return Compose(
        [
            RandAffined(
                keys, prob=prob, rotate_range=tuple(math.radians(d) for d in rotate_degrees),
                scale_range=(scale,) * 3, mode=modes, padding_mode="zeros", spatial_size=tuple(spatial_size),
                cache_grid=True,
            ),
            RandFlipd(keys, prob=mirror_prob, spatial_axis=0),
            RandAdjustContrastd(image_key, prob=intensity_prob, gamma=gamma),
            RandScaleIntensityd(image_key, factors=intensity, prob=intensity_prob),
        ]
    )
