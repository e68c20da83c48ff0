"""SAST under DistributedDataParallel: 2 CPU ranks (gloo, launched with torchrun) reach the
weights of a single process trained on the same global batches."""

import socket
import subprocess
import sys

import pytest
import torch

from sast_deploy.training.runs import load_run

from helpers import SMALL_RECIPE_TOML

RECIPE = 'name = "ddp"\n' + SMALL_RECIPE_TOML + """
[optimizer]
name = "sast"
lr = 5e-3
rho = 0.1
[training]
epochs = 1
seed = 3
"""


def _child_errors(stderr: str) -> str:
    """The ranks' own tracebacks and error lines (torchrun's summary alone hides them)."""
    lines = [ln for ln in stderr.splitlines() if "Error" in ln or "error" in ln or ln.startswith(("Traceback", "  File"))]
    return "\n".join(lines[:80]) or stderr[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path, small_data):
    recipe = tmp_path / "ddp.toml"
    recipe.write_text(RECIPE)
    # 320 training samples: 5 global batches of 64 (2 ranks x 32, or 1 process x 64)
    assert len(small_data[1][0]) == 320
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "sast_deploy.cli", "train", "--config", str(recipe),
           "--set", "training.batch_size=32", "--out", str(tmp_path / "ddp"), "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, _child_errors(done.stderr)
    from sast_deploy.cli import main

    assert main(["train", "--config", str(recipe), "--set", "training.batch_size=64", "--out", str(tmp_path / "one"), "--quiet"]) == 0
    ddp, _, m_ddp = load_run(tmp_path / "ddp")
    one, _, m_one = load_run(tmp_path / "one")
    assert m_ddp["world_size"] == 2 and m_one["world_size"] == 1
    for p, q in zip(ddp.parameters(), one.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    # and the run did move the weights (not two copies of the initialisation)
    torch.manual_seed(3)
    from sast_deploy.training.model import ModelConfig, build_model

    init = build_model(ModelConfig(hidden=(16,), alpha=1.0), (2, 34, 34), 10)
    assert not torch.allclose(next(init.parameters()), next(ddp.parameters()))


@pytest.mark.slow
def test_sharded_compare_equals_single_process(trained_run, tmp_path):
    import json
    import shutil

    from sast_deploy.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["compare", str(run), "--samples", "21", "--quiet"]) == 0
    single = json.loads((run / "compare.json").read_text())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "sast_deploy.cli", "compare", str(run), "--samples", "21", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, _child_errors(done.stderr)
    sharded = json.loads((run / "compare.json").read_text())
    assert sharded["ranks"] == 2 and single["ranks"] == 1
    assert (sharded["lava_copies_per_graph"], single["lava_copies_per_graph"]) == (11, 21)  # 21 samples: 11 + 10, or 21
    # how the work was split: each rank's graph holds copies for its own share of the samples
    timing = {"ranks", "lava_samples_per_s", "lava_timesteps_per_s", "lava_compile_seconds", "lava_copies_per_graph"}
    assert {k: v for k, v in sharded.items() if k not in timing} == {k: v for k, v in single.items() if k not in timing}


def test_rank_bounds_split_n_items_into_contiguous_parts_that_cover_them_once():
    from sast_deploy.distributed import rank_bounds, rank_slice

    for n in range(0, 12):
        for world in range(1, 5):
            bounds = [rank_bounds(n, r, world) for r in range(world)]
            assert [i for lo, hi in bounds for i in range(lo, hi)] == list(range(n)), (n, world)
            assert all(hi - lo <= -(-n // world) for lo, hi in bounds)
            items = torch.arange(n)
            assert torch.equal(torch.cat([rank_slice(items, r, world) for r in range(world)]), items)
