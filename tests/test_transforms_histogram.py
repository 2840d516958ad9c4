"""HistogramStandardize(d): nonzero percentiles land on the landmarks, zeros stay, crops pass, bad arguments fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from hippogan.transforms import (
    DEFAULT_PERCENTILES,
    IMAGE,
    SIDE,
    HistogramStandardize,
    HistogramStandardized,
    histogram_landmarks,
)

LANDMARKS = np.linspace(0.0, 1.0, len(DEFAULT_PERCENTILES)) ** 1.5  # any increasing curve


def _image(seed: int = 0, scale: float = 1.0) -> MetaTensor:
    rng = np.random.default_rng(seed)
    array = rng.gamma(2.0, 50.0, size=(1, 20, 24, 16)).astype(np.float32) * scale
    array[:, :3] = 0  # padding
    return MetaTensor(torch.as_tensor(array), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))


def test_percentiles_land_on_landmarks_and_zeros_stay():
    img = _image()
    out = HistogramStandardize(LANDMARKS)(img)
    assert isinstance(out, MetaTensor) and out.dtype == img.dtype and out.shape == img.shape
    np.testing.assert_array_equal(out.affine.numpy(), img.affine.numpy())
    assert torch.all(out[:, :3] == 0)
    values = out.numpy()[img.numpy() != 0]
    np.testing.assert_allclose(np.percentile(values, DEFAULT_PERCENTILES), LANDMARKS, atol=0.02)


def test_contrast_and_scale_no_longer_matter():
    """The same anatomy at another scale and gamma ends with the same histogram."""
    img = _image()
    other = MetaTensor(img.as_tensor() ** 0.7 * 1000.0, affine=img.affine)
    a, b = (HistogramStandardize(LANDMARKS)(x).numpy() for x in (img, other))
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_dict_only_touches_the_given_sides():
    transform = HistogramStandardized(IMAGE, landmarks=LANDMARKS)
    img = _image()
    crop = transform({IMAGE: img, SIDE: "unknown"})
    assert crop[IMAGE] is img
    left = transform({IMAGE: img, SIDE: "left"})
    assert not torch.equal(left[IMAGE], img)
    every = HistogramStandardized(IMAGE, landmarks=LANDMARKS, sides=None)({IMAGE: img})
    assert torch.equal(every[IMAGE], left[IMAGE])


def test_all_zero_and_flat_images():
    zeros = torch.zeros(1, 4, 4, 4)
    assert torch.equal(HistogramStandardize(LANDMARKS)(zeros), zeros)
    flat = torch.full((1, 4, 4, 4), 7.0)
    out = HistogramStandardize(LANDMARKS)(flat)
    assert torch.isfinite(out).all()


def test_landmarks_are_mean_percentiles():
    images = [_image(seed) for seed in range(3)]
    expected = np.mean([np.percentile(x.numpy()[x.numpy() != 0], DEFAULT_PERCENTILES) for x in images], axis=0)
    np.testing.assert_allclose(histogram_landmarks(images), expected, atol=1e-4)
    with pytest.raises(ValueError, match="no image"):
        histogram_landmarks([torch.zeros(1, 2, 2, 2)])


@pytest.mark.parametrize(
    "landmarks, percentiles, match",
    [
        ([0.0, 1.0], (1, 50, 99), "one length"),
        ([1.0, 0.0], (1, 99), "must not decrease"),
        ([0.0, 1.0], (99, 1), "must increase"),
        ([0.0, 1.0], (-1, 99), r"\[0, 100\]"),
    ],
)
def test_rejects_bad_arguments(landmarks, percentiles, match):
    with pytest.raises(ValueError, match=match):
        HistogramStandardize(landmarks, percentiles)
