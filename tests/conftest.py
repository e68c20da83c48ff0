import os
from pathlib import Path

import pytest

from helpers import SMALL_SYNTHETIC, tiny_recipe

# One genuine N-MNIST recording shipped with the tests (attribution: tests/data/README.md)
REFERENCE_NMNIST = Path(__file__).resolve().parent / "data" / "sample_nmnist.bin"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Generated data goes to a per-session cache, never the user's."""
    path = tmp_path_factory.mktemp("sast-deploy-cache")
    old = os.environ.get("SAST_DEPLOY_CACHE")
    os.environ["SAST_DEPLOY_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SAST_DEPLOY_CACHE", None)
    else:
        os.environ["SAST_DEPLOY_CACHE"] = old


@pytest.fixture(scope="session")
def reference_nmnist() -> Path:
    if not REFERENCE_NMNIST.is_file():
        pytest.fail(f"{REFERENCE_NMNIST} is missing: it ships with the repository (tests/data/README.md)")
    return REFERENCE_NMNIST


@pytest.fixture(scope="session")
def small_data():
    from sast_deploy.data.datasets import DataConfig, load_dataset

    cfg = DataConfig(n_time_bins=10, synthetic=SMALL_SYNTHETIC)
    return cfg, load_dataset(cfg, progress=False)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, small_data):
    """A run trained for 2 epochs on the small synthetic set (baseline, alpha 2)."""
    from sast_deploy.training.train import train

    _, data = small_data
    run = tmp_path_factory.mktemp("run")
    train(tiny_recipe(**{"training.epochs": 2, "optimizer.name": "baseline", "model.alpha": 2.0}), run, progress=False, data=data)
    return run


@pytest.fixture(scope="session")
def trained_conv_run(tmp_path_factory, small_data):
    """A conv net (4 channels 3x3 stride 2, 2x2 sum-pool, dense) trained for 1 epoch on the small synthetic set."""
    from sast_deploy.training.train import train

    _, data = small_data
    run = tmp_path_factory.mktemp("conv-run")
    recipe = tiny_recipe(**{"model.arch": "conv", "model.hidden": "[]", "model.conv_channels": 4, "model.conv_kernel": 3,
                        "model.conv_stride": 2, "model.pool": 2, "model.init_gain": 3.0, "training.epochs": 1,
                        "optimizer.name": "baseline", "model.alpha": 2.0})
    train(recipe, run, progress=False, data=data)
    return run
