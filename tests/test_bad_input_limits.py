"""Issue 20, cases 8, 9, 11-16 and 20: every number has its range, a network its memory bound,
and recipes, frame caches, dataset trees and the cache folder are checked before any work.
Each failure is one line naming the file or option and the field, exit code 2, nothing written."""

import dataclasses
import shutil
import typing

import numpy as np
import pytest
import torch

from helpers import SMALL_RECIPE_TOML, cli_error
from sast_deploy.analysis.study import StudyIndex
from sast_deploy.analysis.study import StudyFile, load_study
from sast_deploy.data.datasets import DataConfig, DataError, _frames_cache_path, cache_dir
from sast_deploy.data.frames import FrameCacheError, read_split
from sast_deploy.data.synthetic import SyntheticNMNISTConfig
from sast_deploy.data.synthetic_gesture import SyntheticGestureConfig
from sast_deploy.deploy.quantize import Loihi2Spec
from sast_deploy.deploy.simulate import SimulatorConfig
from sast_deploy.training import footprint as fp
from sast_deploy.training.model import ModelConfig, build_model
from sast_deploy.training.recipe import OptimConfig, RecipeError, TrainConfig, load_recipe
from sast_deploy.training.runs import CheckpointHeader, ModelFileHeader
from sast_deploy.validation import _field_intervals

RECIPE = 'name = "tiny"\n' + SMALL_RECIPE_TOML + "[optimizer]\nname = \"baseline\"\n[training]\nepochs = 1\nbatch_size = 64\n"


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(RECIPE)
    return path


# --- 8. ranges ---------------------------------------------------------------------------

SCHEMAS = (OptimConfig, TrainConfig, DataConfig, ModelConfig, SyntheticNMNISTConfig, SyntheticGestureConfig, StudyFile,
           StudyIndex, ModelFileHeader, CheckpointHeader, Loihi2Spec, SimulatorConfig)


def _is_number(hint) -> bool:
    hint = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _is_number(args[0])
    return hint in (int, float)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda c: c.__name__)
def test_every_number_read_from_a_file_has_a_range(schema):
    hints = typing.get_type_hints(schema, include_extras=True)
    numbers = {f.name for f in dataclasses.fields(schema) if _is_number(hints[f.name])}
    ranged = {name for name, _, _ in _field_intervals(schema)}
    assert numbers and numbers <= ranged, f"{schema.__name__}: no range on {sorted(numbers - ranged)}"


@pytest.mark.parametrize("override,message", [
    ("optimizer.weight_decay=-1.0", "optimizer.weight_decay must be >= 0"),
    ("training.eval_batch_size=0", "training.eval_batch_size must be >= 1, got 0"),
    ("training.seed=-1", "training.seed must be >= 0, got -1"),
    ("training.seed=99999999999999999999", "training.seed must be <= 4294967295, got 99999999999999999999"),
    ("data.subset_seed=-1", "data.subset_seed must be >= 0, got -1"),
    ("data.synthetic.max_sources=-5", "data.synthetic.max_sources must be >= 0, got -5"),
    ("data.synthetic.test_fraction=1.0", "data.synthetic.test_fraction must be < 1"),
    ("data.workers=100000", "data.workers must be <= 256"),
    ("model.hidden=[16, 0]", "model.hidden[1] must be >= 1, got 0"),
    ("model.beta=1.5", "model.beta must be <= 1"),
    ("optimizer.delta=0.0", "optimizer.delta must be > 0"),
    ("training.loss_scale=-1.0", "training.loss_scale must be > 0"),
])
def test_out_of_range_values_are_refused_before_any_work(recipe_file, tmp_path, capsys, override, message):
    code, err = cli_error(capsys, "train", "--config", recipe_file, "--set", override, "--out", tmp_path / "run")
    assert code == 2 and "tiny.toml: " + message in err
    assert not (tmp_path / "run").exists()


