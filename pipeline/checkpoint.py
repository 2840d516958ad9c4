"""Checkpoints of the conditional GAN trainer: atomic writes, ``weights_only`` loading, resuming.

A checkpoint is a ``torch.save`` of a plain dict that ``torch.load(path, weights_only=True)``
reads back (tensors, numbers, strings and containers only, no pickled objects)::

    {
        "g_network": state_dict, "g_optimizer": state_dict, "g_scaler": state_dict,
        "d_network": state_dict, "d_optimizer": state_dict, "d_scaler": state_dict,  # absent without D
        "engine": {"epoch", "iteration", "epoch_length", "max_epochs", "best_metric", "best_metric_epoch"},
        "rng": {"torch": ByteTensor, "cuda": [ByteTensor, ...]},
        "config": {...},  # JSON types only
        "best": {"best_metric", "best_metric_epoch"},  # the key-metric tracker of CheckpointHandler
    }

Files are written to a temporary file in the target folder and moved over the old one with
``os.replace``, so a crash mid-write leaves the previous checkpoint intact. MONAI's
``CheckpointSaver`` is not used: it writes with ``atomic=False`` and deletes the previous final
checkpoint before writing the new one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Events
from monai.engines.utils import default_metric_cmp_fn

from .file_io import atomic_path

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "CheckpointHandler",
    "atomic_save",
    "checkpoint_state",
    "load_checkpoint",
    "load_network_weights",
    "plain_config",
    "resume",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

NETWORK_KEYS = ("g_network", "d_network")
OPTIMIZER_KEYS = ("g_optimizer", "d_optimizer")
SCALER_KEYS = ("g_scaler", "d_scaler")
_MAX_LISTED = 10


def plain_config(config: Mapping | None) -> dict:
    """Return ``config`` with JSON types only (safe for ``weights_only`` loading).

    Tuples become lists, non-string keys strings, and other objects (paths, devices, dtypes) their
    ``str()``. ``None`` gives ``{}``.

    Raises:
        ValueError: when ``config`` is not a mapping.
    """
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping (a plain dict), got {type(config).__name__}.")
    return json.loads(json.dumps(dict(config), default=str))


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (:func:`~hippogan.pipeline.file_io.atomic_path`), synced to disk.

    The folder is created if needed. On any error the temporary file is removed and ``path``
    keeps its previous content. Returns ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary, temporary.open("wb") as stream:
        torch.save(obj, stream)
        stream.flush()
        os.fsync(stream.fileno())
    return path


def checkpoint_state(trainer: Engine, config: Mapping | None = None, best: Mapping | None = None) -> dict:
    """Collect the checkpoint dict (see the module docstring) from a trainer.

    Args:
        trainer: a :class:`~hippogan.pipeline.gan_trainer.ConditionalGanTrainer` (any engine with some
            of the attributes ``g_network``, ``d_network``, ``g_optimizer``, ``d_optimizer``,
            ``g_scaler``, ``d_scaler``; those that are ``None`` or absent are skipped).
        config: the run's configuration, stored through :func:`plain_config`.
        best: the key-metric tracker of :class:`CheckpointHandler` (``state_dict()``).
    """
    state: dict[str, Any] = {}
    for key in NETWORK_KEYS + OPTIMIZER_KEYS + SCALER_KEYS:
        obj = getattr(trainer, key, None)
        if obj is not None:
            state[key] = obj.state_dict()
    engine_state = trainer.state
    state["engine"] = {
        "epoch": int(engine_state.epoch),
        "iteration": int(engine_state.iteration),
        "epoch_length": None if engine_state.epoch_length is None else int(engine_state.epoch_length),
        "max_epochs": None if engine_state.max_epochs is None else int(engine_state.max_epochs),
        "best_metric": float(getattr(engine_state, "best_metric", -1)),
        "best_metric_epoch": int(getattr(engine_state, "best_metric_epoch", -1)),
    }
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state["rng"] = rng
    state["config"] = plain_config(config)
    if best is not None:
        state["best"] = dict(best)
    return state


def save_checkpoint(
    path: str | os.PathLike, trainer: Engine, config: Mapping | None = None, best: Mapping | None = None
) -> Path:
    """Write :func:`checkpoint_state` of ``trainer`` to ``path`` with :func:`atomic_save`; returns the path."""
    return atomic_save(checkpoint_state(trainer, config, best), path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict:
    """Read a checkpoint with ``torch.load(..., weights_only=True)``.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a readable ``weights_only`` checkpoint dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise ValueError(f"cannot read checkpoint {path} with torch.load(weights_only=True): {error}") from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {path} holds a {type(checkpoint).__name__}, expected a dict.")
    return checkpoint


