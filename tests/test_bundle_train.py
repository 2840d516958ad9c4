"""The bundle's training config on real MSD cases (CPU, narrow networks, a few iterations).

One short run (module fixture: 2 training and 4 validation subjects, one epoch of 3 steps) feeds the
checkpoint, resume, export and bad-input tests; MONAI's train-workflow property check runs on each config
combination. The DDP config (two gloo processes) is tested in ``test_ddp.py``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import socket
from pathlib import Path

import pytest
import torch
from helpers import NARROW_G, REPO_MANIFEST, TINY, write_manifest
from monai.bundle import ConfigWorkflow, verify_metadata

from hippogan.networks import ResSEGenerator
from hippogan.pipeline.checkpoint import load_checkpoint
from hippogan.pipeline.bundle_training import PlaneSliceDataset, export_generator, prepare_output_dir
from hippogan.pipeline.bundled import DEFAULT_BUNDLE
from hippogan.pipeline.train_cli import parse_overrides, run_training
from hippogan.transforms import IMAGE, LABEL

CONFIGS = DEFAULT_BUNDLE / "configs"
SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "reference" / "meta_schema_20240725.json"


def workflow(msd_dir: Path, manifest: Path, output_dir: Path, extra_configs: tuple[str, ...] = (), **overrides):
    """The bundle's training ConfigWorkflow with the tiny settings."""
    return ConfigWorkflow(
        config_file=[str(CONFIGS / "train.yaml"), *(str(CONFIGS / c) for c in extra_configs)],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        bundle_root=str(DEFAULT_BUNDLE),
        dataset_dir=str(msd_dir),
        manifest=str(manifest),
        output_dir=str(output_dir),
        **{**TINY, **overrides},
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(msd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One epoch through initialize, check_properties, run, finalize."""
    tmp = tmp_path_factory.mktemp("bundle_train")
    manifest = write_manifest(tmp / "manifest.csv")
    wf = workflow(msd_dir, manifest, tmp / "run")
    wf.initialize()
    missing = wf.check_properties()
    wf.run()
    wf.finalize()
    return {"manifest": manifest, "run": tmp / "run", "missing": missing, "tmp": tmp}


@pytest.mark.filterwarnings("ignore:No hash value provided")  # a local copy of MONAI's schema, no hash to check
def test_metadata_verifies() -> None:
    if not SCHEMA.is_file():
        pytest.skip(f"schema absent: {SCHEMA}")
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))  # raises when invalid
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    assert metadata["version"] == max(metadata["changelog"], key=lambda v: tuple(map(int, v.split("."))))


def test_training_writes_last_and_best(trained: dict) -> None:
    assert trained["missing"] == []
    checkpoints = trained["run"] / "checkpoints"
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(checkpoints / name)
        assert {"g_network", "d_network", "g_optimizer", "d_optimizer", "engine", "config"} <= set(state)
        assert state["engine"]["epoch"] == 1 and state["engine"]["iteration"] == state["engine"]["epoch_length"]
        assert state["config"]["val_fold"] == 0 and state["config"]["lr"] == pytest.approx(2e-4)
    assert load_checkpoint(checkpoints / "best.pt")["best"]["best_metric_epoch"] == 1
    assert any((trained["run"] / "tensorboard").iterdir())
    with (trained["run"] / "epochs.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["1"] and int(rows[0]["iterations"]) == steps_per_epoch(trained)


def steps_per_epoch(trained: dict) -> int:
    return load_checkpoint(trained["run"] / "checkpoints" / "last.pt")["engine"]["epoch_length"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "extra_configs", [(), ("train_cpu.yaml",), ("multi_gpu_train.yaml",), ("train_cpu.yaml", "multi_gpu_train.yaml")]
)
def test_train_properties_pass(msd_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra_configs) -> None:
    """MONAI's train-workflow property check finds every required property and no wrong optional ID.

    The multi-GPU config runs in a one-process gloo group (its ``initialize`` starts it, ``finalize`` ends it).
    """
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    manifest = write_manifest(tmp_path / "manifest.csv", n_val=1)
    wf = workflow(msd_dir, manifest, tmp_path / "run", extra_configs=extra_configs)
    wf.initialize()
    try:
        assert wf.check_properties() == []
    finally:
        wf.finalize()


@pytest.mark.slow
def test_resume_continues_exactly_where_it_stopped(trained: dict, msd_dir: Path) -> None:
    run = trained["tmp"] / "resumed"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("last.pt", "best.pt"):
        (run / "checkpoints" / name).write_bytes((trained["run"] / "checkpoints" / name).read_bytes())
    wf = workflow(msd_dir, trained["manifest"], run, max_epochs=2, resume=True)
    wf.initialize()
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    wf.finalize()
    resumed = load_checkpoint(run / "checkpoints" / "last.pt")
    steps = resumed["engine"]["epoch_length"]
    assert trainer.state.epoch == 2 and resumed["engine"]["epoch"] == 2 and resumed["engine"]["iteration"] == 2 * steps
    assert resumed["best"]["best_metric_epoch"] in (1, 2)  # the tracker came back with the checkpoint
    straight = trained["tmp"] / "straight"
    wf = workflow(msd_dir, trained["manifest"], straight, max_epochs=2)
    wf.initialize()
    wf.run()
    wf.finalize()
    uninterrupted = load_checkpoint(straight / "checkpoints" / "last.pt")
    for key in ("g_network", "d_network"):  # same weights as a run never stopped: RNG, draws, optimisers restored
        assert all(torch.equal(value, resumed[key][name]) for name, value in uninterrupted[key].items()), key


def test_resume_incompatible_checkpoint_is_refused(trained: dict, msd_dir: Path) -> None:
    last = trained["run"] / "checkpoints" / "last.pt"
    before = {p.name: digest(p) for p in last.parent.iterdir()}
    overrides = {**TINY, "max_epochs": 2, "resume": True, "network_def#channels": [8, 8, 16, 32]}
    with pytest.raises(ValueError, match=r"last\.pt.*'g_network' does not fit"):
        run_training(msd_dir, trained["run"], overrides=overrides, manifest=trained["manifest"])
    assert {p.name: digest(p) for p in last.parent.iterdir()} == before


def test_resume_missing_checkpoint(trained: dict, msd_dir: Path) -> None:
    missing = trained["tmp"] / "nowhere.pt"
    with pytest.raises(ValueError, match=f"checkpoint {missing} not found"):
        overrides = {**TINY, "resume": str(missing)}
        run_training(msd_dir, trained["tmp"] / "r2", overrides=overrides, manifest=trained["manifest"])


def test_missing_label_file_is_named(msd_dir: Path, tmp_path: Path) -> None:
    bad = "labelsTr/hippocampus_999_missing.nii.gz"
    with REPO_MANIFEST.open() as f:
        first = next(csv.DictReader(f))["subject_id"]
    manifest = write_manifest(tmp_path / "manifest.csv", label_of={first: bad})
    with pytest.raises(ValueError, match=rf"{first}: .*hippocampus_999_missing\.nii\.gz: label not found"):
        run_training(msd_dir, tmp_path / "run", overrides=TINY, manifest=manifest)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unwritable_output_dir(msd_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    manifest = write_manifest(tmp_path / "manifest.csv")
    with pytest.raises(ValueError, match=rf"output_dir {blocker / 'run'} cannot be created or written"):
        run_training(msd_dir, blocker / "run", overrides=TINY, manifest=manifest)
    with pytest.raises(ValueError, match="output_dir"):
        prepare_output_dir(blocker)


def test_fresh_run_never_overwrites_another_runs_checkpoints(tmp_path: Path) -> None:
    """A second fresh run into a run folder stops with what to do; resuming it is allowed."""
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / "last.pt").write_bytes(b"first run")
    for resume in (False, "false", None):
        with pytest.raises(ValueError, match=r"already holds a training run .*last.pt.*resume=true.*nothing was"):
            prepare_output_dir(tmp_path / "run", ckpt_dir, resume)
    assert prepare_output_dir(tmp_path / "run", ckpt_dir, True) == tmp_path / "run"
    assert prepare_output_dir(tmp_path / "run", ckpt_dir, str(ckpt_dir / "last.pt")) == tmp_path / "run"
    assert (ckpt_dir / "last.pt").read_bytes() == b"first run"
    assert prepare_output_dir(tmp_path / "other", tmp_path / "other" / "checkpoints") == tmp_path / "other"


def test_missing_manifest_and_bad_override(tmp_path: Path, msd_dir: Path) -> None:
    with pytest.raises(ValueError, match=rf"manifest {tmp_path / 'none.csv'}: not found"):
        run_training(msd_dir, tmp_path / "run", overrides=TINY, manifest=tmp_path / "none.csv")
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_overrides(["max_epochs"])
    assert parse_overrides(["max_epochs=3", "network_def#channels=[8, 8]", "label_map=null"]) == {
        "max_epochs": 3,
        "network_def#channels": [8, 8],
        "label_map": None,
    }


def test_export_generator_fp16(trained: dict, tmp_path: Path) -> None:
    out = export_generator(trained["run"] / "checkpoints" / "best.pt", tmp_path / "models" / "model.pt")
    weights = torch.load(out, weights_only=True)
    assert all(t.dtype == torch.float16 for t in weights.values() if t.is_floating_point())
    net = ResSEGenerator(spatial_dims=2, in_channels=1, out_channels=3, **NARROW_G)
    net.load_state_dict(weights)
    assert net(torch.rand(2, 1, 64, 64)).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="has no 'x_network'"):
        export_generator(trained["run"] / "checkpoints" / "best.pt", tmp_path / "x.pt", key="x_network")


@pytest.mark.slow
def test_cpu_recipe_config_trains_the_shipped_architecture(msd_dir: Path, tmp_path: Path, caplog) -> None:
    """``train.yaml`` + ``train_cpu.yaml`` (the shipped recipe: full-resolution skip, plane augmentation,
    one-cycle schedule) trains two epochs, logs one line per epoch (none per iteration), anneals the
    learning rate, and its export loads into the inference config's architecture."""
    manifest = write_manifest(tmp_path / "manifest.csv")
    wf = workflow(msd_dir, manifest, tmp_path / "run", extra_configs=("train_cpu.yaml",), max_epochs=2)
    wf.initialize()
    assert wf.parser.get_parsed_content("train#dataset").transform is not None
    with caplog.at_level(logging.INFO):
        wf.run()
    g_optimizer = wf.parser.get_parsed_content("g_optimizer")
    wf.finalize()
    assert g_optimizer.param_groups[0]["lr"] not in (1e-3 / 25, 1e-3)  # the one-cycle schedule moved it (test_ddp.py)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert sum(m.startswith("epoch ") and " iterations, " in m for m in infos) == 2
    assert not [m for m in infos if "learning rate" in m.lower() or "Iter" in m]
    exported = export_generator(tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "m.pt")
    weights = torch.load(exported, weights_only=True)
    assert any(key.startswith("stem_skip.") for key in weights)
    ResSEGenerator(spatial_dims=2, in_channels=1, out_channels=3, stem_skip=16, **NARROW_G).load_state_dict(weights)


def _volumes() -> list[dict]:
    """Two (1, 6, 4, 4) volumes: planes x = 1, 2 of the first and x = 4 of the second hold label."""
    volumes = []
    for labelled in ((1, 2), (4,)):
        image = torch.arange(6.0).reshape(1, 6, 1, 1).expand(1, 6, 4, 4).clone()
        label = torch.zeros(1, 6, 4, 4)
        for x in labelled:
            label[0, x, 1, 1] = 1
        volumes.append({IMAGE: image, LABEL: label})
    return volumes


@pytest.mark.parametrize("fraction, expected", [(0.0, 3), (0.5, 3 + 4), (1.0, 12)])
def test_slice_dataset_keeps_labelled_planes(fraction: float, expected: int) -> None:
    dataset = PlaneSliceDataset(_volumes(), plane_size=None, empty_fraction=fraction, seed=3)
    assert len(dataset) == expected
    planes = [dataset[i] for i in range(len(dataset))]
    assert all(p[IMAGE].shape == (1, 4, 4) and p[LABEL].shape == (1, 4, 4) for p in planes)
    assert sum(int(p[LABEL].any()) for p in planes) == 3
    for epoch in (1, 2):
        dataset.set_epoch(epoch)
        assert len(dataset) == expected


def test_slice_dataset_redraws_per_epoch_reproducibly() -> None:
    dataset = PlaneSliceDataset(_volumes(), plane_size=None, empty_fraction=0.5, seed=0)
    draws = []
    for epoch in range(1, 6):
        dataset.set_epoch(epoch)
        draws.append(dataset.index.tolist())
    assert len({str(d) for d in draws}) > 1
    dataset.set_epoch(3)
    assert dataset.index.tolist() == draws[2]
    plane = dataset[0]
    volume, x = dataset.index[0].tolist()
    assert torch.equal(plane[IMAGE], _volumes()[volume][IMAGE][:, x])


def test_slice_dataset_applies_the_plane_transform() -> None:
    """The transform sees each plane dict and its MONAI output comes back as plain tensors."""
    from monai.transforms import Flipd

    plain = PlaneSliceDataset(_volumes(), plane_size=None, empty_fraction=0.0)
    flip = Flipd([IMAGE, LABEL], spatial_axis=0)
    flipped = PlaneSliceDataset(_volumes(), plane_size=None, empty_fraction=0.0, transform=flip)
    for i in range(len(plain)):
        out = flipped[i]
        assert type(out[IMAGE]) is torch.Tensor and type(out[LABEL]) is torch.Tensor
        assert torch.equal(out[LABEL], plain[i][LABEL].flip(1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"empty_fraction": 1.5}, "empty_fraction"),
        ({"label_key": "seg"}, "label_key"),
        ({"volumes": []}, "no volumes"),
        ({"volumes": [{IMAGE: torch.zeros(1, 6, 4, 4)}]}, "lacks keys"),
        ({"volumes": [{IMAGE: torch.zeros(1, 6, 4, 4), LABEL: torch.zeros(1, 5, 4, 4)}]}, "one size"),
        ({"view": "oblique"}, "sagittal, coronal, axial"),
    ],
)
def test_slice_dataset_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PlaneSliceDataset(**{"volumes": _volumes(), "plane_size": None, **kwargs})