def test_ranges_hold_for_dataclasses_built_in_python():
    with pytest.raises(ValueError, match="training.seed must be >= 0, got -1"):
        TrainConfig(seed=-1)
    with pytest.raises(DataError, match="data.subset_seed must be <= 4294967295"):
        DataConfig(subset_seed=2**32)
    with pytest.raises(ValueError, match=r"model.v_th_scale\[1\] must be > 0"):
        ModelConfig(v_th_scale=(1.0, float("nan")))


def test_study_seeds_must_be_distinct_and_in_range(tmp_path, capsys):
    (tmp_path / "base.toml").write_text(RECIPE)
    study = tmp_path / "s.toml"
    for seeds, message in (("[0, 0, 1]", "seeds must be distinct"), ("[0, -1]", "seeds[1] must be >= 0, got -1")):
        study.write_text(f'base = "base.toml"\nseeds = {seeds}\n[[method]]\nname = "baseline"\n')
        with pytest.raises(RecipeError, match=r"s\.toml: " + message.replace("[", r"\[").replace("]", r"\]")):
            load_study(study)
        code, err = cli_error(capsys, "study", study, "--out", tmp_path / "out", "--quiet")
        assert code == 2 and message in err
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_robustness_seed_is_range_checked(trained_run, tmp_path, capsys, seed):
    # by the library (robustness), before any run is read; the CLI passes the integer on
    code, err = cli_error(capsys, "robustness", trained_run, "--out", tmp_path / "r", "--seed", seed)
    assert code == 2 and err == f"sast-deploy robustness: error: corruption seed must be in [0, 4294967295], got {seed}"
    assert not (tmp_path / "r").exists()


# --- 9. model size -------------------------------------------------------------------------


@pytest.mark.parametrize("config,input_shape", [
    (ModelConfig(hidden=(16, 8)), (2, 34, 34)),
    (ModelConfig(arch="conv", hidden=(), conv_channels=4, conv_kernel=3, conv_stride=2, pool=2), (2, 12, 12)),
    (ModelConfig(arch="conv", hidden=(6,), conv_channels=5, conv_kernel=5, conv_stride=4), (2, 32, 32)),
])
def test_footprint_counts_the_parameters_and_neurons_the_network_has(config, input_shape):
    model = build_model(config, input_shape, 10)
    estimate = fp.footprint(config, input_shape, 10)
    assert estimate.parameters == sum(p.numel() for p in model.parameters())
    spikes = [s for s, _ in model.forward_all(torch.zeros(1, 1, *input_shape))]
    assert [layer.neurons for layer in estimate.layers] == [int(np.prod(s.shape[2:])) for s in spikes]


@pytest.mark.parametrize("hidden,message", [
    ("[100000000]", "weights need 929 GB"),
    ("[" + ", ".join(["1"] * 5000) + "]", "model.hidden has 5000 layers; at most 64"),
], ids=["1e8-wide", "5000-layers"])
def test_a_network_too_large_is_refused_with_its_estimate(recipe_file, tmp_path, capsys, hidden, message):
    code, err = cli_error(capsys, "train", "--config", recipe_file, "--set", f"model.hidden={hidden}", "--out", tmp_path / "run")
    assert code == 2 and message in err
    assert not (tmp_path / "run").exists()


def test_the_memory_bound_follows_ulimit_v(recipe_file, tmp_path, capsys, monkeypatch):
    import resource

    assert fp._address_space_used() > 10**8  # this process, torch loaded (Linux /proc)
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (10**9, resource.RLIM_INFINITY))  # ulimit -v ~ 1 GB
    monkeypatch.setattr(fp, "_address_space_used", lambda: 0)
    assert fp.memory_bound() == int(0.8 * 10**9)
    code, err = cli_error(capsys, "train", "--config", recipe_file, "--set", "model.hidden=[20000]",
                          "--out", tmp_path / "run")
    assert code == 2 and "needs about" in err and "over the bound of 0.8 GB" in err
    assert not (tmp_path / "run").exists()


