"""Registration to the MNI152 template (RegisterToTemplated): real native T1s, the template moved by known
transforms, scans that cannot be registered, pass-through modes and the inverse onto the input grid."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from helpers import moved_templates
from monai.data import MetaTensor, decollate_batch, list_data_collate
from monai.transforms import Compose, EnsureChannelFirstd, Orientationd, Spacingd
from scipy import ndimage

from hippogan.transforms import (
    DEFAULT_BOX_SIZE,
    DEFAULT_LEFT_CENTER,
    DEFAULT_RIGHT_CENTER,
    IMAGE,
    PRED,
    HippocampalROICropd,
    ScaleIntensityRangePercentilesNonzerod,
    get_postprocessing,
    merge_sides,
    scan_loader,
    world_box_to_voxels,
)
from hippogan.transforms.registration import (
    ETIV_MM3,
    ETIV_SCALE,
    MIN_QUALITY,
    QUALITY_WARN,
    REGISTRATION_QUALITY,
    RegisterToTemplate,
    RegisterToTemplated,
    known_transform,
    load_template,
    resample_affine,
    simulate_acquisition,
)

pytest.importorskip("SimpleITK")

WHOLE_BRAIN_DIR = SHARED_DATA / "whole_brain_t1"
CENTERS = (DEFAULT_LEFT_CENTER, DEFAULT_RIGHT_CENTER)


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    """Register with 2 SimpleITK threads, as on the 2-core CI machine."""
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    yield
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def _chain(mode: str = "auto") -> Compose:
    """The inference pre-processing with registration right after EnsureChannelFirstd (as in the bundle)."""
    return Compose(
        [
            scan_loader(IMAGE),
            EnsureChannelFirstd(IMAGE),
            RegisterToTemplated(IMAGE, mode=mode),
            Orientationd(IMAGE, axcodes="RAS", labels=None),
            Spacingd(IMAGE, pixdim=(1.0, 1.0, 1.0), mode="bilinear"),
            HippocampalROICropd(IMAGE, mode="auto"),
            ScaleIntensityRangePercentilesNonzerod(IMAGE, lower=0.5, upper=99.5),
        ]
    )


def _boxes_on_input(pre: Compose, path: str | Path) -> tuple[list[dict], MetaTensor]:
    """Pre-process ``path``, predict 1 in every ROI voxel, invert (Invertd, nearest) and merge: the boxes' footprint
    on the input grid."""
    samples = pre({IMAGE: str(path)})
    samples = samples if isinstance(samples, list) else [samples]
    batch = list_data_collate(samples)
    batch[PRED] = torch.ones_like(batch[IMAGE])
    post = get_postprocessing(pre, argmax=False)
    inverted = [post(sample) for sample in decollate_batch(batch)]
    return samples, merge_sides(inverted) if len(inverted) > 1 else inverted[0][PRED]


def _mni_from_subject(sample: dict) -> np.ndarray:
    op = next(op for op in sample[IMAGE].applied_operations if op["class"] == "RegisterToTemplate")
    return np.asarray(op["extra_info"]["mni_from_subject"])



def _template_boxes_on(known, affine, shape) -> np.ndarray:
    """The two boxes exactly as HippocampalROICrop cuts them from the template grid, moved by ``known`` onto the grid
    ``(affine, shape)`` (nearest): where the boxes truly are."""
    tpl = load_template()
    boxes = np.zeros(tpl.array.shape, dtype=np.float32)
    for center in CENTERS:
        start, end = world_box_to_voxels(tpl.affine, center, DEFAULT_BOX_SIZE)
        boxes[tuple(slice(s, e) for s, e in zip(start, end))] = 1
    out_to_in = np.linalg.inv(tpl.affine) @ np.linalg.inv(known) @ affine
    return resample_affine(torch.as_tensor(boxes)[None], out_to_in, shape, mode="nearest")[0].numpy() > 0.5


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _save(tmp_path: Path, name: str, array: np.ndarray, affine: np.ndarray) -> Path:
    path = tmp_path / f"{name}.nii"
    nib.save(nib.Nifti1Image(array.astype(np.float32), affine), path)
    return path


# ---- constructor, resampling, pass-through (fast) ----


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "whole_brain"},
        {"min_quality": 1.5},
        {"scale_range": (2.0, 0.5)},
        {"scale_range": (0.0, 2.0)},
        {"min_box_coverage": 1.2},
        {"template_icv_mm3": -1.0},
        {"num_threads": 0},
        {"box_size": (36.0, 50.0)},
    ],
)
def test_constructor_rejects(kwargs):
    with pytest.raises(ValueError, match="RegisterToTemplate"):
        RegisterToTemplate(**kwargs)


def test_dict_rejects_interp_mode():
    with pytest.raises(ValueError, match="interp_mode"):
        RegisterToTemplated(IMAGE, interp_mode="bicubic")


def test_resample_affine_matches_scipy():
    """Trilinear resampling through a voxel map agrees with scipy's affine_transform inside the field of view."""
    rng = np.random.default_rng(0)
    volume = rng.random((2, 30, 40, 25)).astype(np.float32)
    out_to_in = np.array([[1.1, 0.05, 0.0, 3.0], [0.0, 0.9, 0.1, -5.0], [0.02, 0.0, 1.0, 2.0], [0, 0, 0, 1.0]])
    out = resample_affine(torch.from_numpy(volume), out_to_in, (20, 35, 22)).numpy()
    expected = np.stack([ndimage.affine_transform(c, out_to_in, output_shape=(20, 35, 22), order=1) for c in volume])
    footprint = ndimage.affine_transform(np.ones((30, 40, 25)), out_to_in, output_shape=(20, 35, 22), order=0)
    inside = ndimage.binary_erosion(footprint > 0)
    np.testing.assert_allclose(out[:, inside], expected[:, inside], atol=1e-5)
    labels = torch.from_numpy(rng.integers(0, 3, (1, 30, 40, 25)).astype(np.float32))
    labels = resample_affine(labels, out_to_in, (20, 35, 22), "nearest")
    assert set(np.unique(labels.numpy())) <= {0.0, 1.0, 2.0}


