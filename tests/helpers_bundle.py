"""Test helpers: random generator weights of the bundle's ``network_def``, and a narrow bundle copy for plumbing.

The weights are saved as the shipped ``models/model.pt`` is (an fp16 state dict), so they load through the
bundle's own config and checkpoint loader. Import from a test module as ``from helpers_bundle import ...``
(pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from hippogan.pipeline.inference import DEFAULT_BUNDLE

__all__ = ["CPU", "NARROW", "narrow_bundle", "save_random_weights"]

NARROW = {"network_def#channels": [8, 8, 16, 16], "network_def#decoder_channels": [32, 16, 16, 16, 16]}
"""Narrow generator widths for plumbing tests (config ids of ``inference.yaml``)."""
CPU = {"device": "$torch.device('cpu')"}
"""Override that keeps a test on the CPU even where CUDA is present."""


def save_random_weights(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    bundle: str | Path = DEFAULT_BUNDLE,
) -> Path:
    """Save random-init weights of ``bundle``'s ``network_def`` (with ``overrides``) as an fp16 state dict.

    Args:
        path: the ``.pt`` file to write.
        overrides: config ids of ``configs/inference.yaml`` -> values (e.g. :data:`NARROW`).
        seed: torch seed of the initialisation.
        bundle: the bundle folder whose ``configs/inference.yaml`` defines the network.
    """
    parser = ConfigParser()
    parser.read_config(str(Path(bundle) / "configs" / "inference.yaml"))
    parser.update(dict(overrides or {}))
    torch.manual_seed(seed)
    state = parser.get_parsed_content("network_def").state_dict()
    path = Path(path)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)
    return path


def narrow_bundle(root: str | Path, overrides: Mapping[str, Any] | None = None) -> Path:
    """Copy the bundle to ``root`` with :data:`NARROW` widths and random ``models/model.pt`` of those widths.

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
    save_random_weights(root / "models" / "model.pt", bundle=root)
    return root
