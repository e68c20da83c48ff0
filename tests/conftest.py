import os
from pathlib import Path

import pytest

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


# A small synthetic-nmnist: 200 source images, 2 training variants, 1 test variant, T = 10.
SMALL_SYNTHETIC = {"max_sources": 200, "train_variants": 2, "test_variants": 1}


# The same data and model as a recipe file's sections (tests that go through TOML files).
SMALL_RECIPE_TOML = """
[data]
n_time_bins = 10
[data.synthetic]
max_sources = 200
train_variants = 2
test_variants = 1
[model]
hidden = [16]
alpha = 1.0
"""


@pytest.fixture(scope="session")
def small_data():
    from sast_deploy.data.datasets import DataConfig, load_dataset

    cfg = DataConfig(n_time_bins=10, synthetic=SMALL_SYNTHETIC)
    return cfg, load_dataset(cfg, progress=False)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, small_data):
    """A run trained for 2 epochs on the small synthetic set (baseline, alpha 2)."""
    from sast_deploy.training.train import train
    from test_train import _recipe

    _, data = small_data
    run = tmp_path_factory.mktemp("run")
    train(_recipe(**{"training.epochs": 2, "optimizer.name": "baseline", "model.alpha": 2.0}), run, progress=False, data=data)
    return run


def random_conv_net(seed: int, in_shape=(2, 9, 8), channels: int = 4, kernel=(3, 2), stride=(1, 2), padding=(1, 0),
                    groups: int = 1, pool: bool = True, classes: int = 3, vths=(150, 60, 100), dvs=(410, 0, 1000)):
    """A random quantized conv net: conv (8-bit weights, the extremes -128 and 127 included) ->
    optional 2x2 sum-pool (a depthwise conv, one group per channel) -> dense."""
    import numpy as np

    from sast_deploy.deploy.quantize import QuantizedLayer, QuantizedNet

    rng = np.random.default_rng(seed)
    c, h, w = in_shape
    wc = rng.integers(-128, 128, size=(channels, c // groups, *kernel))
    wc.flat[:4] = [-128, 127, -128, 127]
    shape = (channels, (h + 2 * padding[0] - kernel[0]) // stride[0] + 1, (w + 2 * padding[1] - kernel[1]) // stride[1] + 1)
    layers = [QuantizedLayer("conv", wc, vths[0], dvs[0], 4096, 1.0, tuple(in_shape), shape, tuple(stride), tuple(padding), groups)]
    if pool:
        pooled = (channels, shape[1] // 2, shape[2] // 2)
        wp = np.full((channels, 1, 2, 2), int(rng.integers(20, 128)))
        layers.append(QuantizedLayer("pool", wp, vths[1], dvs[1], 4096, 1.0, shape, pooled, (2, 2), (0, 0), channels))
        shape = pooled
    n = int(np.prod(shape))
    wd = rng.integers(-128, 128, size=(classes, n))
    wd.flat[:2] = [-128, 127]
    layers.append(QuantizedLayer("dense", wd, vths[2], dvs[2], 4096, 1.0, (n,), (classes,)))
    return QuantizedNet(layers, tuple(in_shape), classes)


@pytest.fixture(scope="session")
def trained_conv_run(tmp_path_factory, small_data):
    """A conv net (4 channels 3x3 stride 2, 2x2 sum-pool, dense) trained for 1 epoch on the small synthetic set."""
    from sast_deploy.training.train import train
    from test_train import _recipe

    _, data = small_data
    run = tmp_path_factory.mktemp("conv-run")
    recipe = _recipe(**{"model.arch": "conv", "model.hidden": "[]", "model.conv_channels": 4, "model.conv_kernel": 3,
                        "model.conv_stride": 2, "model.pool": 2, "model.init_gain": 3.0, "training.epochs": 1,
                        "optimizer.name": "baseline", "model.alpha": 2.0})
    train(recipe, run, progress=False, data=data)
    return run
