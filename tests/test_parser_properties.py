"""Property tests of the parsers of untrusted input (issue 20, cases 10 and 11): whatever a
recipe file, a --set override or a netx HDF5 file holds, reading it gives a valid object or
one SastDeployError; never another exception, never a hang or a huge allocation."""

import shutil
import string
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sast_deploy.deploy.emulator import emulate_counts
from sast_deploy.deploy.export import read_netx, write_netx
from sast_deploy.deploy.quantize import QuantizedNet, quantize
from sast_deploy.errors import SastDeployError
from sast_deploy.training.model import ModelConfig, build_model
from sast_deploy.training.recipe import Recipe, apply_overrides, load_recipe, recipe_from_dict

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- recipes -------------------------------------------------------------------------------

SECTIONS = ("data", "model", "optimizer", "training", "data.synthetic", "junk")
KEYS = ("name", "n_time_bins", "spatial_factor", "max_train", "subset_seed", "workers", "hidden", "beta", "v_th", "alpha",
        "surrogate", "arch", "pool", "conv_kernel", "lr", "rho", "delta", "weight_decay", "perturb_every", "epochs",
        "batch_size", "seed", "eval_batch_size", "loss_scale", "device", "max_sources", "test_fraction", "v_th_scale", "x")

toml_scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(f), repr(f))),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(alphabet=string.ascii_letters + " -_.", max_size=12).map(lambda s: f'"{s}"'),
)
toml_values = st.recursive(toml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.lists(st.tuples(st.sampled_from(KEYS), inner), max_size=3).map(
        lambda kv: "{" + ", ".join(f"{k} = {v}" for k, v in dict(kv).items()) + "}"),
), max_leaves=12)


@st.composite
def recipe_texts(draw):
    """TOML built from the recipe's own sections and keys (so that it often parses and reaches
    the validation), sometimes with random text spliced in."""
    lines = []
    for section in draw(st.lists(st.sampled_from(SECTIONS), max_size=4, unique=True)):
        lines.append(f"[{section}]")
        for key, value in draw(st.dictionaries(st.sampled_from(KEYS), toml_values, max_size=4)).items():
            lines.append(f"{key} = {value}")
    text = "\n".join(lines) + "\n"
    if draw(st.booleans()):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(max_size=8)) + text[at:]
    return text.encode("utf-8", errors="surrogatepass") if draw(st.booleans()) else text.encode("utf-8", "replace")


@pytest.mark.slow
@SETTINGS
@given(content=st.one_of(recipe_texts(), st.binary(max_size=64)))
def test_any_recipe_file_is_a_recipe_or_one_error(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.toml"
        path.write_bytes(content)
        try:
            recipe = load_recipe(path)
        except SastDeployError as exc:
            assert str(exc).startswith(str(path)) and "\n" not in str(exc)
        else:
            assert isinstance(recipe, Recipe)


overrides = st.one_of(
    st.tuples(st.lists(st.sampled_from(SECTIONS + KEYS), min_size=1, max_size=5).map(".".join), toml_values).map("=".join),
    st.text(max_size=30),
)


@SETTINGS
@given(items=st.lists(overrides, max_size=4))
def test_any_set_override_is_a_recipe_or_one_error(items):
    try:
        recipe = recipe_from_dict(apply_overrides({"training": {"epochs": 1}}, items), source="--set")
    except SastDeployError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(recipe, Recipe)


# --- netx HDF5 files -----------------------------------------------------------------------

NAMES = ("layer", "0", "1", "2", "3", "type", "shape", "weight", "neuron", "iDecay", "vDecay", "vThMant", "refDelay",
         "stride", "padding", "groups", "inFeatures", "outFeatures", "x")
DTYPES = st.sampled_from([np.int8, np.int64, np.uint16, np.float64, np.bool_, "S10", np.complex64])
arrays = hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, max_side=4))
strings = st.sampled_from([b"input", b"dense", b"conv", b"flatten", b"CUBA", b"pool", b""]).map(lambda s: np.array([s], dtype="S10"))
PATHS = st.lists(st.sampled_from(NAMES), min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))


@pytest.fixture(scope="module")
def valid_netx(tmp_path_factory):
    """A small valid network (conv, pool, dense) as write_netx writes it."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="conv", hidden=(4,), conv_channels=2, conv_kernel=3, conv_stride=2, pool=2),
                        (2, 9, 9), 3)
    path = tmp_path_factory.mktemp("netx") / "net.h5"
    write_netx(quantize(model), path)
    return path


def _edit(f: h5py.File, op: tuple, outside: Path) -> None:
    """One random edit of an HDF5 file: delete, replace by an array or a string, link, attribute."""
    kind, path, value = op
    parent, _, name = path.rpartition("/")
    group = f.require_group(parent) if parent else f
    if not isinstance(group, h5py.Group):
        return
    if name in group:
        del group[name]
    if kind == "delete":
        return
    if kind in ("array", "string"):
        group.create_dataset(name, data=value)
    elif kind == "group":
        group.create_group(name)
    elif kind == "soft":
        group[name] = h5py.SoftLink(value)
    elif kind == "external":
        group[name] = h5py.ExternalLink(str(outside), value)
    elif kind == "huge":
        group.create_dataset(name, shape=(10**6, 10**6), dtype="i8", chunks=(1, 64))
    elif kind == "attr":
        group.attrs[name] = value


edits = st.one_of(
    st.tuples(st.just("delete"), PATHS, st.none()),
    st.tuples(st.just("array"), PATHS, arrays),
    st.tuples(st.just("string"), PATHS, strings),
    st.tuples(st.just("group"), PATHS, st.none()),
    st.tuples(st.just("soft"), PATHS, PATHS),
    st.tuples(st.just("external"), PATHS, PATHS),
    st.tuples(st.just("huge"), PATHS, st.none()),
    st.tuples(st.just("attr"), st.sampled_from(["/layer/1/scale", "/layer/2/sast_kind", "/metadata"]),
              st.one_of(st.text(max_size=10), st.floats(), st.integers(-5, 5))),
)


@pytest.mark.slow
@SETTINGS
@given(ops=st.lists(edits, min_size=1, max_size=4), start_valid=st.booleans())
def test_any_small_hdf5_file_is_a_network_or_one_error(valid_netx, ops, start_valid):
    """From a valid network with random edits, or from an empty file with random structure:
    read_netx gives a network the emulator runs, or one NetxFormatError."""
    with tempfile.TemporaryDirectory() as tmp:
        path, outside = Path(tmp) / "n.h5", Path(tmp) / "notes.txt"
        outside.write_text("not hdf5")
        if start_valid:
            shutil.copy(valid_netx, path)
        with h5py.File(path, "a") as f:
            for op in ops:
                try:
                    _edit(f, op, outside if op[0] != "external" or len(op[2]) % 2 else valid_netx)
                except (TypeError, ValueError, KeyError, OSError, RuntimeError):
                    pass  # h5py cannot make this edit (a group under a dataset, say): the file stays as it was
        try:
            net = read_netx(path)
        except SastDeployError as exc:
            assert str(exc).startswith(str(path)) and "\n" not in str(exc)
            event("refused")
            return
    event("read")
    assert isinstance(net, QuantizedNet)
    counts = emulate_counts(net, torch.ones((1, 2) + tuple(net.input_shape)))
    assert counts.shape == (1, net.n_classes)
