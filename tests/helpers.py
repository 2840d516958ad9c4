"""Test helpers: narrow networks, random generator weights, a narrow bundle copy, tiny training runs on real MSD cases.

Import from a test module as ``from helpers import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import csv
import importlib.util
import shutil
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from monai.bundle import ConfigParser

from hippogan.pipeline.bundled import DEFAULT_BUNDLE
from hippogan.pipeline.manifest import MANIFEST_COLUMNS
from hippogan.pipeline.weights import save_fp16_weights

__all__ = [
    "CPU", "NARROW", "NARROW_G", "REPO_MANIFEST", "TINY", "load_benchmark", "narrow_bundle", "save_random_weights",
    "write_manifest",
]

NARROW_G = {"channels": [8, 8, 16, 16], "decoder_channels": [16, 16, 8, 8, 8], "se_reduction": 4}
"""Narrow ``ResSEGenerator`` kwargs for plumbing tests (the one narrow width of the test suite)."""
NARROW = {f"network_def#{key}": value for key, value in NARROW_G.items()}
""":data:`NARROW_G` as config ids of the bundle's ``network_def`` (inference and training configs)."""
CPU = {"device": "$torch.device('cpu')"}
"""Override that keeps a test on the CPU even where CUDA is present."""
REPO_MANIFEST = DEFAULT_BUNDLE / "configs" / "msd_hippocampus.csv"
"""The bundle's manifest of the MSD hippocampus cases (paths relative to the dataset folder)."""
TINY = {  # with 2 training subjects: ~50 planes, 3 steps an epoch
    "max_epochs": 1,
    "batch_size": 16,
    "num_workers": 0,
    "val_interval": 1,
    "empty_fraction": 0.05,
    "d_network_def#channels": [8, 16, 16, 32],
    **NARROW,
}
"""Overrides of ``train.yaml`` (config ids -> values) for a one-epoch CPU run with narrow networks."""


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` as a module (``benchmarks/`` is not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_random_weights(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    bundle: str | Path = DEFAULT_BUNDLE,
    network_id: str = "network_def",
) -> Path:
    """Save random-init weights of ``bundle``'s ``network_def`` (with ``overrides``) as an fp16 state dict.

    Args:
        path: the ``.pt`` file to write.
        overrides: config ids of ``configs/inference.yaml`` -> values (e.g. :data:`NARROW`).
        seed: torch seed of the initialisation.
        bundle: the bundle folder whose ``configs/inference.yaml`` defines the network.
        network_id: the config id of the network (e.g. ``member_network_defs#2``, the shipped 3D member).
    """
    parser = ConfigParser()
    parser.read_config(str(Path(bundle) / "configs" / "inference.yaml"))
    parser.update(dict(overrides or {}))
    torch.manual_seed(seed)
    state = parser.get_parsed_content(network_id).state_dict()
    return save_fp16_weights(state, path)


def narrow_bundle(root: str | Path, overrides: Mapping[str, Any] | None = None) -> Path:
    """Copy the bundle to ``root`` with :data:`NARROW` widths and random weights of those widths (every file of
    ``ckpt_paths``, each of its ``member_network_defs`` network).

    The copy's ``configs/inference.yaml`` is rewritten with the overrides applied (comments are lost), so any
    tool that reads the bundle (``monai.bundle run``, ``hippogan infer``/``segment --bundle``) gets the narrow
    network; shipped weights, if any, are not copied.

    Args:
        root: the new bundle folder (must not exist).
        overrides: further config ids -> values, applied after :data:`NARROW`.
    """
    root = Path(root)
    shutil.copytree(DEFAULT_BUNDLE, root, ignore=shutil.ignore_patterns("eval", "runs", "*.ts", "*.pt"))
    config = root / "configs" / "inference.yaml"
    parser = ConfigParser()
    parser.read_config(str(config))
    parser.update({**NARROW, **dict(overrides or {})})
    ConfigParser.export_config_file(parser.get(), config, fmt="yaml", sort_keys=False)
    (root / "models").mkdir(exist_ok=True)
    parser.update({"bundle_root": str(root)})
    own_networks = parser.get("member_network_defs") is not None
    for seed, path in enumerate(parser.get_parsed_content("ckpt_paths")):  # every ensemble member, its own network
        network_id = f"member_network_defs#{seed}" if own_networks else "network_def"
        save_random_weights(path, bundle=root, seed=seed, network_id=network_id)
    return root


def write_manifest(path: Path, n_train: int = 2, n_val: int = 4, label_of: dict | None = None) -> Path:
    """A manifest of the first real MSD subjects: ``n_train`` in fold 1, ``n_val`` in fold 0 (validation).

    Args:
        path: the CSV file to write (columns :data:`MANIFEST_COLUMNS`).
        n_train: subjects put in fold 1.
        n_val: subjects put in fold 0.
        label_of: subject id -> label path replacing that subject's label (e.g. a missing file).
    """
    with REPO_MANIFEST.open() as f:
        rows = list(csv.DictReader(f))[: n_train + n_val]
    for index, row in enumerate(rows):
        row["fold"] = 1 if index < n_train else 0
        row["label"] = (label_of or {}).get(row["subject_id"], row["label"])
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def moved_templates() -> dict[str, dict]:
    """The MNI152 template moved by known transforms, as :func:`simulate_acquisition` keyword arguments (``known``:
    the 4x4 MNI -> subject move): a rotation + shift in LPS; a rotation + shrink in LIA at 0.8 mm; an anisotropic
    stretch on a 1.2x1x1 mm grid, a 150 mm field of view and rescaled intensities."""
    from hippogan.transforms.registration import known_transform

    return {
        "rot20_shift30_LPS": dict(known=known_transform((20.0, -10.0, 5.0), (30.0, -20.0, 10.0)), axcodes="LPS"),
        "rot-20_scale0.85_LIA_0.8mm": dict(
            known=known_transform((-15.0, 20.0, -20.0), (-30.0, 30.0, -25.0), (0.85, 0.85, 0.85)), axcodes="LIA",
            spacing=(0.8,) * 3,
        ),
        "scale1.15_aniso_1.2mm_fov150_x1000": dict(
            known=known_transform((10.0, 0.0, -10.0), (0.0, -10.0, 15.0), (1.15, 1.05, 1.1)),
            spacing=(1.2, 1.0, 1.0), fov_z=150.0, gain=1000.0, offset=500.0,
        ),
    }  # fmt: skip
