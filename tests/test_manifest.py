"""Manifests: built from real folders, folds balanced and seeded, loaded against any root, bad rows all reported."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hippogan.pipeline.cli import main
from hippogan.pipeline.manifest import (
    assign_folds,
    build_manifest,
    load_manifest,
    scan_dataset,
    select_folds,
    split_by_fold,
    write_manifest,
)
from hippogan.pipeline.manifest_validation import ManifestError, validate_manifest

COMMITTED_CSV = Path(__file__).resolve().parents[1] / "data_manifests" / "msd_hippocampus.csv"
CASES = ("hippocampus_001", "hippocampus_003", "hippocampus_004")


@pytest.fixture
def small_msd(tmp_path: Path, msd_dir: Path) -> Path:
    """Three real MSD cases copied into ``tmp_path/msd`` (MSD layout), ready to corrupt."""
    root = tmp_path / "msd"
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
        for case in CASES:
            shutil.copyfile(msd_dir / folder / f"{case}.nii.gz", root / folder / f"{case}.nii.gz")
    return root


def _resave(path: Path, edit) -> None:
    """Rewrite a NIfTI file with ``(data, affine) = edit(data, affine)``."""
    image = nib.load(path)
    data, affine = edit(np.asanyarray(image.dataobj).copy(), image.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), path)


def _set_voxel(value):
    def edit(data, affine):
        data = data.astype(np.float32) if np.isnan(value) or np.isinf(value) else data
        data[0, 0, 0] = value
        return data, affine

    return edit


def _shift(mm):
    def edit(data, affine):
        affine[0, 3] += mm
        return data, affine

    return edit


def _truncate(path: Path) -> None:
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])


def _image(root: Path, case: str) -> Path:
    return root / "imagesTr" / f"{case}.nii.gz"


def _label(root: Path, case: str) -> Path:
    return root / "labelsTr" / f"{case}.nii.gz"


def _duplicate(root: Path, case: str) -> None:
    nib.save(nib.load(_image(root, case)), root / "imagesTr" / f"{case}.nii")


CORRUPTIONS = {
    "truncated image": (lambda r, c: _truncate(_image(r, c)), "imagesTr", "image unreadable or truncated"),
    "truncated label": (lambda r, c: _truncate(_label(r, c)), "labelsTr", "label unreadable or truncated"),
    "garbage image": (lambda r, c: _image(r, c).write_bytes(b"not a nifti"), "imagesTr", "image unreadable or truncated"),
    "shape mismatch": (lambda r, c: _resave(_label(r, c), lambda d, a: (d[:-1], a)), "labelsTr", "label shape"),
    "affine mismatch": (lambda r, c: _resave(_label(r, c), _shift(2.0)), "labelsTr", "label affine differs"),
    "label value 5": (lambda r, c: _resave(_label(r, c), _set_voxel(5)), "labelsTr", r"label values \{5\} outside"),
    "4D image": (lambda r, c: _resave(_image(r, c), lambda d, a: (np.stack([d, d], -1), a)), "imagesTr", "image is not 3D"),
    "2D image": (lambda r, c: _resave(_image(r, c), lambda d, a: (d[:, :, 0], a)), "imagesTr", "image is not 3D"),
    "NaN voxel": (lambda r, c: _resave(_image(r, c), _set_voxel(np.nan)), "imagesTr", "1 NaN/inf voxel"),
    "inf voxel": (lambda r, c: _resave(_image(r, c), _set_voxel(np.inf)), "imagesTr", "1 NaN/inf voxel"),
    "missing label": (lambda r, c: _label(r, c).unlink(), "labelsTr", "label not found"),
    "label without image": (lambda r, c: _image(r, c).unlink(), "imagesTr", "image not found"),
    "duplicate id": (_duplicate, "imagesTr", "duplicate subject_id"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_bad_input_is_named(small_msd, name):
    corrupt, file_part, reason = CORRUPTIONS[name]
    bad = CASES[1]
    corrupt(small_msd, bad)
    rows = build_manifest(small_msd, folds=2)
    with pytest.raises(ManifestError, match=reason) as caught:
        validate_manifest(rows, dataset_dir=small_msd)
    assert {subject for subject, _, _ in caught.value.problems} == {bad}
    assert all(file_part in file for _, file, _ in caught.value.problems)
    assert bad in str(caught.value)


@pytest.mark.parametrize(
    "edit",
    [pytest.param(lambda d, a: (d[..., None], a), id="4D singleton"), pytest.param(_shift(1e-5), id="affine within tolerance")],
)
def test_tolerated_inputs(small_msd, edit):
    _resave(_image(small_msd, CASES[0]), edit)
    rows = build_manifest(small_msd)
    assert validate_manifest(rows, dataset_dir=small_msd) is None  # no ManifestError: every row accepted
    assert CASES[0] in {row["subject_id"] for row in rows}


def test_every_bad_row_reported_at_once(small_msd):
    _truncate(_image(small_msd, CASES[0]))
    _resave(_label(small_msd, CASES[1]), _set_voxel(5))
    _label(small_msd, CASES[2]).unlink()
    with pytest.raises(ManifestError) as caught:
        validate_manifest(build_manifest(small_msd), dataset_dir=small_msd)
    assert [subject for subject, _, _ in caught.value.problems] == list(CASES)
    assert all(case in str(caught.value) for case in CASES)


def test_aseg_label_valid_after_mapping(small_msd):
    def to_aseg(data, affine):
        aseg = np.select([data == 1, data == 2], [17, 53], 0).astype(np.int16)
        aseg[:3][data[:3] == 0] = 41  # another aseg structure (right cerebral white matter)
        return aseg, affine

    _resave(_label(small_msd, CASES[0]), to_aseg)
    rows = build_manifest(small_msd)
    with pytest.raises(ManifestError, match=r"label values \{17, 41, 53\} outside"):
        validate_manifest(rows, dataset_dir=small_msd)
    with pytest.raises(ManifestError, match="after label map"):
        validate_manifest(rows, "17:1,53:5", dataset_dir=small_msd)
    validate_manifest(rows, "aseg", dataset_dir=small_msd)
    validate_manifest(rows, {17: 1, 53: 2}, dataset_dir=small_msd)


def test_msd_manifest(msd_dir):
    rows = build_manifest(msd_dir, folds=10, seed=0)
    assert len(rows) == 200
    assert Counter(row["fold"] for row in rows) == {fold: 20 for fold in range(10)}
    assert rows[0] == {
        "subject_id": "hippocampus_001",
        "image": "imagesTr/hippocampus_001.nii.gz",
        "label": "labelsTr/hippocampus_001.nii.gz",
        "fold": rows[0]["fold"],
    }
    assert all(row["label"] == row["image"].replace("imagesTr", "labelsTr") for row in rows)


def test_dicom_manifest(dicom_dir):
    rows = build_manifest(dicom_dir, folds=10, seed=0)
    assert [(row["subject_id"], row["image"], row["label"]) for row in rows] == [
        (name, name, "") for name in ("Study1_13_HCropVolume", "Study2_14_HCropVolume", "Study3_11_HCropVolume")
    ]
    assert len({row["fold"] for row in rows}) == 3
    validate_manifest(rows, dataset_dir=dicom_dir)


@pytest.fixture
def dicom_copy(tmp_path: Path, dicom_dir: Path) -> Path:
    """The shared DICOM folder copied into ``tmp_path/dicom``."""
    return Path(shutil.copytree(dicom_dir, tmp_path / "dicom"))


def test_dicom_folder_without_series(dicom_copy):
    (dicom_copy / "Empty").mkdir()
    (dicom_copy / "Empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ManifestError, match="Empty: Empty: image: no DICOM series in folder") as caught:
        validate_manifest(build_manifest(dicom_copy), dataset_dir=dicom_copy)
    assert len(caught.value.problems) == 1


def test_dicom_folder_with_two_series(dicom_copy):
    mixed = dicom_copy / "Mixed"
    mixed.mkdir()
    for series in ("Study1_13_HCropVolume", "Study2_14_HCropVolume"):
        for dcm in (dicom_copy / series).glob("*.dcm"):
            shutil.copyfile(dcm, mixed / f"{series}_{dcm.name}")
    with pytest.raises(ManifestError, match=r"Mixed: Mixed: image: 2 DICOM series in one folder \(expected one\)"):
        validate_manifest(build_manifest(dicom_copy), dataset_dir=dicom_copy)


@pytest.mark.parametrize("n, folds", [(200, 10), (23, 10), (3, 10), (7, 1), (5, 5)])
def test_folds_balanced_and_seeded(n, folds):
    ids = [f"s{i:03d}" for i in range(n)]
    assignment = assign_folds(ids, folds=folds, seed=0)
    sizes = Counter(assignment.values())
    sizes = [sizes.get(fold, 0) for fold in range(folds)]
    assert set(assignment.values()) <= set(range(folds)) and sum(sizes) == n
    assert max(sizes) - min(sizes) <= 1
    assert assignment == assign_folds(reversed(ids), folds=folds, seed=0)
    if folds > 1 and n > folds:
        assert assignment != assign_folds(ids, folds=folds, seed=1)


def test_assign_folds_rejects_zero():
    with pytest.raises(ValueError, match="folds"):
        assign_folds(["a"], folds=0)


def test_load_resolves_against_another_root(tmp_path, msd_dir):
    csv_path = tmp_path / "manifest.csv"
    write_manifest(build_manifest(msd_dir) + [{"subject_id": "x", "image": "series_x", "label": "", "fold": 3}], csv_path)
    moved = tmp_path / "moved"
    moved.symlink_to(msd_dir)
    rows = load_manifest(csv_path, moved)
    assert len(rows) == 201
    assert rows[0]["image"] == str(moved / "imagesTr" / "hippocampus_001.nii.gz")
    assert rows[0]["label"] == str(moved / "labelsTr" / "hippocampus_001.nii.gz")
    assert isinstance(rows[0]["fold"], int)
    assert rows[-1] == {"subject_id": "x", "image": str(moved / "series_x"), "fold": 3}
    validate_manifest(rows[:5])


@pytest.mark.parametrize(
    "text, message",
    [("subject_id,image\na,b\n", r"missing column\(s\) \['fold'\]"), ("subject_id,image,label,fold\na,b,,one\n", "line 2: fold 'one'")],
)
def test_load_rejects_bad_csv(tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_manifest(tmp_path / "bad.csv", tmp_path)


def test_split_by_fold():
    rows = load_manifest(COMMITTED_CSV, "/data")
    train, val = split_by_fold(rows, 3)
    assert len(train) == 180 and len(val) == 20 and {row["fold"] for row in val} == {3}
    assert not {row["subject_id"] for row in train} & {row["subject_id"] for row in val}
    train, val = split_by_fold(rows, [0, 1])
    assert len(val) == 40 and len(select_folds(rows, exclude_folds=[0, 1])) == 160
    with pytest.raises(ValueError, match="val_fold"):
        split_by_fold(rows, 10)


def test_plain_layout_and_hidden_files(tmp_path, msd_dir):
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
        shutil.copyfile(msd_dir / f"{folder}Tr" / "hippocampus_001.nii.gz", tmp_path / folder / "case_a.nii.gz")
        (tmp_path / folder / "._case_a.nii.gz").write_bytes(b"macOS resource fork")
    assert scan_dataset(tmp_path) == [{"subject_id": "case_a", "image": "images/case_a.nii.gz", "label": "labels/case_a.nii.gz"}]
    shutil.rmtree(tmp_path / "labels")
    assert scan_dataset(tmp_path)[0]["label"] == ""


def test_scan_rejects_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="expected imagesTr/"):
        scan_dataset(tmp_path)
    with pytest.raises(ValueError, match="not found"):
        scan_dataset(tmp_path / "absent")


def test_cli_rebuilds_committed_csv(tmp_path, msd_dir):
    out = tmp_path / "msd.csv"
    assert main(["manifest", "--dataset-dir", str(msd_dir), "--out", str(out), "--folds", "10", "--seed", "0"]) == 0
    assert out.read_bytes() == COMMITTED_CSV.read_bytes()


def test_cli_exits_2_listing_every_bad_row(small_msd, tmp_path, caplog):
    _truncate(_image(small_msd, CASES[0]))
    _resave(_label(small_msd, CASES[2]), _shift(3.0))
    out = tmp_path / "out.csv"
    assert main(["manifest", "--dataset-dir", str(small_msd), "--out", str(out)]) == 2
    assert not out.exists()
    assert CASES[0] in caplog.text and CASES[2] in caplog.text and CASES[1] not in caplog.text
    assert main(["manifest", "--dataset-dir", str(small_msd), "--out", str(out), "--label-map", "17"]) == 2
    assert "SRC:DST" in caplog.text


def test_imports_without_simpleitk():
    modules = "hippogan.pipeline.cli, hippogan.pipeline.segmenter, hippogan.pipeline.manifest, hippogan.transforms"
    code = f"import sys; sys.modules['SimpleITK'] = None; import {modules}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
