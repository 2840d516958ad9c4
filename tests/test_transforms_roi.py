"""The hippocampal ROI crop, mirroring and intensity scaling: synthetic volumes and the MNI152 template."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor, decollate_batch, list_data_collate

from hippogan.transforms import (
    DEFAULT_BOX_SIZE,
    DEFAULT_LEFT_CENTER,
    DEFAULT_RIGHT_CENTER,
    IMAGE,
    LABEL,
    PRED,
    SIDE,
    HippocampalROICrop,
    HippocampalROICropd,
    MirrorSided,
    ScaleIntensityRangePercentilesNonzero,
    get_postprocessing,
    get_preprocessing,
    merge_sides,
    plane_inferer,
    world_box_to_voxels,
)

ROI = (48, 64, 64)


@pytest.mark.parametrize("shape", [(35, 51, 35), (43, 59, 47), (50, 70, 30), (48, 64, 64)])
def test_precropped_round_trip(shape):
    """Pad or crop, centred, to the ROI; the inverse restores shape and affine, exact where kept."""
    affine = torch.tensor([[1.0, 0, 0, 3], [0, 1, 0, -4], [0, 0, 1, 5], [0, 0, 0, 1]], dtype=torch.float64)
    img = MetaTensor(torch.rand(1, *shape) + 0.1, affine=affine)
    crop = HippocampalROICrop(mode="precropped")
    out = crop(img)
    assert out.shape == (1, *ROI)
    assert len(out.applied_operations) == 1
    if all(s <= r for s, r in zip(shape, ROI)):
        assert torch.isclose(out.sum(), img.sum())  # nothing cut, only zeros added
    back = crop.inverse(out)
    assert back.shape == img.shape and torch.equal(back.affine, img.affine)
    inside = back != 0
    assert torch.equal(back[inside], img[inside])
    assert int(inside.sum()) == int(np.prod(np.minimum(shape, ROI)))
    assert not back.applied_operations


def test_roi_affine_maps_to_input_world():
    img = MetaTensor(torch.arange(30 * 40 * 20, dtype=torch.float32).reshape(1, 30, 40, 20) + 1)
    out = HippocampalROICrop()(img)
    ijk = np.array([10, 20, 30, 1.0])  # an ROI voxel inside the content
    x, y, z = np.rint(out.affine.numpy() @ ijk)[:3].astype(int)
    assert out[0, 10, 20, 30] == img[0, x, y, z]


@pytest.fixture(scope="module")
def mni(tmp_path_factory) -> dict:
    """nilearn's MNI152 T1 template (1 mm) and a random {0, 1, 2} label on its grid, as NIfTI in tmp."""
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=1)
    folder = tmp_path_factory.mktemp("mni")
    labels = np.random.default_rng(0).integers(0, 3, size=template.shape, dtype=np.uint8)
    nib.save(template, folder / "mni152.nii")
    nib.save(nib.Nifti1Image(labels, template.affine), folder / "label.nii")
    return {
        IMAGE: str(folder / "mni152.nii"),
        LABEL: str(folder / "label.nii"),
        "template": template.get_fdata(),
        "labels": labels,
        "affine": template.affine,
    }


def test_whole_brain_boxes_land_on_hippocampi(mni):
    samples = get_preprocessing(mode="whole_brain", with_label=False)({IMAGE: mni[IMAGE]})
    assert [s[SIDE] for s in samples] == ["left", "right"]
    template = mni["template"]
    for sample, center in zip(samples, (DEFAULT_LEFT_CENTER, DEFAULT_RIGHT_CENTER)):
        assert sample[IMAGE].shape == (1, *ROI)
        roi_center = sample[IMAGE].affine.numpy() @ np.append((np.asarray(ROI) - 1) / 2.0, 1.0)
        np.testing.assert_allclose(roi_center[:3], center, atol=1.5)
        start, end = world_box_to_voxels(mni["affine"], center, DEFAULT_BOX_SIZE)
        box = template[tuple(slice(s, e) for s, e in zip(start, end))]
        assert box.shape == tuple(int(b) for b in DEFAULT_BOX_SIZE)
        assert (box > 0.2).mean() > 0.95  # brain tissue, not background
        assert box.mean() > 0.9 * template[template > 0].mean()


