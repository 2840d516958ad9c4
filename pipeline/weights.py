"""Generator weights: load them for inference with clear errors, save them as the shipped fp16 state dict."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from hippogan.networks import ProbabilityEnsemble

from .checkpoint import atomic_save

__all__ = ["load_generator", "save_fp16_weights"]


def load_generator(
    weights: str | os.PathLike | Sequence[str | os.PathLike],
    network: torch.nn.Module | Mapping[str, Any] | Sequence[torch.nn.Module | Mapping[str, Any]],
    device: str | torch.device | None = None,
    views: Sequence[str] | None = None,
    volume_roi_size: Sequence[int] | None = None,
    contexts: Sequence[int] | None = None,
) -> torch.nn.Module:
    """Build the generator and load its weights for inference (eval mode, float32, on ``device``).

    Args:
        weights: a ``torch.save`` of the generator's state dict (fp16 or fp32, read with
            ``weights_only=True``), or a trainer checkpoint holding it under ``"g_network"``; several files: one
            generator each, averaged as a :class:`~hippogan.networks.ProbabilityEnsemble`.
        network: the module, or its config (``{"_target_": "hippogan.networks.ResSEGenerator", ...}``,
            the bundle's ``network_def``), copied for each further file; or a list of them, one per file
            (members of other widths, or 3D members with the view ``volume``).
        device: target device (default CPU).
        views: with several files, the view each generator was trained on (``sagittal``, ``coronal``,
            ``axial``): a multi-view ensemble that takes 3D ROI batches (see
            :class:`~hippogan.networks.ProbabilityEnsemble`); None: the members take the same 2D planes.
        volume_roi_size: with ``views``, the window the ``volume`` (3D) members run on (their training ROI).
        contexts: with ``views``, the sagittal neighbours each generator takes on either side as channels (the
            ``context`` it trained with; 2.5D generators beside 1-channel ones); None: none.

    Raises:
        FileNotFoundError: a weights file does not exist.
        ValueError: the file is not a readable state dict, its keys or shapes do not fit the network (the
            message names the file and the first differing keys), or it holds NaN or infinite values.
    """
    paths = [weights] if isinstance(weights, (str, os.PathLike)) else list(weights)
    if not paths:
        raise ValueError("load_generator: no weights file given.")
    if isinstance(network, (torch.nn.Module, Mapping)):
        first = _build(network)
        networks = [first] + [copy.deepcopy(first) for _ in paths[1:]]
    elif len(network) == len(paths):
        networks = [_build(n) for n in network]
    else:
        raise ValueError(f"load_generator: {len(paths)} weights files but {len(network)} networks; give one per file.")
    members = [_load_weights(Path(path), net) for path, net in zip(paths, networks)]
    if len(members) == 1 and views is None:
        model = members[0]
    else:
        model = ProbabilityEnsemble(members, views=views, volume_roi_size=volume_roi_size, contexts=contexts)
    return model.float().to(torch.device("cpu") if device is None else device).eval()


def _build(network: torch.nn.Module | Mapping[str, Any]) -> torch.nn.Module:
    """The module itself, or the one its config (``_target_`` and arguments) builds."""
    if isinstance(network, Mapping):
        return ConfigParser({"network": dict(network)}).get_parsed_content("network")
    return network


def _load_weights(path: Path, network: torch.nn.Module) -> torch.nn.Module:
    """Load the state dict in ``path`` into ``network`` after the checks of :func:`load_generator`."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a file that is not a weights_only pickle
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"cannot read weights {path}: not a PyTorch state dict readable with weights_only=True ({first_line})"
        ) from error
    if isinstance(state, Mapping) and "g_network" in state:
        state = state["g_network"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights {path}: expected a state dict of tensors (or a checkpoint with 'g_network').")
    _check_state_dict(path, network, state)
    broken = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:
        raise ValueError(
            f"weights {path}: {len(broken)} tensor(s) hold NaN or infinite values (e.g. {', '.join(broken[:3])}); "
            "the file is corrupt or comes from a diverged training."
        )
    network.load_state_dict(state)  # copies into the module's float32 parameters
    return network


def _check_state_dict(path: Path, network: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` naming ``path`` when ``state`` does not fit ``network`` key for key, shape for shape."""
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        problems = [
            f"{len(items)} {what} (e.g. {', '.join(items[:3])})"
            for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes))
            if items
        ]
        raise ValueError(
            f"weights {path} do not fit the network {type(network).__name__}: {'; '.join(problems)}. "
            "Were they trained with another network_def (architecture or widths)?"
        )


def save_fp16_weights(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write ``state`` as the bundle's ``models/model.pt`` is stored, atomically: floating-point tensors cast to
    float16 (half the size; ``load_state_dict`` casts them back into a float32 network)."""
    return atomic_save({name: t.half() if t.is_floating_point() else t for name, t in state.items()}, path)
