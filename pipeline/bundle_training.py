"""Helpers of the bundle's training config (``bundles/hippocampus_resse_gan/configs/train.yaml``).

The config stays declarative: everything beyond a one-line ``$`` expression lives here.

- :func:`load_training_datalist`: manifest -> validated, labelled datalist (every bad row named at once).
- :class:`PlaneSliceDataset` + :class:`SetEpochHandler`: the paper's 2D training samples, 64x64 sagittal (or
  coronal, axial) planes of the cached 3D ROI volumes; every plane holding hippocampus plus a share of the empty ones,
  re-drawn at each epoch.
- :class:`TimeBudgetHandler`: stop the training after a wall-time budget (the benchmarks' fixed-time runs).
- :class:`EpochLogHandler`: one INFO line per epoch (iterations, seconds, samples/s, lr, mean losses) and
  ``epochs.csv`` in the run folder.
- :class:`GanProgressBar`: the trainer's tqdm bar as a config handler.
- :func:`prepare_output_dir`, :func:`resume_training`: clear errors before any work.
- :func:`export_generator`: the explicit step that writes the shippable generator weights (``models/model.pt``).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
import torch
from ignite.engine import Events
from monai.data import get_track_meta, set_track_meta
from monai.utils import CommonKeys
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
from torch.utils.data import Dataset

from hippogan.transforms.keys import IMAGE, LABEL
from hippogan.transforms.slicing import as_plain_tensor, pad_plane, view_axis

from .checkpoint import CheckpointHandler, atomic_save, load_checkpoint, resume
from .file_io import atomic_path, writable_folder
from .gan_trainer import GanLossKeys, attach_progress_bar
from .manifest import SUBJECT_ID, load_manifest
from .manifest_validation import validate_manifest
from .weights import save_fp16_weights

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "EPOCH_LOG_COLUMNS",
    "EpochLogHandler",
    "GanProgressBar",
    "PlaneSliceDataset",
    "SetEpochHandler",
    "TimeBudgetHandler",
    "export_generator",
    "load_training_datalist",
    "prepare_output_dir",
    "resume_training",
]

logger = logging.getLogger(__name__)


def load_training_datalist(
    manifest: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    label_map: str | Mapping | None = None,
    num_workers: int | None = None,
) -> list[dict]:
    """Load a manifest for training and check every row before any work.

    Args:
        manifest: CSV ``subject_id,image,label,fold`` (see :mod:`hippogan.pipeline.manifest`).
        dataset_dir: root that the manifest's relative paths resolve against.
        label_map: label-map spec applied before the label-value check (the same one the
            pre-processing applies); ``None`` checks values as stored.
        num_workers: reader threads of the validation (``None``: ``min(4, CPUs)``).

    Returns:
        One dict a row: ``subject_id``, ``image`` and ``label`` (absolute paths), ``fold``.

    Raises:
        ValueError: the manifest or dataset folder is missing, a row has no label, or any row is bad
            (a :class:`~hippogan.pipeline.manifest_validation.ManifestError` listing every file and reason).
    """
    manifest, dataset_dir = Path(manifest), Path(dataset_dir)
    if not manifest.is_file():
        raise ValueError(
            f"manifest {manifest}: not found; expected a CSV subject_id,image,label,fold (config key 'manifest')."
        )
    if not dataset_dir.is_dir():
        raise ValueError(
            f"dataset_dir {dataset_dir}: not a folder; the manifest's paths resolve against it "
            "(config key 'dataset_dir')."
        )
    rows = load_manifest(manifest, dataset_dir)
    unlabelled = [str(row[SUBJECT_ID]) for row in rows if LABEL not in row]
    if unlabelled:
        raise ValueError(
            f"manifest {manifest}: training needs a label for every row; none for {', '.join(unlabelled)}."
        )
    try:
        validate_manifest(rows, label_map, num_workers=num_workers)
    except ValueError as error:
        raise ValueError(f"manifest {manifest} (dataset_dir {dataset_dir}): {error}") from error
    logger.info("manifest %s: %d labelled subjects, all files valid", manifest, len(rows))
    return rows


class PlaneSliceDataset(Dataset):
    """2D planes of one view of preprocessed 3D ROI volumes: every plane holding label plus a share of the empty ones.

    The volumes are read once (from a ``CacheDataset`` with ``copy_cache=False`` the planes are views of the
    cache: no second copy). Which empty planes are kept is drawn anew by :meth:`set_epoch` with a generator
    seeded ``seed + epoch``, so a resumed run draws what the uninterrupted run drew. The number of planes, and
    so ``len(self)``, stays the same at every epoch (``DistributedSampler`` and ``epoch_length`` need that).

    Args:
        volumes: indexable samples, each ``{key: (C, X, Y, Z)}`` (e.g. a ``CacheDataset`` of
            :func:`~hippogan.transforms.chains.get_preprocessing` outputs: ``(1, 48, 64, 64)``).
        empty_fraction: share in ``[0, 1]`` of the planes without label kept at each epoch.
        seed: seed of the empty-plane draw.
        keys: keys sliced in step (same plane for image and label).
        label_key: key whose non-zero voxels mark a plane as labelled.
        transform: a dictionary transform applied to each plane (e.g. the random
            :func:`~hippogan.transforms.augmentation.get_plane_augmentation`), or None.
        view: ``sagittal`` (planes (y, z) sliced along x, the paper's), ``coronal`` (x, z) or ``axial`` (x, y).
        plane_size: planes smaller than this (H, W) are zero-padded to it, centred, as
            :func:`~hippogan.transforms.slicing.plane_inferer` pads them at inference (the ROI's 48x64 coronal
            and axial planes -> 64x64); None keeps them as they are.

    Items: ``{key: (C, H, W)}`` plain float tensors (``(1, 64, 64)`` for the default ROI and plane size).

    Raises:
        ValueError: ``empty_fraction`` outside [0, 1], no volumes, a missing key, or volumes whose keys
            differ in shape (the message names the sample).
    """

    def __init__(
        self,
        volumes: Sequence[Mapping[Hashable, Any]],
        empty_fraction: float = 0.1,
        seed: int = 0,
        keys: Sequence[Hashable] = (IMAGE, LABEL),
        label_key: Hashable = LABEL,
        transform: Callable[[dict], Mapping] | None = None,
        view: str = "sagittal",
        plane_size: Sequence[int] | None = (64, 64),
    ) -> None:
        self.axis = view_axis(view)
        self.plane_size = None if plane_size is None else tuple(int(v) for v in plane_size)
        if not 0.0 <= float(empty_fraction) <= 1.0:
            raise ValueError(f"PlaneSliceDataset: empty_fraction must be in [0, 1], got {empty_fraction}.")
        if label_key not in keys:
            raise ValueError(f"PlaneSliceDataset: label_key {label_key!r} must be one of keys {list(keys)}.")
        if len(volumes) == 0:
            raise ValueError("PlaneSliceDataset: no volumes to slice (empty training set).")
        self.keys = tuple(keys)
        self.transform = transform
        if callable(getattr(transform, "set_random_state", None)):
            transform.set_random_state(seed)  # MONAI's random transforms share one unseeded state otherwise
        self.seed = int(seed)
        self.volumes: list[dict[Hashable, torch.Tensor]] = []
        labelled, empty = [], []
        for index in range(len(volumes)):
            sample = volumes[index]
            name = sample.get(SUBJECT_ID, f"volume {index}")
            missing = [key for key in self.keys if key not in sample]
            if missing:
                raise ValueError(f"PlaneSliceDataset: {name} lacks keys {missing}; it has {list(sample)}.")
            tensors = {key: as_plain_tensor(sample[key]) for key in self.keys}
            shapes = {str(key): tuple(t.shape) for key, t in tensors.items()}
            spatial = {shape[1:] for shape in shapes.values()}
            if any(len(shape) != 4 for shape in shapes.values()) or len(spatial) != 1:
                raise ValueError(
                    f"PlaneSliceDataset: {name}: expected (C, X, Y, Z) volumes of one size, got {shapes}."
                )
            has_label = tensors[label_key].movedim(self.axis + 1, 0).flatten(1).ne(0).any(dim=1)
            for plane, flag in enumerate(has_label.tolist()):
                (labelled if flag else empty).append((index, plane))
            self.volumes.append(tensors)
        self.labelled = torch.tensor(labelled, dtype=torch.long).reshape(-1, 2)
        self.empty = torch.tensor(empty, dtype=torch.long).reshape(-1, 2)
        self.n_empty_kept = int(round(float(empty_fraction) * len(self.empty)))
        self._max_planes = max(v[label_key].shape[self.axis + 1] for v in self.volumes)
        self.set_epoch(0)
        logger.info(
            "%d volumes: %d labelled %s planes + %d of %d empty ones per epoch",
            len(self.volumes), len(self.labelled), view, self.n_empty_kept, len(self.empty),
        )  # fmt: skip

    def set_epoch(self, epoch: int) -> None:
        """Draw the empty planes of ``epoch`` (reproducible: seeded ``seed + epoch``)."""
        self.epoch = int(epoch)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        kept = self.empty[torch.randperm(len(self.empty), generator=generator)[: self.n_empty_kept]]
        index = torch.cat([self.labelled, kept])
        self.index = index[torch.argsort(index[:, 0] * self._max_planes + index[:, 1])]  # volume-major order

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[Hashable, torch.Tensor]:
        volume, index = self.index[item].tolist()
        plane = {key: self.volumes[volume][key].select(self.axis + 1, index) for key in self.keys}
        if self.plane_size is not None:
            plane = {key: pad_plane(value, self.plane_size) for key, value in plane.items()}
        if self.transform is None:
            return plane
        # plain tensors through the random transforms: 3x faster than with MONAI's meta tracking
        tracking = get_track_meta()
        set_track_meta(False)
        try:
            out = self.transform(plane)
        finally:
            set_track_meta(tracking)
        return {key: as_plain_tensor(out[key]) for key in self.keys}


class SetEpochHandler:
    """ignite handler calling ``target.set_epoch(engine.state.epoch)`` at every ``EPOCH_STARTED``.

    Attach it to the trainer for a dataset whose samples change per epoch (:class:`PlaneSliceDataset`);
    ignite builds each epoch's data iterator after ``EPOCH_STARTED``, so the new draw reaches the workers.

    Args:
        target: any object with ``set_epoch(epoch: int)``.
    """

    def __init__(self, target: Any) -> None:
        if not callable(getattr(target, "set_epoch", None)):
            raise ValueError(f"SetEpochHandler: target {type(target).__name__} has no set_epoch(epoch) method.")
        self.target = target

    def attach(self, engine: Engine) -> None:
        """Register on ``engine``'s ``EPOCH_STARTED``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.target.set_epoch(engine.state.epoch)


class TimeBudgetHandler:
    """ignite handler that stops the training once ``minutes`` of wall time have passed since the run started.

    The check runs after every iteration; the iteration that passes the budget ends the epoch early
    (``terminate_epoch``), so that epoch's ``EPOCH_COMPLETED`` handlers still run (validation, ``last.pt``,
    ``best.pt``, the epoch log), then the run stops. Under DDP the ranks agree on the stop with an ``all_reduce``
    of the flag after each iteration, so they all stop at the same iteration (a rank stopping alone would hang
    the others). The clock starts at the run's ``STARTED`` event (a resumed run gets the whole budget again);
    validation and checkpoint time count. A per-iteration learning-rate schedule (``train_cpu.yaml``'s
    ``OneCycleLR``) is not rescaled: a budget that stops the run early leaves the rate where it is.

    Args:
        minutes: the budget; ``None`` disables the handler (``attach`` does nothing).

    Raises:
        ValueError: ``minutes`` is not positive.
    """

    def __init__(self, minutes: float | None = None) -> None:
        if minutes is not None and not float(minutes) > 0:
            raise ValueError(f"TimeBudgetHandler: minutes must be > 0 or None (no budget), got {minutes}.")
        self.seconds = None if minutes is None else 60.0 * float(minutes)
        self._start = 0.0
        self.stopped_at: int | None = None  # the iteration after which the budget stopped the run

    def attach(self, engine: Engine) -> None:
        """Register on ``engine``'s ``STARTED``, ``ITERATION_COMPLETED``, ``EPOCH_COMPLETED`` (no budget: nothing)."""
        if self.seconds is None:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._stop)

    def _started(self, engine: Engine) -> None:
        self._start = time.perf_counter()
        self.stopped_at = None

    def _check(self, engine: Engine) -> None:
        over = float(time.perf_counter() - self._start > self.seconds)
        if idist.get_world_size() > 1:
            over = idist.all_reduce(over, op="MAX")
        if over:
            self.stopped_at = engine.state.iteration
            logger.info(
                "time budget of %.4g min reached at epoch %d, iteration %d: closing the epoch and stopping",
                self.seconds / 60, engine.state.epoch, engine.state.iteration,
            )  # fmt: skip
            engine.terminate_epoch()

    def _stop(self, engine: Engine) -> None:
        if self.stopped_at is not None:
            engine.terminate()


