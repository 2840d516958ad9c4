"""The pre-/post-processing chains on real scans: MSD crops, reoriented and resampled copies, DICOM series."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import RandomizableTrait, Transform
from nibabel.processing import resample_from_to, vox2out_vox

from hippogan.transforms import (
    IMAGE,
    LABEL,
    PRED,
    SIDE,
    SitkDicomSeriesReader,
    get_loading,
    get_postprocessing,
    get_preprocessing,
    scan_loader,
)

N_CASES = 5
ROI_SHAPE = (1, 48, 64, 64)


@pytest.fixture(scope="module")
def msd_cases(msd_dir: Path) -> list[dict[str, str]]:
    """The first ``N_CASES`` MSD cases as ``{"image": path, "label": path}`` (the first one is uint8)."""
    images = sorted((msd_dir / "imagesTr").glob("hippocampus_*.nii.gz"))[:N_CASES]
    return [{IMAGE: str(p), LABEL: str(msd_dir / "labelsTr" / p.name)} for p in images]


@pytest.fixture(scope="module")
def chains() -> tuple:
    """The precropped training chain and its label-inverting post-processing (no argmax: labels in)."""
    pre = get_preprocessing(mode="precropped", with_label=True)
    return pre, get_postprocessing(pre, argmax=False)


def _round_trip(pre, post, case: dict[str, str]) -> tuple[dict, torch.Tensor]:
    """Pre-process ``case``, take its ROI label as the prediction and invert it to the input grid."""
    sample = pre(case)
    sample[PRED] = sample[LABEL].clone()
    return sample, post(sample)[PRED]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize("index", range(N_CASES))
def test_msd_round_trip_exact(msd_cases, chains, index):
    pre, post = chains
    label = nib.load(msd_cases[index][LABEL])
    sample, inverted = _round_trip(pre, post, msd_cases[index])
    assert sample[IMAGE].shape == ROI_SHAPE and sample[LABEL].shape == ROI_SHAPE
    assert 0.0 <= float(sample[IMAGE].min()) and float(sample[IMAGE].max()) <= 1.0
    assert set(torch.unique(sample[LABEL]).tolist()) == {0.0, 1.0, 2.0}
    assert sample[SIDE] == "unknown"
    assert inverted.shape == (1, *label.shape)
    np.testing.assert_array_equal(inverted[0].numpy(), np.asarray(label.dataobj))
    np.testing.assert_allclose(inverted.affine.numpy(), label.affine)


def test_reoriented_scan_round_trip_exact(msd_cases, chains, tmp_path):
    """An LPS copy gives the same ROI as the RAS original, and its label comes back exactly in LPS."""
    pre, post = chains
    axcodes2ornt = nib.orientations.axcodes2ornt
    ras_to_lps = nib.orientations.ornt_transform(axcodes2ornt("RAS"), axcodes2ornt("LPS"))
    case = {}
    for key in (IMAGE, LABEL):
        path = tmp_path / f"{key}_lps.nii.gz"
        nib.save(nib.load(msd_cases[0][key]).as_reoriented(ras_to_lps), path)
        case[key] = str(path)
    label = nib.load(case[LABEL])
    assert nib.aff2axcodes(label.affine) == ("L", "P", "S")
    sample, inverted = _round_trip(pre, post, case)
    reference = pre(msd_cases[0])
    torch.testing.assert_close(sample[IMAGE].as_tensor(), reference[IMAGE].as_tensor())
    np.testing.assert_array_equal(inverted[0].numpy(), np.asarray(label.dataobj))
    np.testing.assert_allclose(inverted.affine.numpy(), label.affine)


@pytest.mark.parametrize(
    "voxel_size, shift_mm, min_dice",
    [
        ((0.8, 0.8, 0.8), 0.0, 0.95),
        ((1.2, 1.2, 1.5), 0.0, 0.95),
        ((1.2, 1.2, 1.5), 0.3, 0.95),
        # finer than 1 mm and off the 1 mm lattice: nearest resampling to 1 mm and back loses detail
        ((0.8, 0.8, 0.8), 0.3, 0.90),
    ],
)
def test_resampled_scan_round_trip(msd_cases, chains, tmp_path, voxel_size, shift_mm, min_dice):
    """A scan at another spacing: the inverted label has the input's shape and affine and matches its label.

    The copy is resampled from the real 1 mm case (image linear, label nearest), optionally with its grid
    shifted by ``shift_mm``; the round trip goes through the pipeline's own 1 mm grid, so it is compared,
    per class, with the copy's own label on the copy's grid.
    """
    pre, post = chains
    case = {}
    for key, order in ((IMAGE, 1), (LABEL, 0)):
        src = nib.load(msd_cases[1][key])
        shape, affine = vox2out_vox(src, voxel_sizes=voxel_size)
        affine[:3, 3] += shift_mm
        resampled = resample_from_to(src, (shape, affine), order=order)
        path = tmp_path / f"{key}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(resampled.dataobj, dtype=np.float32), affine), path)
        case[key] = str(path)
    label = nib.load(case[LABEL])
    labels = np.asarray(label.dataobj)
    _, inverted = _round_trip(pre, post, case)
    assert inverted.shape == (1, *label.shape)
    np.testing.assert_allclose(inverted.affine.numpy(), label.affine, atol=1e-6)
    for value in (1, 2):
        assert _dice(inverted[0].numpy() == value, labels == value) >= min_dice


@pytest.mark.parametrize("index", range(3))
def test_dicom_series_loads_ras_1mm(dicom_dir, index):
    """Each shared series: RAS, 1 mm, SimpleITK's own shape and voxels; the ROI inverts to its grid."""
    import SimpleITK as sitk

    folder = sorted(p for p in dicom_dir.iterdir() if p.is_dir())[index]
    reference = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    raw = scan_loader(IMAGE)({IMAGE: str(folder)})[IMAGE]
    loaded = get_loading(with_label=False)({IMAGE: str(folder)})[IMAGE]
    assert tuple(raw.shape) == reference.GetSize() == tuple(loaded.shape[1:])
    assert "".join(nib.aff2axcodes(loaded.affine.numpy())) == "RAS"
    np.testing.assert_allclose(loaded.pixdim.numpy(), 1.0)
    np.testing.assert_array_equal(raw.numpy(), sitk.GetArrayFromImage(reference).transpose(2, 1, 0))
    canonical = nib.orientations.apply_orientation(raw.numpy(), nib.io_orientation(raw.affine.numpy()))
    np.testing.assert_array_equal(loaded[0].numpy(), canonical - canonical.min())  # CheckScand: minimum -> 0

    pre = get_preprocessing(with_label=False)
    sample = pre({IMAGE: str(folder)})
    assert sample[IMAGE].shape == ROI_SHAPE
    sample[PRED] = torch.ones(ROI_SHAPE)
    inverted = get_postprocessing(pre, argmax=False)(sample)[PRED]
    assert tuple(inverted.shape[1:]) == reference.GetSize()
    np.testing.assert_allclose(inverted.affine.numpy(), raw.affine.numpy())


def test_dicom_reader_rejects_bad_folders(tmp_path):
    reader = SitkDicomSeriesReader()
    with pytest.raises(ValueError, match="no DICOM series"):
        reader.read(tmp_path)
    (tmp_path / "x.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="not a folder"):
        reader.read(tmp_path / "x.nii.gz")
    assert reader.verify_suffix(tmp_path) and not reader.verify_suffix(tmp_path / "x.nii.gz")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "axial"}, "unknown mode"),
        ({"roi_size": (64, 64)}, "roi_size"),
        ({"percentiles": (0.5,)}, "percentiles"),
        ({"pixdim": (1.0, 1.0)}, "pixdim"),
    ],
)
def test_get_preprocessing_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_preprocessing(**kwargs)


@pytest.mark.parametrize("mode", ["precropped", "whole_brain"])
def test_preprocessing_is_fully_cacheable(mode):
    """No step is random or a nested Compose, so CacheDataset caches the whole chain."""
    pre = get_preprocessing(mode=mode, mirror=True)
    assert pre.get_index_of_first(lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform)) is None
