"""Shared fixtures: the real data in ``../shared/data`` (tests skip only when that folder is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED_DATA = Path(os.environ.get("HIPPOGAN_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
MSD_DIR = SHARED_DATA / "msd_hippocampus"
DICOM_DIR = SHARED_DATA / "dicom_hippocrop"

needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data folder absent: {SHARED_DATA}")


@pytest.fixture(scope="session")
def msd_dir() -> Path:
    """The shared MSD hippocampus folder (imagesTr/, labelsTr/)."""
    if not MSD_DIR.is_dir():
        pytest.skip(f"shared data folder absent: {MSD_DIR}")
    return MSD_DIR


@pytest.fixture(scope="session")
def dicom_dir() -> Path:
    """The shared folder of DICOM series (one sub-folder a series)."""
    if not DICOM_DIR.is_dir():
        pytest.skip(f"shared data folder absent: {DICOM_DIR}")
    return DICOM_DIR