EPOCH_LOG_COLUMNS = ("epoch", "iterations", "seconds", "samples", "samples_per_s", "lr", *(str(k) for k in GanLossKeys))
"""Columns of ``epochs.csv`` (:class:`EpochLogHandler`): losses are means over the epoch's iterations, ``seconds``
the training time of the epoch (validation excluded), ``lr`` the generator's learning rate at its end."""


class EpochLogHandler:
    """ignite handler logging one INFO line per epoch and keeping the rows in ``csv_path``.

    The line: epoch, iterations, training seconds (from ``EPOCH_STARTED`` to the epoch's last iteration, so
    validation is not counted), samples per second (2D planes or 3D volumes, the batch's first dimension), the
    generator's learning rate and the epoch means of the four :class:`~hippogan.pipeline.gan_trainer.GanLossKeys`
    losses. The CSV (columns :data:`EPOCH_LOG_COLUMNS`) is rewritten atomically after every epoch; rows of a
    previous run with a smaller epoch number are kept, so a resumed run continues the file.

    Args:
        csv_path: the CSV to write (e.g. ``<output_dir>/epochs.csv``); ``None`` only logs.
        optimizer: whose first parameter group's ``lr`` is logged; ``None``: the engine's ``g_optimizer`` (or
            ``optimizer``).
        name: the logger's name.
    """

    def __init__(
        self,
        csv_path: str | os.PathLike | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        name: str | None = None,
    ) -> None:
        self.csv_path = None if csv_path is None else Path(csv_path)
        self.optimizer = optimizer
        self.logger = logging.getLogger(name or __name__)
        self.rows: list[dict[str, float]] = []
        self._reset()

    def _reset(self) -> None:
        self._epoch_start = self._last_iteration = time.perf_counter()
        self._iterations = self._samples = 0
        self._sums = dict.fromkeys((str(k) for k in GanLossKeys), 0.0)

    def attach(self, engine: Engine) -> None:
        """Register on ``engine``'s ``EPOCH_STARTED``, ``ITERATION_COMPLETED`` and ``EPOCH_COMPLETED``."""
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self._reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _iteration(self, engine: Engine) -> None:
        output = engine.state.output
        first = output[0] if isinstance(output, (list, tuple)) else output  # decollated: one dict a sample
        self._samples += len(output) if isinstance(output, (list, tuple)) else int(output[CommonKeys.IMAGE].shape[0])
        for key in self._sums:
            self._sums[key] += float(first.get(key, math.nan))
        self._iterations += 1
        self._last_iteration = time.perf_counter()

    def _epoch(self, engine: Engine) -> None:
        optimizer = self.optimizer or getattr(engine, "g_optimizer", None) or getattr(engine, "optimizer", None)
        seconds = self._last_iteration - self._epoch_start
        n = max(self._iterations, 1)
        row = {
            "epoch": engine.state.epoch,
            "iterations": self._iterations,
            "seconds": seconds,
            "samples": self._samples,
            "samples_per_s": self._samples / seconds if seconds > 0 else math.nan,
            "lr": optimizer.param_groups[0]["lr"] if optimizer is not None else math.nan,
            **{key: total / n for key, total in self._sums.items()},
        }
        self.logger.info(
            "epoch %d: %d iterations, %.1f s, %.1f samples/s, lr %.3g, g_loss %.4f (sup %.4f, adv %.4f), d_loss %.4f",
            row["epoch"], row["iterations"], row["seconds"], row["samples_per_s"], row["lr"], row["g_loss"],
            row["g_sup_loss"], row["g_adv_loss"], row["d_loss"],
        )  # fmt: skip
        if self.csv_path is not None and not self.rows and self.csv_path.is_file():  # resumed: keep earlier epochs
            with self.csv_path.open(newline="") as f:
                self.rows = list(csv.DictReader(f))
        self.rows = [r for r in self.rows if int(r["epoch"]) < row["epoch"]] + [row]
        if self.csv_path is not None:
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.csv_path) as tmp, tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=EPOCH_LOG_COLUMNS)
                writer.writeheader()
                writer.writerows(self.rows)


