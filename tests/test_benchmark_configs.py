"""The accuracy benchmark's models as override files of the bundle's training config (``benchmarks/configs``).

Each model's configs pass MONAI's train-workflow property check and build a network of the right output; the 3D
UNet (the one model whose data differ: whole volumes, no plane draw, whole-volume validation) trains one tiny
epoch; the driver's table is checked on synthetic cross-validation results.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import NARROW, load_benchmark, write_manifest
from monai.bundle import ConfigParser, ConfigWorkflow

from hippogan.pipeline.bundled import DEFAULT_BUNDLE
from hippogan.pipeline.checkpoint import load_checkpoint
from hippogan.pipeline.train_cli import run_training

CONFIGS = DEFAULT_BUNDLE / "configs"
bench_accuracy = load_benchmark("bench_accuracy")
MODELS = list(bench_accuracy.MODELS)
TINY_RUN = {"max_epochs": 1, "num_workers": 0, "val_interval": 1, "empty_fraction": 0.05}


def config_files(name: str) -> list[str]:
    return [str(CONFIGS / f) if "/" not in f else f for f in ["train.yaml", *bench_accuracy.model_configs(name)]]


def test_every_override_file_is_a_model() -> None:
    files = {path.name for path in bench_accuracy.CONFIG_DIR.glob("*.yaml")}
    # every file of benchmarks/configs is some model's; a path is a bundle config (the 3D recipe, train_3d.yaml)
    assert files == {f for _, extra in bench_accuracy.MODELS.values() for f in extra if "/" not in f}


@pytest.mark.parametrize("name", MODELS)
def test_model_network_gives_three_logits(name: str) -> None:
    parser = ConfigParser()
    parser.read_config(config_files(name))
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    shape = {"unet3d": (1, 1, 48, 64, 64), "resse3d": (1, 1, 32, 64, 64)}.get(name, (2, 1, 64, 64))
    with torch.inference_mode():
        assert network(torch.rand(shape)).shape == (shape[0], 3, *shape[2:])
    assert (parser.get_parsed_content("adversarial_weight") > 0) == name.endswith("gan")


@pytest.mark.parametrize("name", MODELS)
def test_model_properties_pass(name: str, msd_dir: Path, tmp_path: Path) -> None:
    workflow = ConfigWorkflow(
        config_file=config_files(name),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        bundle_root=str(DEFAULT_BUNDLE),
        dataset_dir=str(msd_dir),
        manifest=str(write_manifest(tmp_path / "manifest.csv", n_val=1)),
        output_dir=str(tmp_path / "run"),
        **TINY_RUN,
    )
    workflow.initialize()
    try:
        assert workflow.check_properties() == []
    finally:
        workflow.finalize()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, widths, network",
    [
        ("unet3d", {"network_def#channels": [4, 8, 8, 16, 16]}, "monai.networks.nets.unet.UNet"),
        ("resse3d", NARROW, "hippogan.networks.generator.ResSEGenerator"),
    ],
)
def test_3d_models_train_on_whole_volumes(name: str, widths: dict, network: str, msd_dir: Path, tmp_path: Path):
    manifest = write_manifest(tmp_path / "manifest.csv", n_val=1)
    overrides = {**TINY_RUN, "batch_size": 2, **widths}
    run_training(msd_dir, tmp_path / "run", configs=bench_accuracy.model_configs(name), overrides=overrides,
                 manifest=manifest)  # fmt: skip
    epochs = pd.read_csv(tmp_path / "run" / "epochs.csv")
    assert epochs["iterations"].tolist() == [1] and epochs["samples"].tolist() == [2]  # 2 volumes, one batch
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert state["config"]["g_network"] == network and state["best"]["best_metric"] >= 0


def test_collect_pairs_cases_across_models(tmp_path: Path) -> None:
    base = 0.9 + 0.01 * torch.rand(8, generator=torch.Generator().manual_seed(0)).double().numpy()
    for name, shift in (("ours", 0.0), ("unet2d", -0.02)):
        for fold in (0, 1):
            (tmp_path / name / f"fold_{fold}").mkdir(parents=True)
            epochs = {"epoch": [1, 2], "iterations": [10, 10], "seconds": [30.0, 30.0], "samples": [160, 160]}
            pd.DataFrame(epochs).to_csv(tmp_path / name / f"fold_{fold}" / "epochs.csv", index=False)
        dsc = base + shift
        cases = {"fold": [0] * 4 + [1] * 4, "subject_id": [f"s{i}" for i in range(8)], "dsc": dsc}
        cases |= {k: dsc for k in bench_accuracy.METRICS if k != "dsc"}
        pd.DataFrame(cases).to_csv(tmp_path / name / "cv_per_case.csv", index=False)
    rows = {r["model"]: r for r in bench_accuracy.collect(tmp_path)}
    assert rows["ours"]["delta_dsc"] == 0 and rows["ours"]["p_wilcoxon"] == 1.0
    assert rows["unet2d"]["delta_dsc"] == pytest.approx(-0.02) and rows["unet2d"]["p_wilcoxon"] < 0.05
    assert rows["unet2d"]["folds"] == 2 and rows["unet2d"]["epochs"] == 2 and rows["unet2d"]["train_min"] == 1.0
    table = (tmp_path / "accuracy.md").read_text()
    assert "(`ours`) | 2 (8) | 2.0 | 1.0 | 5.3 |" in table and "(`unet2d`)" in table
    assert pd.read_csv(tmp_path / "accuracy.csv")["model"].tolist() == ["ours", "unet2d"]
