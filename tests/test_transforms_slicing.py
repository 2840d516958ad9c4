"""The sagittal 2D view: SliceInferer over the ROI for inference, plane batches for training."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from hippogan.transforms import IMAGE, LABEL, sagittal_inferer, sagittal_slices, sagittal_to_volume, volume_to_sagittal

ROI = (48, 64, 64)
TINY = torch.rand(1, 1, 2, 2, 2)


def test_slice_inferer_runs_a_2d_net_over_sagittal_planes():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, kernel_size=3, padding=1)
    volume = MetaTensor(torch.rand(1, 1, *ROI))
    with torch.no_grad():
        out = sagittal_inferer()(volume, net)
        per_plane = torch.stack([net(volume.as_tensor()[:, :, x]) for x in range(ROI[0])], dim=2)
    assert out.shape == (1, 3, *ROI)
    torch.testing.assert_close(out.as_tensor() if isinstance(out, MetaTensor) else out, per_plane)


def test_volume_sagittal_reshapes_round_trip():
    volume = torch.rand(2, 1, 4, 6, 5)
    planes = volume_to_sagittal(volume)
    assert planes.shape == (8, 1, 6, 5)
    assert torch.equal(planes[5], volume[1, :, 1])
    assert torch.equal(sagittal_to_volume(planes, batch_size=2), volume)


@pytest.mark.parametrize("empty_fraction, expected", [(None, 8), (0.0, 3), (1.0, 8), (0.4, 5)])
def test_sagittal_slices_keeps_labelled_planes(empty_fraction, expected):
    image, label = torch.rand(2, 1, 4, 6, 5), torch.zeros(2, 1, 4, 6, 5)
    label[0, 0, 1, 2, 2] = 1
    label[1, 0, 0, 3, 3] = 2
    label[1, 0, 3, 1, 1] = 1
    for batch in ({IMAGE: image, LABEL: label}, [{IMAGE: image[i], LABEL: label[i]} for i in range(2)]):
        out = sagittal_slices(batch, empty_fraction=empty_fraction, generator=torch.Generator().manual_seed(0))
        assert out[IMAGE].shape == (expected, 1, 6, 5) and out[LABEL].shape == (expected, 1, 6, 5)
        planes = volume_to_sagittal(image)
        assert all(any(torch.equal(p, q) for q in planes) for p in out[IMAGE])
        assert int((out[LABEL].flatten(1) > 0).any(1).sum()) == 3


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: sagittal_inferer(roi_size=(64, 64, 64)), "roi_size"),
        (lambda: sagittal_slices({IMAGE: TINY}), "not in the batch"),
        (lambda: sagittal_slices({IMAGE: TINY, LABEL: TINY}, empty_fraction=2), "empty_fraction"),
        (lambda: volume_to_sagittal(torch.rand(1, 2, 2, 2)), "B, C, X, Y, Z"),
        (lambda: sagittal_to_volume(torch.rand(5, 1, 2, 2), batch_size=2), "B \\* X"),
    ],
)
def test_slicing_rejects_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