def test_crop_passes_through_and_inverts(msd_dir, tmp_path):
    """An MSD crop (field of view < 100 mm) in mode auto: unchanged, NaN keys, Invertd lands on its grid."""
    path = sorted((msd_dir / "imagesTr").glob("*.nii.gz"))[0]
    pre = _chain("auto")
    samples, boxes = _boxes_on_input(pre, path)
    sample = samples[0]
    assert np.isnan(sample[REGISTRATION_QUALITY]) and np.isnan(sample[ETIV_SCALE]) and np.isnan(sample[ETIV_MM3])
    op = next(op for op in sample[IMAGE].applied_operations if op["class"] == "RegisterToTemplate")
    assert op["extra_info"]["registered"] is False
    original = nib.load(path)
    assert boxes.shape == (1, *original.shape)
    np.testing.assert_allclose(boxes.affine.numpy(), original.affine, atol=1e-5)


def test_precropped_mode_round_trip():
    """Mode precropped on a whole-brain-sized volume: the same tensor out, a no-op record, inverse pops it."""
    affine = torch.diag(torch.tensor([1.2, 1.0, 1.0, 1.0], dtype=torch.float64))
    img = MetaTensor(torch.rand(1, 120, 130, 110), affine=affine)
    reg = RegisterToTemplated(IMAGE, mode="precropped")
    out = reg({IMAGE: img})
    assert torch.equal(out[IMAGE].as_tensor(), img.as_tensor()) and len(out[IMAGE].applied_operations) == 1
    back = reg.inverse(out)[IMAGE]
    assert not back.applied_operations and torch.equal(back.as_tensor(), img.as_tensor())


@pytest.mark.parametrize(
    "known, aligned",
    [(known_transform(), True), (known_transform(shift_mm=(15.0, 0.0, 0.0)), False), (known_transform((15.0, 0.0, 0.0), (0.0, 10.0, 0.0)), False)],
    ids=["mni", "header_shift_15mm", "rotated_15deg_shift_10mm"],
)
def test_mni_mode_scores_alignment(known, aligned, caplog):
    """Mode mni leaves the scan as it is, but scores it against the template: a misaligned 'MNI' scan scores low."""
    tpl = load_template()
    img = MetaTensor(torch.as_tensor(tpl.array)[None], affine=torch.as_tensor(known @ tpl.affine))
    with caplog.at_level(logging.WARNING, logger="hippogan.transforms.registration"):
        out = RegisterToTemplated(IMAGE, mode="mni")({IMAGE: img})
    assert torch.equal(out[IMAGE].as_tensor(), img.as_tensor())
    assert np.isnan(out[ETIV_SCALE]) and np.isnan(out[ETIV_MM3])
    if aligned:
        assert out[REGISTRATION_QUALITY] > 0.95
    else:
        assert out[REGISTRATION_QUALITY] < MIN_QUALITY
        assert "not aligned" in caplog.text


