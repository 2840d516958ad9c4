"""Segmentation metrics: hand-computed overlaps, distances in mm, empty masks, tables and the CLI."""

from __future__ import annotations

import json
import math
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from hippogan.pipeline.cli import main
from hippogan.pipeline.evaluation import (
    evaluate_files,
    pairs_from_manifest,
    pairs_from_ref_dir,
    summarise,
    write_evaluation,
)
from hippogan.pipeline.metrics import METRICS, evaluate_case

OVERLAP = ("dsc", "sen", "ppv", "jaccard")
DISTANCES = ("hd95", "asd")


def _boxes(shape, *boxes):
    """Label map of ``shape`` with ``(label, slices)`` boxes painted in order."""
    labels = np.zeros(shape, dtype=np.uint8)
    for label, box in boxes:
        labels[box] = label
    return labels


def _save(path, labels, spacing=(1.0, 1.0, 1.0)):
    """Write ``labels`` as NIfTI with a diagonal affine of ``spacing`` (mm); returns ``path``."""
    nib.save(nib.Nifti1Image(labels, np.diag([*spacing, 1.0])), path)
    return path


@pytest.fixture(autouse=True)
def _no_empty_mask_warnings():
    """Our metrics handle empty masks themselves: no MONAI empty-mask warning may escape."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*is all 0.*")
        yield


@pytest.mark.parametrize("as_tensor", [False, True])
def test_perfect_prediction(as_tensor):
    ref = _boxes((12, 12, 12), (1, np.s_[2:6, 3:9, 2:8]), (2, np.s_[6:10, 3:9, 2:8]))
    pred = torch.from_numpy(ref) if as_tensor else ref.copy()
    out = evaluate_case(pred, ref)
    assert list(out) == [f"{m}{s}" for s in ("", "_class1", "_class2") for m in METRICS]
    for key, value in out.items():
        assert value == pytest.approx(0.0 if key.split("_")[0] in DISTANCES else 1.0), key


def test_partial_overlap_hand_computed():
    # A = 4x4x2 = 32 voxels, B = 6x4x2 = 48, A∩B = 2x4x2 = 16, A∪B = 64
    pred = _boxes((10, 10, 10), (1, np.s_[0:4, 0:4, 0:2]))
    ref = _boxes((10, 10, 10), (1, np.s_[2:8, 0:4, 0:2]))
    out = evaluate_case(pred, ref, classes=None)
    assert set(out) == set(METRICS)
    expected = {"dsc": 2 * 16 / (32 + 48), "sen": 16 / 48, "ppv": 16 / 32, "jaccard": 16 / 64}
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, abs=1e-6), key


def test_per_class_hand_computed():
    # reference: class 1 in x 0:4, class 2 in x 4:8 (32 voxels each); the prediction calls x 4:6 class 1
    ref = _boxes((10, 10, 10), (1, np.s_[0:4, 0:4, 0:2]), (2, np.s_[4:8, 0:4, 0:2]))
    pred = _boxes((10, 10, 10), (1, np.s_[0:6, 0:4, 0:2]), (2, np.s_[6:8, 0:4, 0:2]))
    out = evaluate_case(pred, ref, classes=(1, 2))
    expected = {
        "dsc": 1.0, "sen": 1.0, "ppv": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0,
        # class 1: A = 48, B = 32, A∩B = 32, A∪B = 48
        "dsc_class1": 64 / 80, "sen_class1": 1.0, "ppv_class1": 32 / 48, "jaccard_class1": 32 / 48,
        # class 2: A = 16, B = 32, A∩B = 16, A∪B = 32
        "dsc_class2": 32 / 48, "sen_class2": 16 / 32, "ppv_class2": 1.0, "jaccard_class2": 16 / 32,
    }  # fmt: skip
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, abs=1e-6), key
    assert out["hd95_class1"] > 0 and out["hd95_class2"] > 0


@pytest.mark.parametrize(
    "axis, shift, spacing",
    [(0, 1, (2.0, 1.0, 0.5)), (0, 2, (2.0, 1.0, 0.5)), (1, 3, (2.0, 1.0, 0.5)), (2, 2, (2.0, 1.0, 0.5)), (2, 3, (0.7, 1.2, 3.0))],
)
def test_hd95_of_shifted_cube_is_shift_in_mm(axis, shift, spacing):
    ref = _boxes((16, 16, 16), (1, np.s_[5:11, 5:11, 5:11]))
    pred = np.roll(ref, shift, axis=axis)
    out = evaluate_case(pred, ref, spacing=spacing, classes=None)
    assert out["hd95"] == pytest.approx(shift * spacing[axis], abs=1e-5)
    assert 0 < out["asd"] < out["hd95"]


def test_asd_of_shifted_slab_is_shift_in_mm():
    # every voxel of a one-voxel slab lies exactly `shift` voxels from the other slab
    ref = _boxes((8, 6, 6), (1, np.s_[2, :, :]))
    out = evaluate_case(np.roll(ref, 3, axis=0), ref, spacing=(1.5, 1.0, 1.0), classes=None)
    assert out["asd"] == pytest.approx(4.5) and out["hd95"] == pytest.approx(4.5)


NAN = float("nan")


@pytest.mark.parametrize(
    "pred_empty, ref_empty, expected",
    [
        (True, True, {"dsc": 1.0, "sen": 1.0, "ppv": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}),
        (True, False, {"dsc": 0.0, "sen": 0.0, "ppv": NAN, "jaccard": 0.0, "hd95": NAN, "asd": NAN}),
        (False, True, {"dsc": 0.0, "sen": NAN, "ppv": 0.0, "jaccard": 0.0, "hd95": NAN, "asd": NAN}),
    ],
)
def test_empty_masks(pred_empty, ref_empty, expected):
    box = _boxes((8, 8, 8), (1, np.s_[2:5, 2:5, 2:5]))
    empty = np.zeros_like(box)
    out = evaluate_case(empty if pred_empty else box, empty if ref_empty else box, classes=(1, 2))
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, nan_ok=True), key
    # class 2 is absent from both: agreement by definition
    assert out["dsc_class2"] == 1.0 and out["hd95_class2"] == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ref": np.zeros((4, 4, 5))}, "same shape"),
        ({"spacing": (1.0, 1.0)}, "spacing"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"classes": (0, 1)}, "classes"),
    ],
)
def test_evaluate_case_rejects_bad_input(kwargs, match):
    args = {"pred": np.zeros((4, 4, 4)), "ref": np.zeros((4, 4, 4)), **kwargs}
    with pytest.raises(ValueError, match=match):
        evaluate_case(**args)


def test_files_spacing_and_tables(tmp_path):
    spacing = (1.5, 1.0, 2.0)
    ref = _boxes((16, 16, 16), (1, np.s_[5:8, 5:11, 5:11]), (2, np.s_[8:11, 5:11, 5:11]))
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    _save(tmp_path / "ref" / "a.nii.gz", ref, spacing)
    _save(tmp_path / "pred" / "a.nii.gz", ref, spacing)
    _save(tmp_path / "ref" / "b.nii.gz", ref, spacing)
    _save(tmp_path / "pred" / "b.nii.gz", np.roll(ref, 2, axis=2), spacing)
    _save(tmp_path / "ref" / "c.nii.gz", ref, spacing)
    _save(tmp_path / "pred" / "c.nii.gz", np.zeros_like(ref), spacing)

    rows = evaluate_files(pairs_from_ref_dir(tmp_path / "pred", tmp_path / "ref"))
    assert [r["subject_id"] for r in rows] == ["a", "b", "c"]
    assert rows[1]["hd95"] == pytest.approx(2 * spacing[2])  # spacing read from the affine
    assert math.isnan(rows[2]["hd95"])

    paths = write_evaluation(rows, tmp_path / "out")
    assert {p.name for p in paths.values()} == {"metrics_per_case.csv", "metrics_summary.csv", "metrics_summary.json"}
    per_case = pd.read_csv(paths["per_case"])
    assert list(per_case.columns[:3]) == ["subject_id", "pred", "label"]
    assert "dsc_class1" in per_case.columns and "asd_class2" in per_case.columns and len(per_case) == 3

    summary = pd.read_csv(paths["summary_csv"], index_col="metric")
    assert list(summary.columns) == ["mean", "std", "n", "n_undefined"]
    assert summary.loc["hd95", "n"] == 2 and summary.loc["hd95", "n_undefined"] == 1
    assert summary.loc["hd95", "mean"] == pytest.approx(np.mean([0.0, rows[1]["hd95"]]))
    assert summary.loc["dsc", "mean"] == pytest.approx(np.mean([r["dsc"] for r in rows]))

    report = json.loads(paths["summary_json"].read_text())
    assert report["n_cases"] == 3
    assert report["metrics"]["hd95"]["n_undefined"] == 1
    assert report["metrics"]["dsc"]["std"] == pytest.approx(summary.loc["dsc", "std"])


def test_summary_of_one_case_has_undefined_std(tmp_path):
    paths = write_evaluation([{"subject_id": "x", **evaluate_case(np.ones((3, 3, 3)), np.ones((3, 3, 3)))}], tmp_path)
    assert json.loads(paths["summary_json"].read_text())["metrics"]["dsc"] == {"mean": 1.0, "std": None, "n": 1, "n_undefined": 0}
    assert summarise([{"dsc": 0.5}, {"dsc": NAN}]).loc["dsc", "n"] == 1


@pytest.mark.parametrize(
    "pred_shape, pred_spacing, match",
    [((8, 8, 9), (1.0, 1.0, 1.0), "shape"), ((8, 8, 8), (1.0, 1.0, 2.0), "affines")],
)
def test_grid_mismatch_names_both_files(tmp_path, pred_shape, pred_spacing, match):
    pred = _save(tmp_path / "pred_case.nii.gz", np.zeros(pred_shape, np.uint8), pred_spacing)
    ref = _save(tmp_path / "ref_case.nii.gz", np.zeros((8, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=match) as error:
        evaluate_files([(pred, ref)])
    assert str(pred) in str(error.value) and str(ref) in str(error.value)


def _manifest(tmp_path, folds):
    """A dataset folder with one label a subject and a manifest ``subject_id,image,label,fold``."""
    dataset = tmp_path / "dataset"
    (dataset / "labelsTr").mkdir(parents=True)
    for subject in folds:
        _save(dataset / "labelsTr" / f"{subject}.nii.gz", _boxes((8, 8, 8), (1, np.s_[2:5, 2:5, 2:5])))
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(
        {
            "subject_id": list(folds),
            "image": [f"imagesTr/{s}.nii.gz" for s in folds],
            "label": [f"labelsTr/{s}.nii.gz" for s in folds],
            "fold": list(folds.values()),
        }
    ).to_csv(manifest, index=False)
    return dataset, manifest


def test_missing_predictions_are_all_listed(tmp_path):
    dataset, manifest = _manifest(tmp_path, {"s1": 0, "s2": 0, "s3": 1})
    (tmp_path / "pred").mkdir()
    _save(tmp_path / "pred" / "s2.nii.gz", np.zeros((8, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="2 prediction.*s1, s3"):
        pairs_from_manifest(tmp_path / "pred", manifest, dataset)
    with pytest.raises(ValueError, match="1 prediction.*s1"):
        pairs_from_manifest(tmp_path / "pred", manifest, dataset, fold=0)
    with pytest.raises(ValueError, match="no row with fold 7"):
        pairs_from_manifest(tmp_path / "pred", manifest, dataset, fold=7)


def test_unlabelled_manifest_row_is_rejected(tmp_path):
    dataset, manifest = _manifest(tmp_path, {"s1": 0})
    table = pd.read_csv(manifest)
    table.loc[0, "label"] = None
    table.to_csv(manifest, index=False)
    with pytest.raises(ValueError, match="no reference label for s1"):
        pairs_from_manifest(tmp_path, manifest, dataset)


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, caplog):
    dataset, manifest = _manifest(tmp_path, {"s1": 0, "s2": 0})
    argv = ["evaluate", "--pred-dir", str(tmp_path), "--manifest", str(manifest), "--out", str(tmp_path / "out")]
    assert main([*argv, "--dataset-dir", str(dataset)]) == 2
    assert "2 prediction(s) missing" in caplog.text and "s1, s2" in caplog.text
    assert main(argv) == 2 and "--dataset-dir" in caplog.text
    assert not (tmp_path / "out").exists()


def test_cli_manifest_fold(tmp_path):
    dataset, manifest = _manifest(tmp_path, {"s1": 0, "s2": 1, "s3": 1})
    (tmp_path / "pred").mkdir()
    for subject in ("s2", "s3"):  # only fold 1 was predicted
        _save(tmp_path / "pred" / f"{subject}.nii.gz", _boxes((8, 8, 8), (1, np.s_[2:5, 2:5, 2:4])))
    argv = ["evaluate", "--pred-dir", str(tmp_path / "pred"), "--manifest", str(manifest), "--dataset-dir", str(dataset)]
    assert main([*argv, "--out", str(tmp_path / "out"), "--fold", "1"]) == 0
    per_case = pd.read_csv(tmp_path / "out" / "metrics_per_case.csv")
    assert list(per_case["subject_id"]) == ["s2", "s3"]
    assert per_case["dsc"].tolist() == pytest.approx([2 * 18 / 45] * 2)  # 18 of 27 voxels predicted


def test_cli_ref_dir_binary_only(tmp_path):
    for folder in ("pred", "ref"):
        (tmp_path / folder).mkdir()
        _save(tmp_path / folder / "case.nii", _boxes((8, 8, 8), (2, np.s_[2:5, 2:5, 2:5])))
    argv = ["evaluate", "--pred-dir", str(tmp_path / "pred"), "--ref-dir", str(tmp_path / "ref"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--classes"]) == 0
    columns = pd.read_csv(tmp_path / "out" / "metrics_per_case.csv").columns
    assert not any("_class" in c for c in columns)


@pytest.mark.shared_data
def test_real_msd_label_against_itself_and_eroded(msd_dir, tmp_path):
    ref_path = msd_dir / "labelsTr" / "hippocampus_001.nii.gz"
    img = nib.load(ref_path)
    labels = np.asanyarray(img.dataobj)
    eroded = np.where(ndimage.binary_erosion(labels > 0), labels, 0).astype(np.uint8)
    eroded_path = tmp_path / "hippocampus_001_eroded.nii.gz"
    nib.save(nib.Nifti1Image(eroded, img.affine), eroded_path)

    same, worse = evaluate_files([(ref_path, ref_path), (eroded_path, ref_path)])
    for key in ("dsc", "dsc_class1", "dsc_class2", "sen", "ppv", "jaccard"):
        assert same[key] == pytest.approx(1.0), key
    assert same["hd95"] == 0.0 and same["asd"] == 0.0
    assert 0.5 < worse["dsc"] < 1.0
    assert worse["ppv"] == pytest.approx(1.0)  # erosion only removes voxels
    assert worse["sen"] < 1.0 and worse["jaccard"] < worse["dsc"]
    assert 0.0 < worse["asd"] <= worse["hd95"] <= 2.0  # one-voxel erosion at 1 mm