class GanProgressBar:
    """Config handler wrapping :func:`~hippogan.pipeline.gan_trainer.attach_progress_bar` (tqdm bar of the four losses).

    Args:
        persist: keep each finished epoch's bar on screen.
        tqdm_kwargs: other ``tqdm`` arguments (``ncols``, ``mininterval``, ...).
    """

    def __init__(self, persist: bool = False, **tqdm_kwargs: Any) -> None:
        self.persist = persist
        self.tqdm_kwargs = tqdm_kwargs

    def attach(self, engine: Engine) -> None:
        """Attach the bar to ``engine`` (the trainer)."""
        attach_progress_bar(engine, persist=self.persist, **self.tqdm_kwargs)


def prepare_output_dir(
    path: str | os.PathLike, ckpt_dir: str | os.PathLike | None = None, resume: Any = False
) -> Path:
    """Create the run's output folder and check it is writable, before any work.

    Args:
        path: the run's output folder (config ``output_dir``).
        ckpt_dir: its checkpoint folder (config ``ckpt_dir``): a fresh run (``resume`` false) refuses to start where
            it already holds ``last.pt`` or ``best.pt``, which the new run would overwrite.
        resume: the config's ``resume`` (false, true or a checkpoint path).

    Raises:
        ValueError: the folder cannot be created or written, or holds another run's checkpoints and ``resume`` is
            false (the message names the folder and what to do).
    """
    starting = resume is None or resume is False or str(resume).strip().lower() in ("", "false", "none")
    if starting and ckpt_dir is not None:
        found = [Path(ckpt_dir) / name for name in ("last.pt", "best.pt") if (Path(ckpt_dir) / name).is_file()]
        if found:
            raise ValueError(
                f"output_dir {path} already holds a training run ({found[0]}): continue it with resume=true "
                "(hippogan train --resume, hippogan cv --resume) or choose another output_dir; nothing was overwritten."
            )
    try:
        return writable_folder(path, "output_dir")
    except ValueError as error:
        raise ValueError(f"{error}; pass a writable folder (config key 'output_dir').") from error


