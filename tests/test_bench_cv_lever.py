"""The CV-lever benchmark's paired table (``benchmarks/bench_cv_lever.py``)."""

from __future__ import annotations


import numpy as np
import pandas as pd
from helpers import load_benchmark

lever = load_benchmark("bench_cv_lever")


def _scores(subjects: list[str], dsc: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"subject_id": subjects, "dsc": dsc, "dsc_class1": dsc - 0.01, "dsc_class2": dsc - 0.02,
                         "hd95": 2.0 - dsc})  # fmt: skip


def test_lever_table_pairs_scans_by_subject_and_signs_the_difference() -> None:
    rng = np.random.default_rng(0)
    subjects = [f"s{i:03d}" for i in range(30)]
    base = rng.uniform(0.85, 0.92, size=30)
    gain = rng.uniform(0.001, 0.004, size=30)
    baseline = _scores(subjects, base)
    shuffled = _scores(subjects, base + gain).iloc[::-1]  # rows in another order, one scan the baseline lacks
    shuffled = pd.concat([shuffled, _scores(["extra"], np.array([0.5]))])
    table = lever.lever_table(baseline, shuffled).set_index("metric")
    assert table.loc["dsc", "n"] == 30
    assert np.isclose(table.loc["dsc", "difference"], gain.mean())
    assert table.loc["dsc", "higher"] == 30 and table.loc["dsc", "lower"] == 0
    assert table.loc["dsc", "p"] < 1e-5
    assert table.loc["hd95", "difference"] < 0
