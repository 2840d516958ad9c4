"""Test helpers for training runs on real MSD cases: narrow generator widths, tiny bundle overrides, a manifest.

Shared by ``test_bundle_train.py`` and ``test_crossval.py``; import as ``from helpers_train import ...``
(pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import csv
from pathlib import Path

from hippogan.pipeline.manifest import MANIFEST_COLUMNS
from hippogan.pipeline.train_cli import BUNDLE_ROOT

__all__ = ["NARROW_G", "REPO_MANIFEST", "TINY", "write_manifest"]

REPO_MANIFEST = BUNDLE_ROOT.parents[1] / "data_manifests" / "msd_hippocampus.csv"
"""The repository's manifest of the MSD hippocampus cases (paths relative to the dataset folder)."""
NARROW_G = {"channels": [8, 8, 16, 16], "decoder_channels": [16, 16, 8, 8, 8], "se_reduction": 4}
"""Narrow ``ResSEGenerator`` kwargs for plumbing tests."""
TINY = {  # with 2 training subjects: ~50 planes, 3 steps an epoch
    "max_epochs": 1,
    "batch_size": 16,
    "num_workers": 0,
    "val_interval": 1,
    "empty_fraction": 0.05,
    "d_network_def#channels": [8, 16, 16, 32],
    **{f"network_def#{key}": value for key, value in NARROW_G.items()},
}
"""Overrides of ``train.yaml`` (config ids -> values) for a one-epoch CPU run with narrow networks."""


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
