"""k-fold cross-validation (``hippogan cv``) and the ``hippogan train`` command on real MSD cases (CPU, tiny)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import NARROW, TINY, write_manifest

from hippogan.pipeline.cli import main
from hippogan.pipeline.crossval import CV_PER_CASE_CSV, CV_SUMMARY_CSV, fold_table, run_crossval
from hippogan.pipeline.manifest import load_manifest

TINY_CLI = ["num_workers=0", "empty_fraction=0.05", "max_epochs=1", "batch_size=16"]


def test_fold_table_means_and_std() -> None:
    per_case = pd.DataFrame(
        {"fold": [0, 0, 1, 1], "subject_id": list("abcd"), "dsc": [0.8, 0.6, 0.9, 0.9], "hd95": [2.0, np.nan, 1.0, 3.0]}
    )
    table = fold_table(per_case)
    assert list(table.index) == ["0", "1", "mean", "std"]
    assert table.loc["0", "dsc"] == pytest.approx(0.7) and table.loc["0", "hd95"] == pytest.approx(2.0)
    assert table.loc["mean", "dsc"] == pytest.approx(0.8) and table.loc["std", "dsc"] == pytest.approx(math.sqrt(0.02))
    assert table.loc["mean", "n_cases"] == 4
    with pytest.raises(ValueError, match="'fold' column"):
        fold_table(per_case.drop(columns="fold"))


def test_cv_trains_and_scores_each_fold(msd_dir: Path, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "manifest.csv", n_val=2)  # folds 1 and 0, two cases each
    summary = run_crossval(msd_dir, tmp_path / "cv", folds=2, overrides=TINY, manifest=manifest)
    assert list(summary.index) == ["0", "1", "mean", "std"]
    assert {"dsc", "dsc_class1", "dsc_class2", "hd95"} <= set(summary.columns)
    per_case = pd.read_csv(tmp_path / "cv" / CV_PER_CASE_CSV)
    assert sorted(per_case["fold"]) == [0, 0, 1, 1] and per_case["dsc"].between(0, 1).all()
    assert (tmp_path / "cv" / CV_SUMMARY_CSV).is_file()
    for row in load_manifest(manifest, msd_dir):  # label maps on each scan's own grid
        pred = nib.load(tmp_path / "cv" / f"fold_{row['fold']}" / "predictions" / f"{row['subject_id']}.nii.gz")
        image = nib.load(row["image"])
        assert pred.shape == image.shape[:3] and pred.get_data_dtype() == np.uint8
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)
    for fold in (0, 1):
        assert (tmp_path / "cv" / f"fold_{fold}" / "checkpoints" / "last.pt").is_file()
        assert (tmp_path / "cv" / f"fold_{fold}" / "evaluation" / "metrics_summary.csv").is_file()
    # a stopped CV continues: the finished fold is scored again, not retrained; the missing one trains
    last = tmp_path / "cv" / "fold_0" / "checkpoints" / "last.pt"
    trained = last.read_bytes()
    (tmp_path / "cv" / "fold_1" / "checkpoints" / "last.pt").unlink()
    (tmp_path / "cv" / "fold_1" / "checkpoints" / "best.pt").unlink()
    again = run_crossval(msd_dir, tmp_path / "cv", folds=2, overrides=TINY, manifest=manifest, resume=True)
    assert last.read_bytes() == trained
    assert (tmp_path / "cv" / "fold_1" / "checkpoints" / "last.pt").is_file()
    pd.testing.assert_series_equal(again.loc["0"], summary.loc["0"])


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("2.5D", {"train#preprocessing#context": 1, "network_def#in_channels": 3}),
        ("3D", {"network_def#spatial_dims": 3, "batch_size": 2}),
    ],
)
def test_cv_of_a_2_5d_and_a_3d_generator(name: str, overrides: dict, msd_dir: Path, tmp_path: Path) -> None:
    """The CV segments the held-out scans as the generator trained: neighbouring planes, or whole volumes."""
    manifest = write_manifest(tmp_path / "manifest.csv", n_val=1)
    configs = ["train_cpu.yaml"] + (["train_3d.yaml"] if name == "3D" else [])
    summary = run_crossval(msd_dir, tmp_path / "cv", folds=[0], configs=configs, overrides={**TINY, **overrides},
                           manifest=manifest)  # fmt: skip
    assert summary.loc["0", "n_cases"] == 1 and 0 <= summary.loc["0", "dsc"] <= 1


def test_cli_train_then_export(msd_dir: Path, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "manifest.csv", n_val=1)
    common = ["--dataset-dir", str(msd_dir), "--manifest", str(manifest), "--output-dir", str(tmp_path / "run")]
    narrow = [f"{key}={value}" for key, value in NARROW.items()]
    assert main(["train", *common, "--fold", "0", *TINY_CLI, *narrow]) == 0
    out = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "last.pt"), "--out", str(out)]) == 0
    assert next(iter(torch.load(out, weights_only=True).values())).dtype == torch.float16


def test_cli_bad_input_exits_2(msd_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest = write_manifest(tmp_path / "manifest.csv", n_val=1)
    common = ["--dataset-dir", str(msd_dir), "--manifest", str(manifest), "--output-dir", str(tmp_path / "run")]
    assert main(["cv", *common, "--fold-list", "7", *TINY_CLI]) == 2
    assert "val_fold [7]" in caplog.text
    with open(manifest, "a", newline="") as f:
        csv.writer(f).writerow(["hippocampus_x", "imagesTr/missing.nii.gz", "labelsTr/missing.nii.gz", 1])
    assert main(["train", *common, *TINY_CLI]) == 2
    assert "imagesTr/missing.nii.gz: image not found" in caplog.text
    assert main(["train", *common, "max_epochs"]) == 2
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "m.pt")]) == 2