def test_a_model_file_that_declares_a_huge_network_is_refused_before_allocating(trained_run, tmp_path, capsys):
    run = shutil.copytree(trained_run, tmp_path / "run")
    blob = torch.load(run / "model.pt", weights_only=True)
    blob["model_config"]["hidden"] = [10**9]
    torch.save(blob, run / "model.pt")
    code, err = cli_error(capsys, "evaluate", run, "--quiet")
    assert code == 2 and "model.pt: the weights do not fit the model config" in err and "GB" in err


# --- 11. recipe files --------------------------------------------------------------------------


@pytest.mark.parametrize("content,message", [
    (b'name = "\xff\xfe"\n', "not valid TOML (not UTF-8"),
    (b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n", "not valid TOML (TOML inline arrays/tables are nested"),
    (b"x = " + b"[" * 300 + b"]" * 300 + b"\n", "is nested too deep"),
    (".".join(["a"] * 3000).encode() + b" = 1\n", "not valid TOML (TOML key has more than"),
    (b"[model]\nhidden = [" + b"1," * 600_000 + b"1]\n", "1200021 bytes; a recipe file is at most 1048576 bytes"),
], ids=["latin-1", "nested-5000", "nested-300", "key-3000-parts", "1.2-MB"])
def test_unreadable_recipe_files_are_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(RecipeError, match="bad.toml: "):
        load_recipe(path)
    code, err = cli_error(capsys, "train", "--config", path, "--out", tmp_path / "run")
    assert code == 2 and message in err and len(err) < 400
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,message", [
    (".".join(["a"] * 3000) + "=1", "a recipe key has at most 4 dotted parts"),
    ("model.hidden=" + "[" * 5000 + "]" * 5000, "the value is nested too deep"),
], ids=["key-3000-parts", "value-nested-5000"])
def test_hostile_overrides_are_one_line(recipe_file, tmp_path, capsys, override, message):
    code, err = cli_error(capsys, "train", "--config", recipe_file, "--set", override, "--out", tmp_path / "run")
    assert code == 2 and message in err and len(err) < 400


# --- 12. frame cache labels ----------------------------------------------------------------------


@pytest.fixture
def cache_copy(small_data, tmp_path):
    cfg, _ = small_data
    return shutil.copytree(_frames_cache_path(cfg, None), tmp_path / "frames")


@pytest.mark.parametrize("labels,message", [
    (None, r"train_labels\.npy: damaged frame cache \(No data left in file\)"),  # a 0-byte file
    (np.full(10, 99), "labels hold 99..99, the dataset's classes are 0..9"),
    (np.full(10, -1), "labels hold -1..-1"),
    (np.zeros(10, dtype=np.float32), "labels must be a list of integers, got float32"),
    (np.zeros((10, 2), dtype=np.int64), "labels must be a list of integers"),
])
def test_frame_cache_labels_are_checked(cache_copy, labels, message):
    path = cache_copy / "train_labels.npy"
    n = len(np.load(path))
    if labels is None:
        path.write_bytes(b"")
    else:
        np.save(path, np.resize(labels, (n,) + labels.shape[1:]))
    with pytest.raises(FrameCacheError, match=message):
        read_split(cache_copy, "train", 10)


def test_intact_frame_cache_reads(cache_copy, small_data):
    assert torch.equal(read_split(cache_copy, "test", 10).labels, small_data[1][1].labels)


# --- 13, 14. option values ----------------------------------------------------------------------


@pytest.mark.parametrize("value,message", [(v, f"calibration fraction must be in (0, 1], got {float(v)}")
                                           for v in ("2", "nan", "inf", "0", "-1")]
                                          + [("abc", "argument --fraction: invalid float value: 'abc'")])
def test_calibrate_fraction_is_in_0_1(trained_run, tmp_path, capsys, value, message):
    # checked by the library (calibrate_run) before the output folder is made; the CLI parses the number
    code, err = cli_error(capsys, "calibrate", trained_run, "--out", tmp_path / "cal", "--fraction", value)
    assert code == 2 and err == f"sast-deploy calibrate: error: {message}"
    assert not (tmp_path / "cal").exists()


