"""Pre-processing speed: per MSD case, per whole-brain scan, and data-loading rate with and without caching.

Run from the repository root (about a minute on 2 CPU cores)::

    python benchmarks/bench_transforms.py [--data ../shared/data] [--cases 50] [--threads 1]

``--threads 1`` (the default) matches a DataLoader worker, where PyTorch uses one thread; on a shared
machine more intra-op threads mostly add contention for these small volumes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import torch
from monai.data import CacheDataset, DataLoader, Dataset

from hippogan.transforms import IMAGE, LABEL, get_preprocessing

__all__ = ["main"]

logger = logging.getLogger("bench_transforms")


def _msd_cases(data: Path, n: int) -> list[dict[str, str]]:
    images = sorted((data / "msd_hippocampus" / "imagesTr").glob("hippocampus_*.nii.gz"))[:n]
    if not images:
        raise ValueError(f"no MSD cases in {data / 'msd_hippocampus' / 'imagesTr'}; expected hippocampus_*.nii.gz")
    return [{IMAGE: str(p), LABEL: str(p.parent.parent / "labelsTr" / p.name)} for p in images]


def _mean_seconds(transform, items: list[dict], repeats: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        for item in items:
            transform(item)
    return (time.perf_counter() - start) / (repeats * len(items))


def _epoch_rate(dataset: Dataset, epochs: int) -> float:
    """Cases per second over ``epochs`` passes of a DataLoader (batch 8, main process)."""
    loader = DataLoader(dataset, batch_size=8, num_workers=0)
    start, count = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            count += batch[IMAGE].shape[0]
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and log its figures; returns 0."""
    default_data = os.environ.get("HIPPOGAN_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(default_data), help="shared data folder")
    parser.add_argument("--cases", type=int, default=50, help="MSD cases to time")
    parser.add_argument("--epochs", type=int, default=3, help="DataLoader epochs per rate")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)

    cases = _msd_cases(args.data, args.cases)
    pre = get_preprocessing(mode="precropped", with_label=True)
    pre(cases[0])  # warm-up: imports, reader registration
    per_case = _mean_seconds(pre, cases)
    logger.info("MSD pre-processing (image + label): %.1f ms per case (mean over %d cases)", 1e3 * per_case, len(cases))

    from nilearn.datasets import load_mni152_template

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mni152.nii.gz"
        nib.save(load_mni152_template(resolution=1), path)
        whole = get_preprocessing(mode="whole_brain", with_label=False)
        whole({IMAGE: str(path)})
        per_scan = _mean_seconds(whole, [{IMAGE: str(path)}], repeats=3)
    logger.info("whole-brain pre-processing (MNI152 1 mm, 197x233x189 -> 2 ROIs): %.0f ms per scan", 1e3 * per_scan)

    plain_rate = _epoch_rate(Dataset(cases, transform=pre), args.epochs)
    start = time.perf_counter()
    cached = CacheDataset(cases, transform=pre, cache_rate=1.0, num_workers=0, progress=False)
    build = time.perf_counter() - start
    cached_rate = _epoch_rate(cached, args.epochs)
    logger.info("data loading without cache: %.1f cases/s (%d epochs)", plain_rate, args.epochs)
    logger.info(
        "data loading with CacheDataset: %.0f cases/s (%d epochs; cache built in %.1f s)",
        cached_rate,
        args.epochs,
        build,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