# ---- real native T1s (skull on) ----


@pytest.mark.parametrize("name", ["chris_t1", "otsu_t1"])
def test_native_t1_registers_and_inverts(name):
    """Quality above the flag level, a plausible eTIV, the boxes' footprint back on the input grid, inside the head,
    with the box volume scaled by the registration's determinant."""
    path = WHOLE_BRAIN_DIR / f"{name}.nii.gz"
    if not path.is_file():
        pytest.skip(f"shared data absent: {path}")
    samples, boxes = _boxes_on_input(_chain("auto"), path)
    assert len(samples) == 2
    quality, scale, etiv = samples[0][REGISTRATION_QUALITY], samples[0][ETIV_SCALE], samples[0][ETIV_MM3]
    assert quality > QUALITY_WARN
    assert 0.9 < scale < 1.8 and 1.0e6 < etiv < 2.1e6  # adult heads: 1.0-2.1 litres
    original = nib.load(path)
    assert boxes.shape == (1, *original.shape)
    np.testing.assert_allclose(boxes.affine.numpy(), original.affine, atol=1e-5)
    inside = boxes[0].numpy() > 0
    voxel_mm3 = abs(np.linalg.det(original.affine[:3, :3]))
    box_mm3 = 2 * np.prod(DEFAULT_BOX_SIZE)  # MNI mm³ of both boxes
    assert inside.sum() * voxel_mm3 == pytest.approx(box_mm3 / scale, rel=0.02)
    data = original.get_fdata(dtype=np.float32)
    head = ndimage.binary_fill_holes(data > 0.2 * np.percentile(data, 99))
    assert head[inside].mean() > 0.99  # the boxes lie in the head, not in the air or the neck
    centre = original.affine @ np.append(np.argwhere(inside).mean(axis=0), 1.0)
    head_centre = original.affine @ np.append(np.argwhere(head).mean(axis=0), 1.0)
    assert np.linalg.norm(centre[:3] - head_centre[:3]) < 40.0  # near the middle of the head, not at its edge


# ---- the template moved by known transforms ----

MOVED = moved_templates()
MOVED_SLOW = {
    "identity": dict(known=known_transform()),
    "rot20": dict(known=known_transform((20.0, 0.0, 0.0))),
    "rot-20_yaw": dict(known=known_transform((0.0, 0.0, -20.0))),
    "shift30": dict(known=known_transform(shift_mm=(30.0, -30.0, 30.0))),
    "scale0.85": dict(known=known_transform(scale=(0.85, 0.85, 0.85))),
    "scale1.15": dict(known=known_transform(scale=(1.15, 1.15, 1.15))),
    "LPS": dict(known=known_transform(), axcodes="LPS"),
    "LIA": dict(known=known_transform(), axcodes="LIA"),
    "0.8mm": dict(known=known_transform(), spacing=(0.8, 0.8, 0.8)),
    "1.2x1x1mm": dict(known=known_transform(), spacing=(1.2, 1.0, 1.0)),
    "fov150": dict(known=known_transform(), fov_z=150.0),
    "intensity_x1000": dict(known=known_transform(), gain=1000.0, offset=500.0),
}


def _check_moved(case: dict, tmp_path: Path) -> None:
    known = case.pop("known")
    array, affine = simulate_acquisition(known, **case)
    path = _save(tmp_path, "moved", array, affine)
    samples, boxes = _boxes_on_input(_chain("auto"), path)
    estimated_subject_from_mni = np.linalg.inv(_mni_from_subject(samples[0]))
    for center in CENTERS:
        point = np.append(center, 1.0)
        assert np.linalg.norm((estimated_subject_from_mni @ point - known @ point)[:3]) < 2.0  # mm
    assert samples[0][ETIV_SCALE] == pytest.approx(1.0 / abs(np.linalg.det(known[:3, :3])), rel=0.05)
    assert samples[0][REGISTRATION_QUALITY] > 0.9  # the template itself, moved
    assert boxes.shape == (1, *array.shape)
    np.testing.assert_allclose(boxes.affine.numpy(), affine, atol=1e-5)
    truth = _template_boxes_on(known, affine, array.shape)
    assert _dice(boxes[0].numpy() > 0, truth) >= 0.85


