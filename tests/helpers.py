"""Builders shared by the test modules (plain functions and constants; the fixtures are in
conftest.py). Test modules import from here, never from each other."""

import numpy as np
import torch

from sast_deploy.deploy.quantize import QuantizedLayer, QuantizedNet
from sast_deploy.training.model import ModelConfig, build_model
from sast_deploy.training.recipe import Recipe, apply_overrides, recipe_from_dict

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


def tiny_recipe(**sets) -> Recipe:
    """A 2-epoch SAST recipe on the small synthetic set; ``sets``: overrides, e.g. ``**{"model.alpha": 2.0}``."""
    raw = {
        "name": "tiny",
        "data": {"n_time_bins": 10, "synthetic": SMALL_SYNTHETIC},
        "model": {"hidden": [32], "alpha": 1.0},
        "optimizer": {"name": "sast", "lr": 5e-3, "rho": 0.1},
        "training": {"epochs": 2, "batch_size": 32},
    }
    return recipe_from_dict(apply_overrides(raw, [f"{k}={v}" for k, v in sets.items()]))


def dense_layer(w, vth, dv) -> QuantizedLayer:
    """A quantized dense layer of integer weights ``w`` [out, in], threshold mantissa ``vth``, voltage decay ``dv``."""
    return QuantizedLayer("dense", np.asarray(w, dtype=np.int64), vth, dv, 4096, 1.0, (w.shape[1],), (w.shape[0],))


def random_mlp(seed, sizes, vths, dvs, extremes=True, inhibitory_last=False) -> QuantizedNet:
    """A quantized MLP of random 8-bit weights; ``extremes`` puts -128 and 127 in every layer."""
    rng = np.random.default_rng(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = rng.integers(-128, 128, size=(n_out, n_in))
        if extremes:
            w.flat[:4] = [-128, 127, -128, 127]
        if inhibitory_last and i == len(sizes) - 2:
            w = -np.abs(w)  # an all-inhibitory matrix with min -128: netx's lossy clip (-128 -> ...)
            w.flat[0] = -128
            w[:, :2] = 90  # keep some excitation so the layer spikes
        layers.append(dense_layer(w, vths[i], dvs[i]))
    return QuantizedNet(layers, (1, 1, sizes[0]), sizes[-1])


def random_spikes(seed, n, t, shape, density=0.3) -> np.ndarray:
    """Binary frames uint8 [n, t, *shape], each bin a spike with probability ``density``."""
    return (np.random.default_rng(seed).random((n, t) + shape) < density).astype(np.uint8)


def conv_model(beta):
    """A float conv net (conv, sum-pool, dense) on (2, 9, 8) inputs with an asymmetric kernel."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="conv", hidden=(), conv_channels=3, conv_kernel=3, conv_stride=1, pool=2, beta=beta, v_th=1.0)
    model = build_model(cfg, (2, 9, 8), 4)
    # an asymmetric kernel with asymmetric stride and padding: a flipped or transposed kernel
    # (lava-dl issue 260) changes the result. conv -> (3, 9, 4), pool 2 -> (3, 4, 2) = 24
    model.layers[0].synapse = torch.nn.Conv2d(2, 3, (3, 2), stride=(1, 2), padding=(1, 0), bias=False)
    model.layers[2].synapse = torch.nn.Linear(24, 4, bias=False)
    with torch.no_grad():
        model.layers[0].synapse.weight.copy_(torch.randint(-6, 7, (3, 2, 3, 2)).float() / 4)
        model.layers[2].synapse.weight.copy_(torch.randn(4, 24))
    return model


def random_conv_net(seed: int, in_shape=(2, 9, 8), channels: int = 4, kernel=(3, 2), stride=(1, 2), padding=(1, 0),
                    groups: int = 1, pool: bool = True, classes: int = 3, vths=(150, 60, 100), dvs=(410, 0, 1000)):
    """A random quantized conv net: conv (8-bit weights, the extremes -128 and 127 included) ->
    optional 2x2 sum-pool (a depthwise conv, one group per channel) -> dense."""
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


def cli_error(capsys, *argv):
    """(exit code, the one stderr line) of an in-process ``sast-deploy`` command that fails:
    one line, no traceback; an argparse refusal (usage and error lines, exit 2) gives its
    error line."""
    from sast_deploy.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err), err
    if code == 2 and err[0].startswith("usage:"):
        err = [line for line in err if not line.startswith(("usage:", " "))]
    assert len(err) == 1, err
    return code, err[0]
