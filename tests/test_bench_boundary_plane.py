"""The boundary-plane benchmark's building blocks (``benchmarks/bench_boundary_plane.py``)."""

from __future__ import annotations


import numpy as np
from helpers import load_benchmark

boundary = load_benchmark("bench_boundary_plane")


def test_shape_features_give_the_hippocampus_extent_and_centroid_along_y() -> None:
    labels = np.zeros((4, 20, 4), dtype=np.uint8)
    labels[1:3, 5:9, 1:3] = 2
    labels[1:3, 9:15, 1:3] = 1
    assert boundary.shape_features(labels) == (5.0, 14.0, 9.5)


def test_leave_one_out_fit_recovers_a_linear_rule_and_never_sees_its_own_row() -> None:
    rng = np.random.default_rng(0)
    length = rng.integers(30, 45, size=40).astype(float)
    plane = np.round(2.0 + 0.58 * length)
    assert np.abs(boundary.leave_one_out_error(length[:, None], plane)).max() <= 1.0
    outlier = plane.copy()
    outlier[0] += 10  # a row the other rows cannot predict: its own error stays large
    assert abs(boundary.leave_one_out_error(length[:, None], outlier)[0]) >= 9