def load_network_weights(
    path: str | os.PathLike,
    network: torch.nn.Module,
    key: str = "g_network",
    map_location: str | torch.device | None = "cpu",
) -> None:
    """Load one network's weights from a checkpoint (e.g. the generator for inference).

    Args:
        path: checkpoint file.
        network: the module to load into; its keys and shapes must match exactly.
        key: ``"g_network"`` or ``"d_network"``.
        map_location: passed to ``torch.load``.

    Raises:
        ValueError: when ``key`` is absent or the weights do not fit ``network`` (the message
            names the file and the mismatched keys).
    """
    checkpoint = load_checkpoint(path, map_location)
    if key not in checkpoint:
        raise ValueError(f"checkpoint {path} has no '{key}'; it holds {sorted(checkpoint)}.")
    _check_network(path, key, network, checkpoint[key])
    network.load_state_dict(checkpoint[key])


def resume(
    trainer: Engine,
    path: str | os.PathLike,
    checkpoint_handler: CheckpointHandler | None = None,
    restore_rng: bool = True,
    map_location: str | torch.device | None = None,
) -> dict:
    """Restore networks, optimisers, AMP scalers and the epoch counter of ``trainer`` from ``path``.

    Training then continues at the epoch after the saved one: a run saved after epoch 2 and
    resumed with ``max_epochs=4`` trains epochs 3 and 4 only. Checkpoints count completed epochs:
    one written mid-epoch resumes at the start of that epoch. Everything is checked before anything
    is loaded, so a failing resume leaves the trainer untouched.

    Args:
        trainer: the freshly built trainer (same networks, optimisers and data), not yet run.
        path: checkpoint written by :func:`save_checkpoint` or :class:`CheckpointHandler`.
        checkpoint_handler: when given, its best-metric tracker is restored too, so ``best.pt`` is
            only overwritten by a better model.
        restore_rng: restore torch's CPU (and CUDA) random state, so shuffling and dropout continue
            as in an uninterrupted run (per-transform MONAI random states are not included).
        map_location: ``torch.load`` target, default the trainer's device.

    Returns:
        the stored config (a plain dict).

    Raises:
        ValueError: when the checkpoint's keys or shapes do not fit the trainer (the message names
            the file and the keys), or when it has no epoch left to train under ``max_epochs``.
    """
    device = getattr(trainer.state, "device", None)
    checkpoint = load_checkpoint(path, device if map_location is None else map_location)
    wanted = {key for key in NETWORK_KEYS + OPTIMIZER_KEYS if getattr(trainer, key, None) is not None} | {"engine"}
    stored = {key for key in NETWORK_KEYS + OPTIMIZER_KEYS + ("engine",) if key in checkpoint}
    if wanted != stored:
        raise ValueError(
            f"checkpoint {path} does not fit the trainer: missing keys {sorted(wanted - stored)}, "
            f"unexpected keys {sorted(stored - wanted)}."
        )
    for key in NETWORK_KEYS:
        if key in wanted:
            _check_network(path, key, getattr(trainer, key), checkpoint[key])
    for key in OPTIMIZER_KEYS:
        if key in wanted:
            _check_optimizer(path, key, getattr(trainer, key), checkpoint[key])
    epoch = int(checkpoint["engine"]["epoch"])
    max_epochs = trainer.state.max_epochs
    if max_epochs is not None and epoch >= max_epochs:
        raise ValueError(
            f"checkpoint {path} has {epoch} completed epochs and the trainer's max_epochs is {max_epochs}: "
            f"nothing left to train; build the trainer with max_epochs > {epoch} to continue."
        )

    for key in NETWORK_KEYS + OPTIMIZER_KEYS:
        if key in wanted:
            getattr(trainer, key).load_state_dict(checkpoint[key])
    for key in SCALER_KEYS:
        scaler = getattr(trainer, key, None)
        if scaler is not None and scaler.is_enabled() and checkpoint.get(key):
            scaler.load_state_dict(checkpoint[key])
    engine_state = checkpoint["engine"]
    epoch_length = trainer.state.epoch_length or engine_state["epoch_length"]
    trainer.load_state_dict({"epoch": epoch, "epoch_length": epoch_length, "max_epochs": max_epochs})
    trainer.state.best_metric = engine_state.get("best_metric", -1)
    trainer.state.best_metric_epoch = engine_state.get("best_metric_epoch", -1)
    if restore_rng and "rng" in checkpoint:
        torch.set_rng_state(checkpoint["rng"]["torch"].cpu())
        cuda_states = checkpoint["rng"].get("cuda")
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([state.cpu() for state in cuda_states])
    if checkpoint_handler is not None and "best" in checkpoint:
        checkpoint_handler.load_state_dict(checkpoint["best"])
    logger.info("resumed from %s after epoch %d (iteration %d)", path, epoch, trainer.state.iteration)
    return dict(checkpoint.get("config", {}))