@pytest.mark.parametrize("value,message", [
    ("abc", "argument --bits: expected integers separated by commas, got 'abc'"),
    ("", "argument --bits: expected integers separated by commas, got ''"),
    ("8,9", "target loihi2: weight_bits must be <= 8, got 9"),
    ("1,8", "target loihi2: weight_bits must be >= 2, got 1"),
    ("8,8", "weight bits: each width once, got 8,8")])
def test_precision_bits_are_checked(tmp_path, capsys, value, message):
    # the widths are the library's to check (precision_table, by the target spec), before any run is read:
    # the run here is an empty folder, whose error would show if they were not
    code, err = cli_error(capsys, "precision", tmp_path, "--bits", value)
    assert code == 2 and err == f"sast-deploy precision: error: {message}"
    assert list(tmp_path.iterdir()) == []


# --- 15. class folders of a real dataset -------------------------------------------------------


def _nmnist_tree(root, reference, folders):
    for split, digit in folders:
        (root / "NMNIST" / split / digit).mkdir(parents=True, exist_ok=True)
        shutil.copy(reference, root / "NMNIST" / split / digit / "00000.bin")


@pytest.mark.parametrize("folder", ["notadigit", "10", "3/nested"])
def test_nmnist_class_folders_are_the_classes(recipe_file, tmp_path, capsys, reference_nmnist, folder):
    _nmnist_tree(tmp_path / "data", reference_nmnist, [("Train", "1"), ("Train", folder), ("Test", "1")])
    code, err = cli_error(capsys, "train", "--config", recipe_file, "--set", "data.name=nmnist", "--set", "data.synthetic={}",
                          "--set", f"data.data_dir={tmp_path / 'data'}", "--out", tmp_path / "run", "--quiet")
    bad = tmp_path / "data" / "NMNIST" / "Train" / folder / "00000.bin"
    assert code == 2 and f"{bad}: tonic would take its label from '{folder}/00000.bin'" in err and "classes 0..9" in err
    assert not (tmp_path / "run").exists()


def test_dvsgesture_file_names_are_the_classes(tmp_path):
    from sast_deploy.data.datasets import check_class_folders

    split = tmp_path / "ibmGestureTrain"
    (split / "user01_fluorescent").mkdir(parents=True)
    cfg = DataConfig(name="dvsgesture", data_dir=str(tmp_path))
    for good in ("0.npy", "10.npy"):
        (split / "user01_fluorescent" / good).write_bytes(b"x")
    (split / "readme.npy").write_bytes(b"x")  # tonic skips files at the top
    check_class_folders(cfg, split)
    (split / "user01_fluorescent" / "11.npy").write_bytes(b"x")
    with pytest.raises(DataError, match=r"11\.npy: tonic would take its label from 'user01_fluorescent/11\.npy'"):
        check_class_folders(cfg, split)


# --- 16. the cache folder -------------------------------------------------------------------------


def test_cache_folder_is_checked_before_any_work(tmp_path, monkeypatch, capsys, recipe_file):
    monkeypatch.setenv("SAST_DEPLOY_CACHE", "")
    with pytest.raises(DataError, match="SAST_DEPLOY_CACHE is set but empty"):
        cache_dir()
    (tmp_path / "file").write_text("x")
    for value, message in ((tmp_path / "file", "not a folder"), (tmp_path / "file" / "sub", "cannot write there")):
        monkeypatch.setenv("SAST_DEPLOY_CACHE", str(value))
        with pytest.raises(DataError, match=f"SAST_DEPLOY_CACHE={value}: {message}"):
            cache_dir()
    code, err = cli_error(capsys, "train", "--config", recipe_file, "--out", tmp_path / "run", "--quiet")
    assert code == 2 and "cannot write there" in err
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAST_DEPLOY_CACHE", "rel/cache")
    assert cache_dir() == tmp_path / "rel" / "cache" and cache_dir().is_dir()