@pytest.mark.parametrize("mirror", [False, True])
def test_whole_brain_round_trip_exact_inside_boxes(mni, mirror):
    """Both sides, inverted and merged: the input label inside each box, zero outside."""
    pre = get_preprocessing(mode="whole_brain", with_label=True, mirror=mirror)
    post = get_postprocessing(pre, argmax=False)
    samples = pre({IMAGE: mni[IMAGE], LABEL: mni[LABEL]})
    assert len(samples) == 2
    if mirror:
        plain = get_preprocessing(mode="whole_brain", with_label=True)({IMAGE: mni[IMAGE], LABEL: mni[LABEL]})
        assert torch.equal(samples[0][LABEL].as_tensor(), torch.flip(plain[0][LABEL].as_tensor(), dims=[1]))
        assert torch.equal(samples[1][LABEL].as_tensor(), plain[1][LABEL].as_tensor())
    inverted = []
    for sample in samples:
        sample[PRED] = sample[LABEL].clone()
        inverted.append(post(sample))
    merged = merge_sides(inverted, key=PRED)
    expected = np.zeros_like(mni["labels"])
    for center in (DEFAULT_LEFT_CENTER, DEFAULT_RIGHT_CENTER):
        box = tuple(slice(s, e) for s, e in zip(*world_box_to_voxels(mni["affine"], center, DEFAULT_BOX_SIZE)))
        expected[box] = mni["labels"][box]
    assert merged.shape == (1, *expected.shape)
    np.testing.assert_array_equal(merged[0].numpy(), expected)
    np.testing.assert_allclose(merged.affine.numpy(), mni["affine"])


def test_whole_brain_inference_path(mni):
    """collate -> SliceInferer (2D net) -> decollate -> argmax + Invertd -> merge_sides: class 1 fills the boxes."""
    net = torch.nn.Conv2d(1, 3, kernel_size=1)
    torch.nn.init.zeros_(net.weight)
    with torch.no_grad():
        net.bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
    pre = get_preprocessing(mode="whole_brain", with_label=False, mirror=True)
    batch = list_data_collate(pre({IMAGE: mni[IMAGE]}))
    with torch.no_grad():
        batch[PRED] = plane_inferer()(batch[IMAGE], net)
    post = get_postprocessing(pre)
    merged = merge_sides([post(sample) for sample in decollate_batch(batch)])
    expected = np.zeros(mni["labels"].shape, dtype=np.float32)
    for center in (DEFAULT_LEFT_CENTER, DEFAULT_RIGHT_CENTER):
        expected[tuple(slice(s, e) for s, e in zip(*world_box_to_voxels(mni["affine"], center, DEFAULT_BOX_SIZE)))] = 1
    np.testing.assert_array_equal(merged[0].numpy(), expected)


@pytest.mark.parametrize("side, flipped", [("left", True), ("right", False), ("unknown", False)])
def test_mirror_round_trip(side, flipped):
    affine = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    data = {IMAGE: MetaTensor(torch.rand(1, 6, 5, 4), affine=affine), LABEL: MetaTensor(torch.rand(1, 6, 5, 4))}
    data[SIDE] = side
    mirror = MirrorSided((IMAGE, LABEL), mirror_side="left")
    out = mirror(data)
    for key in (IMAGE, LABEL):
        expected = torch.flip(data[key].as_tensor(), dims=[1]) if flipped else data[key].as_tensor()
        assert torch.equal(out[key].as_tensor(), expected)
    back = mirror.inverse(out)
    for key in (IMAGE, LABEL):
        assert torch.equal(back[key].as_tensor(), data[key].as_tensor())
        assert torch.equal(back[key].affine, data[key].affine)
        assert not back[key].applied_operations