class CheckpointHandler:
    """ignite handler writing ``last.pt`` every ``save_interval`` epochs and ``best.pt`` on a better key metric.

    Both files hold the full :func:`checkpoint_state` (both networks, both optimisers, epoch,
    config) and are written atomically. Attach it to the trainer; when the key metric comes from
    a validation evaluator, pass that evaluator as ``metric_engine`` (``best.pt`` is then written
    when the evaluator completes an epoch) and attach ``ValidationHandler`` before this handler so
    that ``last.pt`` records the updated best-metric tracker.

    Args:
        save_dir: folder of the checkpoints (created if needed).
        config: the run's configuration, stored in every checkpoint (JSON types only).
        key_metric_name: metric deciding ``best.pt``; ``None`` uses the metric engine's key metric
            (``state.key_metric_name``), and no ``best.pt`` is written when it has none.
        metric_engine: engine whose ``state.metrics`` holds the key metric; default the trainer.
        metric_cmp_fn: ``(current, best) -> bool``, True when ``current`` is better (default: greater).
        save_interval: write ``last.pt`` every this many epochs (>= 1).
        last_filename: file name of the latest checkpoint.
        best_filename: file name of the best checkpoint.

    Raises:
        ValueError: when ``save_interval < 1`` or the two file names are equal.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        config: Mapping | None = None,
        key_metric_name: str | None = None,
        metric_engine: Engine | None = None,
        metric_cmp_fn: Callable[[Any, Any], bool] = default_metric_cmp_fn,
        save_interval: int = 1,
        last_filename: str = "last.pt",
        best_filename: str = "best.pt",
    ) -> None:
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1 epoch, got {save_interval}.")
        if last_filename == best_filename:
            raise ValueError(f"last_filename and best_filename must differ, got both '{last_filename}'.")
        self.save_dir = Path(save_dir)
        self.config = plain_config(config)
        self.key_metric_name = key_metric_name
        self.metric_engine = metric_engine
        self.metric_cmp_fn = metric_cmp_fn
        self.save_interval = save_interval
        self.last_path = self.save_dir / last_filename
        self.best_path = self.save_dir / best_filename
        self.best_metric = -1.0
        self.best_metric_epoch = -1
        self._trainer: Engine | None = None
        self._saved_epoch = 0

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (the trainer) and, for ``best.pt``, on the metric engine.

        Temporary files a killed run left in ``save_dir`` (``.last.pt.*.tmp*``) are removed here.
        """
        for stale in self.save_dir.glob(".*.pt.*.tmp*") if self.save_dir.is_dir() else ():
            stale.unlink(missing_ok=True)
            logger.info("removed %s, left by an interrupted checkpoint write", stale)
        self._trainer = engine
        metric_engine = engine if self.metric_engine is None else self.metric_engine
        if self.key_metric_name is None:
            self.key_metric_name = getattr(metric_engine.state, "key_metric_name", None)
        if self.key_metric_name is not None:
            metric_engine.add_event_handler(Events.EPOCH_COMPLETED, self.save_best)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save_last)

    def state_dict(self) -> dict:
        """The best-metric tracker, ``{"best_metric": float, "best_metric_epoch": int}``."""
        return {"best_metric": float(self.best_metric), "best_metric_epoch": int(self.best_metric_epoch)}

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore the tracker from :meth:`state_dict` (done by :func:`resume`)."""
        self.best_metric = float(state_dict["best_metric"])
        self.best_metric_epoch = int(state_dict["best_metric_epoch"])

    def _save(self, path: Path, trainer: Engine) -> None:
        """Write a checkpoint; an ``OSError`` becomes one ``ValueError`` line naming the last good checkpoint."""
        try:
            save_checkpoint(path, trainer, self.config, self.state_dict())
        except OSError as error:
            last = f"{self.last_path} (epoch {self._saved_epoch})" if self._saved_epoch else "none this run"
            raise ValueError(
                f"cannot write checkpoint {path}: {error.strerror or error}; last good checkpoint: {last}"
            ) from None
        if path == self.last_path:
            self._saved_epoch = int(trainer.state.epoch)

    def save_last(self, engine: Engine) -> None:
        """Write ``last.pt`` for ``engine`` (the trainer)."""
        self._save(self.last_path, engine)
        logger.info("saved %s (epoch %d)", self.last_path, engine.state.epoch)

    def save_best(self, metric_engine: Engine) -> None:
        """Write ``best.pt`` when the key metric of ``metric_engine`` beats the best so far.

        Raises:
            ValueError: when the metric engine has no metric named ``key_metric_name``.
        """
        metrics = metric_engine.state.metrics
        if self.key_metric_name not in metrics:
            raise ValueError(f"key metric '{self.key_metric_name}' not in the engine's metrics {sorted(metrics)}.")
        value = metrics[self.key_metric_name]
        value = float(value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value)
        if math.isnan(value):
            logger.warning("key metric '%s' is NaN: %s not updated", self.key_metric_name, self.best_path)
            return
        if self.best_metric_epoch != -1 and not self.metric_cmp_fn(value, self.best_metric):
            return
        trainer = metric_engine if self._trainer is None else self._trainer
        self.best_metric, self.best_metric_epoch = value, int(trainer.state.epoch)
        self._save(self.best_path, trainer)
        logger.info(
            "saved %s (%s = %.6g, epoch %d)", self.best_path, self.key_metric_name, value, self.best_metric_epoch
        )


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return f"[{shown}{f', ... ({len(keys)} in all)' if len(keys) > _MAX_LISTED else ''}]"


def _check_network(path: str | os.PathLike, key: str, network: torch.nn.Module, saved: Mapping) -> None:
    """Raise ``ValueError`` naming the file and keys when ``saved`` does not fit ``network`` exactly."""
    own = network.state_dict()
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    shapes = [
        f"{name} {tuple(saved[name].shape)} in file vs {tuple(own[name].shape)} in network"
        for name in own
        if name in saved and tuple(saved[name].shape) != tuple(own[name].shape)
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"checkpoint {path}: '{key}' does not fit the network: missing keys {_listed(missing)}, "
            f"unexpected keys {_listed(unexpected)}, shape mismatches {_listed(shapes)}."
        )


def _check_optimizer(path: str | os.PathLike, key: str, optimizer: torch.optim.Optimizer, saved: Mapping) -> None:
    """Raise ``ValueError`` naming the file when ``saved``'s parameter groups differ from ``optimizer``'s."""
    own_sizes = [len(group["params"]) for group in optimizer.param_groups]
    saved_sizes = [len(group["params"]) for group in saved.get("param_groups", [])]
    if own_sizes != saved_sizes:
        raise ValueError(
            f"checkpoint {path}: '{key}' does not fit the optimiser: parameter groups of sizes {saved_sizes} "
            f"in file vs {own_sizes} in the optimiser."
        )
