"""Tests of hippogan.transforms.augmentation: label values kept, geometry shared by image and label, seeding."""

from __future__ import annotations

import pytest
import torch
from monai.data import set_track_meta

from hippogan.transforms.augmentation import get_plane_augmentation, get_volume_augmentation
from hippogan.transforms.keys import IMAGE, LABEL


def _plane() -> dict[str, torch.Tensor]:
    label = torch.zeros(1, 64, 64)
    label[0, 20:44, 24:40] = 1.0
    label[0, 32:44, 24:40] = 2.0
    return {IMAGE: label / 2.0, LABEL: label}  # the image is the label, so both must move alike


@pytest.mark.parametrize(
    "geometry", [{"prob": 1.0}, {"prob": 0.0, "elastic_prob": 1.0}], ids=["affine", "elastic"]
)
def test_augmentation_keeps_label_values_and_moves_image_and_label_together(geometry: dict) -> None:
    set_track_meta(False)
    try:
        aug = get_plane_augmentation(intensity_prob=0.0, **geometry)
        aug.set_random_state(0)
        moved = 0
        for _ in range(10):
            out = aug(_plane())
            assert out[IMAGE].shape == out[LABEL].shape == (1, 64, 64)
            assert set(out[LABEL].unique().tolist()) <= {0.0, 1.0, 2.0}
            moved += int(not torch.equal(out[LABEL], _plane()[LABEL]))
            # where the bilinear image is confidently inside/outside, the nearest label agrees
            assert torch.all(out[LABEL][out[IMAGE] > 0.9] == 2.0)
            assert torch.all(out[LABEL][out[IMAGE] < 0.05] == 0.0)
        assert moved >= 8
    finally:
        set_track_meta(True)


def test_augmentation_is_seeded_and_off_at_zero_probability() -> None:
    a, b = get_plane_augmentation(), get_plane_augmentation()
    a.set_random_state(3)
    b.set_random_state(3)
    for _ in range(5):
        out_a, out_b = a(_plane()), b(_plane())
        assert torch.equal(torch.as_tensor(out_a[IMAGE]), torch.as_tensor(out_b[IMAGE]))
        assert torch.equal(torch.as_tensor(out_a[LABEL]), torch.as_tensor(out_b[LABEL]))
    off = get_plane_augmentation(prob=0.0, intensity_prob=0.0)
    out = off(_plane())
    torch.testing.assert_close(torch.as_tensor(out[IMAGE]), _plane()[IMAGE])
    assert torch.equal(torch.as_tensor(out[LABEL]), _plane()[LABEL])


def test_bias_field_changes_the_image_smoothly_and_leaves_the_label() -> None:
    aug = get_plane_augmentation(prob=0.0, intensity_prob=0.0, bias_field_prob=1.0)
    aug.set_random_state(0)
    plane = _plane()
    plane[IMAGE] = torch.full((1, 64, 64), 0.5)
    out = aug(plane)
    assert torch.equal(torch.as_tensor(out[LABEL]), plane[LABEL])
    field = torch.as_tensor(out[IMAGE]) / 0.5
    assert field.std() > 0.01  # a field, not a constant
    for step in (field[:, 1:] / field[:, :-1], field[:, :, 1:] / field[:, :, :-1]):
        assert (step - 1).abs().max() < 0.1  # smooth: under 10% from one pixel to the next


def _volume() -> dict[str, torch.Tensor]:
    label = torch.zeros(1, 32, 64, 64)
    label[0, 8:24, 16:48, 20:44] = 1.0
    label[0, 8:24, 32:48, 20:44] = 2.0
    label[0, 8:12] *= 0  # not symmetric in x, so a mirror shows
    return {IMAGE: label / 2.0, LABEL: label}


def test_volume_augmentation_moves_image_and_label_together_and_mirrors_on_request() -> None:
    aug = get_volume_augmentation(prob=1.0, intensity_prob=0.0, spatial_size=(32, 64, 64))
    aug.set_random_state(0)
    for _ in range(3):
        out = aug(_volume())
        assert out[IMAGE].shape == out[LABEL].shape == (1, 32, 64, 64)
        assert set(out[LABEL].unique().tolist()) <= {0.0, 1.0, 2.0}
        assert not torch.equal(torch.as_tensor(out[LABEL]), _volume()[LABEL])
        assert torch.all(out[LABEL][out[IMAGE] > 0.9] == 2.0)
    mirror = get_volume_augmentation(prob=0.0, intensity_prob=0.0, mirror_prob=1.0, spatial_size=(32, 64, 64))
    out = mirror(_volume())
    assert torch.equal(torch.as_tensor(out[LABEL]), _volume()[LABEL].flip(1))
    off = get_volume_augmentation(prob=0.0, intensity_prob=0.0, spatial_size=(32, 64, 64))
    assert torch.equal(torch.as_tensor(off(_volume())[LABEL]), _volume()[LABEL])