def resume_training(
    trainer: Engine,
    checkpoint: str | os.PathLike | bool | None,
    ckpt_dir: str | os.PathLike | None = None,
    handlers: Sequence[Any] = (),
) -> dict | None:
    """Continue a run where it stopped: :func:`hippogan.pipeline.checkpoint.resume` behind the config key ``resume``.

    Args:
        trainer: the freshly built trainer.
        checkpoint: ``False``/``None``/``""`` (start afresh), ``True`` (``last.pt`` of the run: its
            :class:`CheckpointHandler`'s, else ``<ckpt_dir>/last.pt``) or a checkpoint path.
        ckpt_dir: the run's checkpoint folder (config ``ckpt_dir``); used by ``True`` where no checkpoint handler
            runs (DDP ranks other than 0).
        handlers: the run's handlers (config ``train#rank0_handlers``); the :class:`CheckpointHandler` among them
            gets its best-metric tracker back, so ``best.pt`` is only replaced by a better model.

    Returns:
        the config stored in the checkpoint, or ``None`` when not resuming.

    Raises:
        ValueError: the checkpoint is missing or does not fit the trainer (nothing is loaded or written then).
    """
    if isinstance(checkpoint, str) and checkpoint.strip().lower() in ("", "false", "none", "true"):
        checkpoint = checkpoint.strip().lower() == "true"
    if checkpoint is None or checkpoint is False:
        return None
    checkpoint_handler = next((h for h in handlers or () if isinstance(h, CheckpointHandler)), None)
    if checkpoint is True:
        if checkpoint_handler is None and ckpt_dir is None:
            raise ValueError("resume=true needs the run's ckpt_dir to find last.pt; pass a checkpoint path.")
        checkpoint = checkpoint_handler.last_path if checkpoint_handler is not None else Path(ckpt_dir) / "last.pt"
    path = Path(checkpoint)
    if not path.is_file():
        raise ValueError(f"resume: checkpoint {path} not found (config key 'resume').")
    return resume(trainer, path, checkpoint_handler)


