"""The 2D views: SliceInferer over the ROI for inference (sagittal, coronal, axial), padding as in training,
volume <-> plane reshapes."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SimpleInferer, SliceInferer

from hippogan.pipeline.bundle_training import PlaneSliceDataset
from hippogan.transforms import ensemble_inferer, pad_plane, plane_inferer, sagittal_to_volume, volume_to_sagittal

ROI = (48, 64, 64)


def test_slice_inferer_runs_a_2d_net_over_sagittal_planes():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, kernel_size=3, padding=1)
    volume = MetaTensor(torch.rand(1, 1, *ROI))
    with torch.no_grad():
        out = plane_inferer()(volume, net)
        per_plane = torch.stack([net(volume.as_tensor()[:, :, x]) for x in range(ROI[0])], dim=2)
    assert out.shape == (1, 3, *ROI)
    torch.testing.assert_close(out.as_tensor() if isinstance(out, MetaTensor) else out, per_plane)


class _Recorder(torch.nn.Module):
    """Records the planes it is given and returns them: what the inferer feeds the network."""

    def __init__(self) -> None:
        super().__init__()
        self.planes = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.planes += list(x.as_tensor() if isinstance(x, MetaTensor) else x)
        return x


@pytest.mark.parametrize("view, axis", [("sagittal", 0), ("coronal", 1), ("axial", 2)])
def test_training_planes_are_the_planes_inference_feeds_the_network(view, axis):
    """PlaneSliceDataset pads each 48x64 coronal/axial plane as the sliding window does at inference."""
    torch.manual_seed(0)
    image = torch.rand(1, *ROI) + 0.1  # no empty plane
    label = (torch.rand(1, *ROI) > 0.5).float()
    recorder = _Recorder()
    with torch.no_grad():
        out = plane_inferer(view=view, sw_batch_size=200)(MetaTensor(image[None]), recorder)
    torch.testing.assert_close(torch.as_tensor(out)[0], image)  # cropped back to the ROI
    dataset = PlaneSliceDataset([{"image": image, "label": label}], empty_fraction=1.0, view=view)
    assert len(dataset) == len(recorder.planes) == ROI[axis]
    for index in range(len(dataset)):
        plane = dataset[index]["image"]
        assert plane.shape == (1, 64, 64)
        torch.testing.assert_close(plane, recorder.planes[index])
        torch.testing.assert_close(dataset[index]["label"], pad_plane(label.select(axis + 1, index), (64, 64)))


def test_views_reject_unknown_names_and_oversized_planes():
    with pytest.raises(ValueError, match="sagittal, coronal, axial"):
        plane_inferer(view="oblique")
    with pytest.raises(ValueError, match="larger than the window"):
        pad_plane(torch.zeros(1, 70, 64), (64, 64))


def test_ensemble_inferer_slices_one_view_and_leaves_several_to_the_ensemble():
    one = ensemble_inferer(["coronal", "coronal"], sw_batch_size=7)
    assert isinstance(one, SliceInferer) and one.spatial_dim == 1 and one.sw_batch_size == 7
    assert isinstance(ensemble_inferer(["sagittal", "coronal"]), SimpleInferer)
    assert isinstance(ensemble_inferer(["volume"]), SimpleInferer)  # a 3D generator: the whole ROI
    with pytest.raises(ValueError, match="sagittal, coronal, axial"):
        ensemble_inferer(["sagittal", "oblique"])
    with pytest.raises(ValueError, match="the view of each generator"):
        ensemble_inferer([])


def test_volume_sagittal_reshapes_round_trip():
    volume = torch.rand(2, 1, 4, 6, 5)
    planes = volume_to_sagittal(volume)
    assert planes.shape == (8, 1, 6, 5)
    assert torch.equal(planes[5], volume[1, :, 1])
    assert torch.equal(sagittal_to_volume(planes, batch_size=2), volume)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: plane_inferer(roi_size=(64, 64, 64)), "roi_size"),
        (lambda: volume_to_sagittal(torch.rand(1, 2, 2, 2)), "B, C, X, Y, Z"),
        (lambda: sagittal_to_volume(torch.rand(5, 1, 2, 2), batch_size=2), "B \\* X"),
    ],
)
def test_slicing_rejects_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