def test_dict_crop_keeps_keys_aligned_and_tags_side():
    data = {IMAGE: MetaTensor(torch.rand(1, 30, 40, 20)), LABEL: MetaTensor(torch.ones(1, 30, 40, 20)), "id": "case"}
    out = HippocampalROICropd((IMAGE, LABEL))(data)
    assert out[SIDE] == "unknown" and out["id"] == "case"
    assert torch.equal(out[IMAGE] != 0, out[LABEL] != 0)
    assert HippocampalROICropd(IMAGE)({**data, SIDE: "left"})[SIDE] == "left"


@pytest.mark.parametrize(
    "scale, dtype",
    [(255.0, torch.uint8), (3000.0, torch.int16), (100.0, torch.float32), (1.7e6, torch.float32)],
)
def test_percentile_scaling_is_range_independent(scale, dtype):
    """Scanner ranges from uint8 to float maxima of 1.7 million end in [0, 1]; background stays 0."""
    base = torch.rand(1, 20, 24, 16, generator=torch.Generator().manual_seed(0))
    base[:, :4] = 0
    img = (base * scale).to(dtype)
    out = ScaleIntensityRangePercentilesNonzero()(img)
    assert out.dtype == torch.float32 and float(out.min()) == 0.0 and float(out.max()) == 1.0
    assert torch.all(out[:, :4] == 0)
    reference = ScaleIntensityRangePercentilesNonzero()(base)
    assert torch.allclose(out, reference, atol=0.01)
    top = (out[:, 4:] == 1).float().mean()
    assert 0.002 < float(top) < 0.02  # about the 0.5 % above the 99.5th percentile of the nonzero voxels


def test_merge_sides_checks_inputs():
    with pytest.raises(ValueError, match="no samples"):
        merge_sides([])
    with pytest.raises(ValueError, match="shape"):
        merge_sides([{PRED: torch.zeros(1, 4, 4, 4)}, {PRED: torch.zeros(1, 4, 4, 5)}])
    with pytest.raises(ValueError, match="no key"):
        merge_sides([{IMAGE: torch.zeros(1, 4, 4, 4)}])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "axial"}, "unknown mode"),
        ({"roi_size": (64, 64)}, "roi_size must be 3"),
        ({"roi_size": (48, 64, 0)}, "roi_size must be 3 positive"),
        ({"roi_size": (48.5, 64, 64)}, "whole voxel"),
        ({"mode": "whole_brain", "box_size": (60.0, 50.0, 36.0)}, "exceeds roi_size"),
        ({"mode": "auto", "roi_size": (32, 64, 64)}, "exceeds roi_size"),
        ({"left_center": (1.0, 2.0)}, "left_center"),
    ],
)
def test_roi_crop_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HippocampalROICrop(**kwargs)
    with pytest.raises(ValueError, match=match):
        HippocampalROICropd(IMAGE, **kwargs)


def test_precropped_roi_may_be_smaller_than_the_whole_brain_box():
    """A crop-only ROI (the 3D generator's 32x64x64) does not use the whole-brain box."""
    crop = HippocampalROICrop(mode="precropped", roi_size=(32, 64, 64))
    assert crop(torch.rand(1, 35, 50, 40)).shape == (1, 32, 64, 64)


def test_whole_brain_rejects_non_ras_and_non_mni_images():
    crop = HippocampalROICrop(mode="whole_brain")
    lps_affine = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))
    lps = MetaTensor(torch.rand(1, 50, 50, 50), affine=lps_affine)
    with pytest.raises(ValueError, match="RAS"):
        crop(lps)
    far = torch.eye(4, dtype=torch.float64)
    far[:3, 3] = 500.0
    with pytest.raises(ValueError, match="outside"):
        crop(MetaTensor(torch.rand(1, 50, 50, 50), affine=far))


def test_mirror_rejects_bad_side():
    with pytest.raises(ValueError, match="mirror_side"):
        MirrorSided(IMAGE, mirror_side="top")