@pytest.mark.skipif(hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0, reason="root writes anywhere")
def test_read_only_cache_folder_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    monkeypatch.setenv("SAST_DEPLOY_CACHE", str(folder))
    try:
        with pytest.raises(DataError, match="cannot write there"):
            cache_dir()
    finally:
        folder.chmod(0o755)


# --- 20. options accepted and ignored -----------------------------------------------------------


@pytest.mark.parametrize("override,message", [("model.hidden=[3]", "--set 'model.hidden=[3]': write-dataset takes only data.* fields"),
                                              ("data.synthetic.max_sources=-5", "data.synthetic.max_sources must be >= 0, got -5")])
def test_write_dataset_refuses_settings_it_would_ignore(tmp_path, capsys, override, message):
    code, err = cli_error(capsys, "write-dataset", "synthetic-nmnist", "--out", tmp_path / "d", "--set", override, "--quiet")
    assert code == 2 and message in err
    assert not (tmp_path / "d").exists()


# --- 10. netx HDF5 files from elsewhere ----------------------------------------------------------


@pytest.fixture
def netx_file(tmp_path):
    from sast_deploy.deploy.export import write_netx
    from sast_deploy.deploy.quantize import quantize

    torch.manual_seed(0)
    return write_netx(quantize(build_model(ModelConfig(hidden=(4,)), (2, 3, 3), 2)), tmp_path / "n.h5")


def _replace(f, key, value):
    del f[key]
    f[key] = value


@pytest.mark.parametrize("edit,message", [
    (lambda f, d: _replace(f, "layer/1/weight", __import__("h5py").ExternalLink(str(d / "notes.txt"), "/x")),
     "/layer/1/weight is an external link"),
    (lambda f, d: _replace(f, "layer/1/weight", __import__("h5py").ExternalLink(str(d / "other.h5"), "/layer/1/weight")),
     "/layer/1/weight is an external link"),  # even to a readable HDF5 file
    (lambda f, d: _replace(f, "layer/1/weight", __import__("h5py").SoftLink("/layer/1/weight")), "/layer/1/weight is a soft link"),
    (lambda f, d: f["layer/1"].__setitem__("alias", __import__("h5py").SoftLink("/layer/2")), "/layer/1/alias is a soft link"),
    (lambda f, d: (f["layer/1"].__delitem__("weight"), f["layer/1"].create_dataset("weight", shape=(10**6, 10**6), dtype="i8",
                                                                                     chunks=(1, 1000))),
     "/layer/1/weight declares shape (1000000, 1000000); at most 134217728 values"),
    (lambda f, d: (f["layer/1"].__delitem__("weight"), f["layer/1"].create_dataset("weight", data=np.ones((9, 18), dtype=np.int8))),
     "/layer/1/weight has shape (9, 18), expected (4, 18)"),
    (lambda f, d: f["layer"].move("2", "5"), "/layer must hold groups 0, 1, ... without gaps (found ['0', '1', '5'])"),
    (lambda f, d: f["layer/1/neuron"].create_group("deeper").create_group("still"), "nested deeper than a netx network"),
    (lambda f, d: f["layer/1"].attrs.__setitem__("scale", "abc"), "attribute /layer/1 scale must be one finite number"),
])
def test_netx_files_hold_their_data_themselves(netx_file, tmp_path, capsys, trained_run, edit, message):
    from sast_deploy.deploy.export import NetxFormatError, read_netx

    (tmp_path / "notes.txt").write_text("not hdf5")
    shutil.copy(netx_file, tmp_path / "other.h5")
    import h5py

    with h5py.File(netx_file, "a") as f:
        edit(f, tmp_path)
    with pytest.raises(NetxFormatError) as info:
        read_netx(netx_file)
    assert message in str(info.value) and str(info.value).startswith(str(netx_file))
    code, err = cli_error(capsys, "simulate", netx_file, "--run", trained_run, "--quiet", "--out", tmp_path / "s.json")
    assert code == 2 and message in err and not (tmp_path / "s.json").exists()
