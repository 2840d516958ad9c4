"""The bundle's inference side, run from a copy outside the repository: ``monai.bundle run``, evaluate.yaml,
``verify_net_in_out``, ``ckpt_export`` and ``hippogan infer``.

``models/model.pt`` is the shipped generator when the bundle has one; until then the copy gets random weights
of the config's ``network_def`` saved as the shipped file will be (an fp16 state dict).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import NARROW, save_random_weights
from monai.bundle import ConfigParser, ConfigWorkflow

from hippogan.pipeline.cli import main as cli_main
from hippogan.pipeline.evaluation import PER_CASE_CSV, SUMMARY_CSV, SUMMARY_JSON
from hippogan.pipeline.bundled import DEFAULT_BUNDLE
from hippogan.pipeline.results import VOLUMES_CSV
from hippogan.pipeline.weights import load_generator

@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A copy of the shipped bundle outside the repository (configs, metadata, ``models/model.pt``)."""
    root = tmp_path_factory.mktemp("bundles") / "hippocampus_resse_gan"
    shutil.copytree(DEFAULT_BUNDLE, root, ignore=shutil.ignore_patterns("eval", "runs", "*.ts"))
    return root


def _bundle_command(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` in the bundle folder, output captured."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=bundle, env=env, capture_output=True, text=True, timeout=300
    )


def test_monai_bundle_run_outside_repository(bundle, msd_dir, dicom_dir, tmp_path):
    image = msd_dir / "imagesTr" / "hippocampus_001.nii.gz"
    series = sorted(p for p in dicom_dir.iterdir() if p.is_dir())[0]
    out = tmp_path / "out"
    result = _bundle_command(
        bundle, "run", "--config_file", "configs/inference.yaml", "--bundle_root", str(bundle),
        "--input", repr([str(image), str(series)]), "--output_dir", str(out), "--device", "$torch.device('cpu')",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    pred = nib.load(out / image.name)
    assert pred.shape == nib.load(image).shape and np.array_equal(pred.affine, nib.load(image).affine)
    assert (out / f"{series.name}.nii.gz").is_file()
    with (out / VOLUMES_CSV).open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["subject"] for r in rows] == ["hippocampus_001", series.name]


def test_evaluate_yaml_writes_tables(bundle, msd_dir, tmp_path):
    cases = sorted((msd_dir / "imagesTr").glob("hippocampus_*.nii.gz"))[:3]
    manifest = tmp_path / "manifest.csv"
    rows = [f"{p.name[:-7]},imagesTr/{p.name},labelsTr/{p.name},{0 if i < 2 else 1}\n" for i, p in enumerate(cases)]
    manifest.write_text("subject_id,image,label,fold\n" + "".join(rows))
    weights = save_random_weights(tmp_path / "narrow.pt", NARROW, bundle=bundle)
    workflow = ConfigWorkflow(
        config_file=[str(bundle / "configs" / "inference.yaml"), str(bundle / "configs" / "evaluate.yaml")],
        logging_file=False,
        workflow_type="infer",
        bundle_root=str(bundle),
        manifest=str(manifest),
        dataset_dir=str(msd_dir),
        fold=0,
        output_dir=str(tmp_path / "eval"),
        ckpt_path=str(weights),
        device="$torch.device('cpu')",
        **NARROW,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    for name in (PER_CASE_CSV, SUMMARY_CSV, SUMMARY_JSON, VOLUMES_CSV):
        assert (tmp_path / "eval" / name).is_file(), name
    with (tmp_path / "eval" / PER_CASE_CSV).open(newline="") as stream:
        per_case = list(csv.DictReader(stream))
    assert [r["subject_id"] for r in per_case] == [p.name[:-7] for p in cases[:2]]
    assert {"dsc", "hd95", "dsc_class1", "dsc_class2"} <= set(per_case[0])
    assert json.loads((tmp_path / "eval" / SUMMARY_JSON).read_text())["n_cases"] == 2


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")  # ckpt_export writes TorchScript
def test_verify_net_in_out_and_ckpt_export(bundle, tmp_path):
    meta = ("--meta_file", "configs/metadata.json", "--config_file", "configs/inference.yaml")
    verified = _bundle_command(bundle, "verify_net_in_out", "network_def", *meta)
    assert verified.returncode == 0, verified.stderr[-3000:]
    exported = tmp_path / "model.ts"
    export = _bundle_command(
        bundle, "ckpt_export", "network_def", "--filepath", str(exported), "--ckpt_file", "models/model.pt", *meta
    )
    assert export.returncode == 0, export.stderr[-3000:]
    scripted = torch.jit.load(str(exported))
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    eager = load_generator(bundle / "models" / "model.pt", parser.get_parsed_content("network_def"))
    x = torch.rand(2, 1, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(scripted(x), eager(x), atol=1e-4, rtol=1e-4)


def test_inference_config_properties_and_editable_steps(bundle, msd_dir):
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "inference.yaml"), logging_file=False, workflow_type="infer",
        bundle_root=str(bundle), device="$torch.device('cpu')", input=str(msd_dir / "imagesTr"),
    )  # fmt: skip
    workflow.initialize()
    assert workflow.check_properties() == []
    names = [type(t).__name__ for t in workflow.parser.get_parsed_content("preprocessing").transforms]
    assert names == [
        "LoadImaged", "EnsureChannelFirstd", "CheckScand", "RegisterToTemplated", "Orientationd", "Spacingd",
        "HippocampalROICropd", "MirrorSided", "ScaleIntensityRangePercentilesNonzerod", "HistogramStandardized",
        "SagittalContextd",
    ]  # fmt: skip
    post = [type(t).__name__ for t in workflow.parser.get_parsed_content("postprocessing").transforms]
    assert post == ["EnsureTyped", "Invertd", "KeepLargestComponentd"]
    workflow.parser["lcc"] = False
    workflow.parser.parse(True)
    assert "KeepLargestComponentd" not in [
        type(t).__name__ for t in workflow.parser.get_parsed_content("postprocessing").transforms
    ]


def test_hippogan_infer_exit_codes(bundle, msd_dir, tmp_path):
    image = msd_dir / "imagesTr" / "hippocampus_001.nii.gz"
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a scan")
    common = ["--bundle", str(bundle), "--threads", "2", "--no-progress", "--device", "cpu"]
    assert cli_main(["infer", str(image), "--out", str(tmp_path / "ok"), *common]) == 0
    assert (tmp_path / "ok" / image.name).is_file()
    assert cli_main(["infer", str(image), str(bad), "--out", str(tmp_path / "some"), *common]) == 1
    assert (tmp_path / "some" / image.name).is_file() and not (tmp_path / "some" / bad.name).exists()
    assert cli_main(["infer", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "none"), *common]) == 2
    wrong = save_random_weights(tmp_path / "narrow.pt", NARROW, bundle=bundle)
    assert cli_main(["infer", str(image), "--out", str(tmp_path / "w"), "--model", str(wrong), *common]) == 2
