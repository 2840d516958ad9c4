"""``hippogan train`` and ``hippogan export``: run the bundle's training config, export the generator weights.

``hippogan train`` is a thin front end to the bundle's ``configs/train.yaml`` run as a MONAI
``ConfigWorkflow`` (initialize, check_properties, run, finalize); every config key can be overridden with
``key=value`` (YAML values, ``#`` for nested keys)::

    hippogan train --dataset-dir ../shared/data/msd_hippocampus --output-dir runs/fold0 --fold 0 \\
        max_epochs=50 "network_def#channels=[32, 32, 64, 128]"

``hippogan export`` writes the shippable float16 generator ``state_dict`` (the bundle's ``models/model.pt``)
from a run's checkpoint (:func:`hippogan.pipeline.bundle_training.export_generator`).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .bundle_training import export_generator
from .bundled import DEFAULT_BUNDLE
from .file_io import first_cause

__all__ = [
    "TRAIN_CONFIG",
    "add_parser",
    "add_train_arguments",
    "build_train_workflow",
    "parse_overrides",
    "run_training",
]

logger = logging.getLogger(__name__)

TRAIN_CONFIG = "train.yaml"


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """Turn ``["max_epochs=2", "network_def#channels=[8, 8]"]`` into config overrides (values parsed as YAML).

    Raises:
        ValueError: an item without ``=`` or with an empty key, or a value that is not valid YAML.
    """
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(
                f"override {pair!r}: expected KEY=VALUE (e.g. max_epochs=50, network_def#channels=[8,8,16,16])."
            )
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ValueError(f"override {pair!r}: the value is not valid YAML ({error}).") from error
    return overrides


def _config_path(name: str | os.PathLike, bundle_root: Path) -> Path:
    """``name`` as given if it is a file, else ``bundle_root/configs/name``."""
    for path in (Path(name), bundle_root / "configs" / name):
        if path.is_file():
            return path
    raise ValueError(f"config file {name}: not found (looked as given and in {bundle_root / 'configs'}).")


def build_train_workflow(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    fold: int | None = None,
    configs: Sequence[str | os.PathLike] = (),
    overrides: Mapping[str, Any] | None = None,
    bundle_root: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    logging_file: str | bool | None = False,
) -> Any:
    """Build (not initialize) the bundle's training ``monai.bundle.ConfigWorkflow``.

    Args:
        dataset_dir: root of the manifest's relative paths (config ``dataset_dir``).
        output_dir: run folder: ``checkpoints/{last,best}.pt`` and ``tensorboard/`` (config ``output_dir``).
        fold: validation fold (config ``val_fold``); ``None`` keeps the config's.
        configs: extra config files merged after ``train.yaml`` in order (a name alone is looked up in
            the bundle's ``configs/``, e.g. ``multi_gpu_train.yaml``).
        overrides: more ``{config id: value}`` (``#`` separates nested keys); they win over the arguments above.
        bundle_root: the bundle folder; default :data:`hippogan.pipeline.bundled.DEFAULT_BUNDLE`.
        manifest: manifest CSV (config ``manifest``); ``None`` keeps the config's.
        logging_file: ``False`` keeps the caller's logging; ``None`` applies the bundle's ``logging.conf``.

    Raises:
        ValueError: a config file is missing.
    """
    from monai.bundle import ConfigWorkflow

    root = Path(bundle_root) if bundle_root is not None else DEFAULT_BUNDLE
    files = [_config_path(TRAIN_CONFIG, root)] + [_config_path(c, root) for c in configs]
    pairs: dict[str, Any] = {"bundle_root": str(root), "dataset_dir": str(dataset_dir), "output_dir": str(output_dir)}
    if fold is not None:
        pairs["val_fold"] = int(fold)
    if manifest is not None:
        pairs["manifest"] = str(manifest)
    pairs.update(overrides or {})
    return ConfigWorkflow(
        config_file=[str(f) for f in files],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=logging_file,
        workflow_type="train",
        **pairs,
    )


def run_training(*args: Any, **kwargs: Any) -> Any:
    """Build the workflow (arguments of :func:`build_train_workflow`), then initialize, check, run, finalize it.

    Returns:
        the finished ``ConfigWorkflow`` (its ``parser`` gives the run's objects, e.g. ``network_def``).

    Raises:
        ValueError: bad input (manifest, folders, checkpoint, network arguments): the message of the first
            ``ValueError`` behind MONAI's ``RuntimeError`` wrappers, naming the file or key.
    """
    workflow = build_train_workflow(*args, **kwargs)
    try:
        workflow.initialize()
        missing = workflow.check_properties()
        if missing:
            raise ValueError(f"bundle config lacks the required training properties {missing}.")
        workflow.run()
    except (RuntimeError, KeyError) as error:
        cause = first_cause(error, ValueError)
        if cause is None:
            raise
        raise ValueError(str(cause)) from error
    finally:
        workflow.finalize()
    return workflow


def _train(args: argparse.Namespace) -> int:
    """``hippogan train``: exit 0 on success, 2 on bad input."""
    try:
        overrides = parse_overrides(args.overrides)
        if args.resume or args.resume_from:
            overrides["resume"] = str(args.resume_from) if args.resume_from else True
        run_training(
            args.dataset_dir,
            args.output_dir,
            fold=args.fold,
            configs=args.config,
            overrides=overrides,
            bundle_root=args.bundle_root,
            manifest=args.manifest,
        )
    except ValueError as error:
        logger.error("%s", error)
        return 2
    logger.info("checkpoints in %s", Path(args.output_dir) / "checkpoints")
    return 0


def _export(args: argparse.Namespace) -> int:
    """``hippogan export``: exit 0 on success, 2 on bad input."""
    try:
        export_generator(args.checkpoint, args.out, fp16=not args.fp32)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    return 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments ``hippogan train`` and ``hippogan cv`` share."""
    parser.add_argument(
        "--dataset-dir", required=True, type=Path, help="dataset root; the manifest's paths are relative to it"
    )
    parser.add_argument("--output-dir", required=True, type=Path, help="run folder (checkpoints/, tensorboard/)")
    parser.add_argument(
        "--manifest", type=Path, help="manifest CSV (default: the bundle's, data_manifests/msd_hippocampus.csv)"
    )
    parser.add_argument(
        "--config", action="append", default=[], metavar="YAML",
        help="extra config merged after train.yaml (repeatable; a bare name is looked up in the bundle's configs/)",
    )  # fmt: skip
    parser.add_argument("--bundle-root", type=Path, default=None, help=f"bundle folder (default: {DEFAULT_BUNDLE})")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, YAML values (max_epochs=50)"
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``hippogan train`` and ``hippogan export``."""
    train = subparsers.add_parser(
        "train",
        help="train the Res-SEblock GAN with the bundle's configs/train.yaml",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(train)
    train.add_argument("--fold", type=int, default=None, help="validation fold (config val_fold; default 0)")
    resume = train.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume", action="store_true", help="continue a stopped run from OUTPUT_DIR/checkpoints/last.pt"
    )
    resume.add_argument("--resume-from", type=Path, metavar="CHECKPOINT", help="continue a stopped run from CHECKPOINT")
    train.set_defaults(func=_train)

    export = subparsers.add_parser(
        "export",
        help="write the generator weights (float16 state_dict, the bundle's models/model.pt) from a checkpoint",
    )
    export.add_argument("--checkpoint", required=True, type=Path, help="best.pt or last.pt of a training run")
    export.add_argument(
        "--out", required=True, type=Path, help="weights file to write (the bundle's models/model.pt)"
    )
    export.add_argument("--fp32", action="store_true", help="keep float32 (default: float16)")
    export.set_defaults(func=_export)
