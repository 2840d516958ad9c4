"""The sagittal 2D view: SliceInferer over the ROI for inference, volume <-> plane reshapes."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from hippogan.transforms import sagittal_inferer, sagittal_to_volume, volume_to_sagittal

ROI = (48, 64, 64)


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


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: sagittal_inferer(roi_size=(64, 64, 64)), "roi_size"),
        (lambda: volume_to_sagittal(torch.rand(1, 2, 2, 2)), "B, C, X, Y, Z"),
        (lambda: sagittal_to_volume(torch.rand(5, 1, 2, 2), batch_size=2), "B \\* X"),
    ],
)
def test_slicing_rejects_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