def export_generator(
    checkpoint: str | os.PathLike,
    out_path: str | os.PathLike,
    fp16: bool = True,
    key: str = "g_network",
) -> Path:
    """Write the shippable generator weights (the bundle's ``models/model.pt``) from a training checkpoint.

    The file is a plain ``state_dict`` (``torch.load(..., weights_only=True)``), ``DistributedDataParallel``'s
    ``module.`` prefix removed, floating-point tensors cast to float16 when ``fp16`` (half the size;
    ``load_state_dict`` casts them back into a float32 network). Written atomically.

    Args:
        checkpoint: ``best.pt`` or ``last.pt`` of a run.
        out_path: the weights file to write.
        fp16: store floating-point tensors as float16.
        key: the network to export (``"g_network"``, or ``"d_network"``).

    Returns:
        ``out_path`` as a ``Path``.

    Raises:
        ValueError: the checkpoint is missing, unreadable or lacks ``key``.
    """
    if not Path(checkpoint).is_file():
        raise ValueError(f"checkpoint {checkpoint}: not found (expected best.pt or last.pt of a training run).")
    state = load_checkpoint(checkpoint, "cpu")
    if key not in state:
        raise ValueError(f"checkpoint {checkpoint} has no '{key}'; it holds {sorted(state)}.")
    weights = OrderedDict(state[key])
    consume_prefix_in_state_dict_if_present(weights, "module.")
    path = save_fp16_weights(weights, out_path) if fp16 else atomic_save(weights, out_path)
    epoch = state.get("engine", {}).get("epoch")
    logger.info("exported %s of %s (epoch %s) to %s%s", key, checkpoint, epoch, path, " (float16)" if fp16 else "")
    return path