@pytest.mark.parametrize("case", list(MOVED), ids=list(MOVED))
def test_moved_template_recovered(case, tmp_path):
    """Box centres within 2 mm of the known transform's, etiv_scale within 5% of its determinant, and the boxes
    inverted through Invertd agree with the known boxes (Dice >= 0.85)."""
    _check_moved(dict(MOVED[case]), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(MOVED_SLOW), ids=list(MOVED_SLOW))
def test_moved_template_recovered_one_change(case, tmp_path):
    """One change of the transform, orientation, grid, field of view or intensity at a time."""
    _check_moved(dict(MOVED_SLOW[case]), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["chris_t1", "otsu_t1"])
def test_moved_native_t1_consistent(name, tmp_path):
    """A skull-on T1 moved by a known transform (20° pitch, 30 mm, scale 0.9, LIA) registers to the same place."""
    path = WHOLE_BRAIN_DIR / f"{name}.nii.gz"
    if not path.is_file():
        pytest.skip(f"shared data absent: {path}")
    original = nib.load(path)
    data, affine = original.get_fdata(dtype=np.float32), original.affine
    reg = RegisterToTemplate(mode="register")
    first = reg.register(MetaTensor(torch.as_tensor(data)[None], affine=torch.as_tensor(affine)))
    known = known_transform((-20.0, 10.0, -10.0), (10.0, -30.0, 30.0), (0.9, 0.9, 0.9))
    linear = np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # LIA, 1 mm
    x, y, z = data.shape
    corners = np.array([[i, j, k, 1.0] for i in (0, x) for j in (0, y) for k in (0, z)]).T
    world = (known @ affine @ corners)[:3]
    moved_affine = np.eye(4)
    moved_affine[:3, :3] = linear
    moved_affine[:3, 3] = [world[0].max(), world[1].min(), world[2].max()]
    shape = np.ceil(np.abs(linear.T @ (world.max(axis=1) - world.min(axis=1)))).astype(int) + 1
    out_to_in = np.linalg.inv(affine) @ np.linalg.inv(known) @ moved_affine
    moved = resample_affine(torch.as_tensor(data)[None], out_to_in, shape)
    second = reg.register(MetaTensor(moved, affine=torch.as_tensor(moved_affine)))
    assert second.quality > QUALITY_WARN
    for center in CENTERS:
        point = np.append(center, 1.0)
        expected = known @ np.linalg.solve(first.mni_from_subject, point)
        assert np.linalg.norm((np.linalg.solve(second.mni_from_subject, point) - expected)[:3]) < 2.0
    assert second.etiv_scale == pytest.approx(first.etiv_scale / abs(np.linalg.det(known[:3, :3])), rel=0.05)


# ---- scans that cannot be registered ----


def test_noise_fails_with_reason():
    noise = torch.as_tensor(np.random.default_rng(0).random((1, 180, 220, 180), dtype=np.float32) * 100.0)
    affine = torch.as_tensor(np.array([[1.0, 0, 0, -90], [0, 1.0, 0, -110], [0, 0, 1.0, -90], [0, 0, 0, 1]]))
    img = MetaTensor(noise, affine=affine, meta={"filename_or_obj": "noise.nii.gz"})
    with pytest.raises(ValueError, match=r"noise\.nii\.gz.*quality"):
        RegisterToTemplated(IMAGE)({IMAGE: img})


def test_head_cut_above_hippocampi_fails_with_reason():
    """Only the top 40% of the template (z > 41 mm): the hippocampal boxes lie outside the field of view."""
    tpl = load_template()
    first = int(0.6 * tpl.array.shape[2])
    affine = tpl.affine.copy()
    affine[:3, 3] += affine[:3, 2] * first
    img = MetaTensor(torch.as_tensor(tpl.array[:, :, first:].copy())[None], affine=torch.as_tensor(affine))
    img.meta["filename_or_obj"] = "top40.nii.gz"
    with pytest.raises(ValueError, match=r"top40\.nii\.gz.*field of view"):
        RegisterToTemplated(IMAGE)({IMAGE: img})
