"""DDP training with the bundle's configs: two gloo processes on the CPU under ``torchrun``, real MSD cases.

``train.yaml`` + ``train_cpu.yaml`` + ``multi_gpu_train.yaml`` run through ``python -m monai.bundle run`` (the
documented command) with tiny settings; a test-only override appends one step to ``run`` that saves each rank's
learning rates, iteration count and generator parameters. Every rank must follow the same one-cycle schedule
and hold the same weights (DDP averages the gradients; a rank on another schedule would drift).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import NARROW_G, TINY, write_manifest

from hippogan.networks import ResSEGenerator
from hippogan.pipeline.bundle_training import export_generator
from hippogan.pipeline.bundled import DEFAULT_BUNDLE
from hippogan.pipeline.checkpoint import load_checkpoint

CONFIGS = DEFAULT_BUNDLE / "configs"
RANKS = 2
# appended to ``run`` after the training: what each rank ends with (torch.distributed is still initialised)
STATE = (
    "{'iteration': @train#trainer.state.iteration,"
    " 'lr': [o.param_groups[0]['lr'] for o in (@g_optimizer, @d_optimizer)],"
    " 'g': {n: p.detach().cpu().clone() for n, p in @network.named_parameters()}}"
)
RANK_FILE = "@output_dir + '/rank' + str(torch.distributed.get_rank()) + '.pt'"
RANK_STATE = f'+run:\n  - "$torch.save({STATE}, {RANK_FILE})"\n'


def expected_lr(max_lr: float, steps: int) -> float:
    """Learning rate of ``train_cpu.yaml``'s one-cycle schedule after all its ``steps`` steps."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=steps, pct_start=0.03, anneal_strategy="cos", div_factor=25.0,
        final_div_factor=4.0, cycle_momentum=False,
    )  # fmt: skip
    for _ in range(steps):
        optimizer.step()
        schedule.step()
    return optimizer.param_groups[0]["lr"]


@pytest.mark.slow
def test_ranks_share_schedule_and_weights(msd_dir: Path, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "manifest.csv", n_val=2)
    (tmp_path / "rank_state.yaml").write_text(RANK_STATE)
    run = tmp_path / "run"
    overrides = {
        **TINY, "max_epochs": 2, "batch_size": 8, "adversarial_weight": 0.05,  # several steps a rank; D trained too
        "bundle_root": str(DEFAULT_BUNDLE), "dataset_dir": str(msd_dir), "manifest": str(manifest),
        "output_dir": str(run),
    }  # fmt: skip
    args = [item for key, value in overrides.items() for item in (f"--{key}", str(value))]
    files = [CONFIGS / name for name in ("train.yaml", "train_cpu.yaml", "multi_gpu_train.yaml")]
    files.append(tmp_path / "rank_state.yaml")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RANKS}",
        "-m", "monai.bundle", "run",
        "--config_file", "[" + ",".join(f"'{f}'" for f in files) + "]",
        "--meta_file", str(CONFIGS / "metadata.json"),
        *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    ranks = [torch.load(run / f"rank{rank}.pt", weights_only=True) for rank in range(RANKS)]
    steps = ranks[0]["iteration"]
    assert steps >= 4 and all(r["iteration"] == steps for r in ranks)
    schedule = [expected_lr(1e-3, steps), expected_lr(2e-4, steps)]  # train_cpu.yaml's lr and d_lr
    for rank, state in enumerate(ranks):
        assert state["lr"] == pytest.approx(schedule, rel=1e-6), f"rank {rank} left the schedule"
    checksums = [sum(float(p.double().sum()) for p in r["g"].values()) for r in ranks]
    assert ranks[0]["g"].keys() == ranks[1]["g"].keys()
    assert all(torch.equal(ranks[0]["g"][name], ranks[1]["g"][name]) for name in ranks[0]["g"]), checksums

    state = load_checkpoint(run / "checkpoints" / "last.pt")  # rank 0 wrote the DDP checkpoint
    assert state["engine"]["epoch"] == 2 and all(key.startswith("module.") for key in state["g_network"])
    weights = torch.load(export_generator(run / "checkpoints" / "last.pt", tmp_path / "m.pt"), weights_only=True)
    ResSEGenerator(spatial_dims=2, in_channels=1, out_channels=3, stem_skip=16, **NARROW_G).load_state_dict(weights)
    writers = {path.name.split(".")[-2] for path in (run / "tensorboard").iterdir()}  # events.out.tfevents.T.HOST.PID.N
    assert len(writers) == 1, f"TensorBoard files of {len(writers)} processes: rank 0's only expected"
