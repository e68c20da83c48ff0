"""Loihi 2 fixed point: quantization, netx export, Lava's simulator and the emulator agree."""

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from sast_deploy.cli import main
from sast_deploy.deploy.export import NetxFormatError, read_netx, write_netx
from sast_deploy.training.model import ModelConfig, build_model
from sast_deploy.deploy.emulator import emulate_counts
from sast_deploy.deploy.netx_weights import netx_dense_weights
from sast_deploy.deploy.quantize import Loihi2Spec, QuantizationError, QuantizedNet, quantize
from sast_deploy.deploy.simulate import simulate_lava
from sast_deploy.data.datasets import load_dataset
from sast_deploy.training.evaluate import output_counts
from sast_deploy.training.runs import load_run

from helpers import conv_model, random_mlp, random_spikes


@pytest.mark.parametrize(
    "seed,vths,dvs",
    [(0, (300, 400), (410, 0)), (1, (1, 2000), (4096, 1000)), (2, (131071, 50), (2048, 4095))],
)
def test_lava_equals_emulator_on_random_mlps(tmp_path, seed, vths, dvs):
    qnet = random_mlp(seed, (24, 12, 5), vths, dvs)
    path = write_netx(qnet, tmp_path / "net.h5")
    frames = random_spikes(seed, 6, 10, (1, 1, 24))
    sim = simulate_lava(path, frames, progress=False, chunks=3)
    emu = emulate_counts(read_netx(path), torch.from_numpy(frames)).numpy()
    np.testing.assert_array_equal(sim.counts, emu)
    if seed == 0:
        assert sim.counts.sum() > 0  # the comparison is not between two silent networks


def test_lava_equals_emulator_through_netx_weight_traps(tmp_path):
    qnet = random_mlp(3, (16, 10, 4), (200, 60), (300, 300), inhibitory_last=True)
    stored, _ = netx_dense_weights(qnet.layers[1].weight)
    path = write_netx(qnet, tmp_path / "net.h5")
    frames = random_spikes(3, 5, 12, (1, 1, 16), 0.5)
    sim = simulate_lava(path, frames, progress=False)
    np.testing.assert_array_equal(sim.counts, emulate_counts(read_netx(path), torch.from_numpy(frames)).numpy())


def test_conv_net_lava_equals_emulator(tmp_path):
    model = conv_model(beta=0.0)
    qnet = quantize(model)
    assert [q.kind for q in qnet.layers] == ["conv", "pool", "dense"]
    path = write_netx(qnet, tmp_path / "conv.h5")
    frames = random_spikes(5, 6, 8, (2, 9, 8), 0.4)
    sim = simulate_lava(path, frames, progress=False)
    emu = emulate_counts(read_netx(path), torch.from_numpy(frames)).numpy()
    np.testing.assert_array_equal(sim.counts, emu)
    assert sim.counts.sum() > 0


def test_conv_net_without_pooling_lava_equals_emulator(tmp_path):
    # the default conv net (no pooling layer): conv -> dense -> dense readout
    torch.manual_seed(2)
    model = build_model(ModelConfig(arch="conv", hidden=(6,), conv_channels=3, conv_kernel=3, conv_stride=2, beta=0.5), (2, 9, 8), 4)
    with torch.no_grad():
        for layer in model.layers:
            layer.synapse.weight.mul_(4.0)  # make every layer fire
    qnet = quantize(model)
    assert [q.kind for q in qnet.layers] == ["conv", "dense", "dense"]
    path = write_netx(qnet, tmp_path / "conv.h5")
    frames = random_spikes(4, 6, 8, (2, 9, 8), 0.4)
    sim = simulate_lava(path, frames, progress=False)
    np.testing.assert_array_equal(sim.counts, emulate_counts(read_netx(path), torch.from_numpy(frames)).numpy())
    assert sim.counts.sum() > 0


def test_emulator_runs_the_same_equations_as_the_float_model():
    # weights that are exact multiples of 1/scale and decays without rounding (beta 0 or 1)
    for beta in (0.0, 1.0):
        torch.manual_seed(1)
        model = build_model(ModelConfig(hidden=(20,), beta=beta, v_th=1.0), (2, 5, 5), 6)
        with torch.no_grad():
            for layer in model.layers:
                w = layer.synapse.weight
                w.copy_(torch.randint(-127, 128, w.shape).float() / 64.0)  # scale becomes 64 exactly
                w.view(-1)[0] = 127 / 64.0
        qnet = quantize(model)
        assert [q.scale for q in qnet.layers] == [64.0, 64.0]
        frames = torch.from_numpy(random_spikes(7, 32, 12, (2, 5, 5)))
        from sast_deploy.data.datasets import FrameDataset

        # float32 is exact here: sums of a few dozen multiples of 1/64
        float_counts = output_counts(model, FrameDataset(frames.numpy(), np.zeros(32)), "hard").long()
        assert torch.equal(emulate_counts(qnet, frames), float_counts)
        assert float_counts.sum() > 0


def test_quantization_report_and_errors():
    model = build_model(ModelConfig(hidden=(8,)), (2, 4, 4), 3)
    qnet = quantize(model, Loihi2Spec())
    rows = qnet.report()
    assert [r["weight_max"] <= 127 and r["weight_min"] >= -128 for r in rows] == [True, True]
    assert all(r["clipped_weights"] == 0 and r["mean_abs_quant_error"] > 0 for r in rows)
    assert max(max(abs(r["weight_max"]), abs(r["weight_min"])) for r in rows) >= 127  # the 8-bit range is used
    assert rows[0]["v_decay"] == 410  # round(4096 * (1 - 0.9))
    with torch.no_grad():
        model.layers[1].synapse.weight.zero_()
    with pytest.raises(QuantizationError, match=r"layer 1 \(dense\): all weights are zero"):
        quantize(model)


def test_netx_loads_the_export_as_a_process_graph(tmp_path):
    from lava.lib.dl.netx.hdf5 import Network

    qnet = random_mlp(0, (24, 12, 5), (300, 400), (410, 0))
    net = Network(net_config=str(write_netx(qnet, tmp_path / "net.h5")))
    assert len(net.layers) == 2 and tuple(net.inp.shape) == (24,) and tuple(net.out.shape) == (5,)
    assert np.array_equal(net.layers[0].neuron.vth.init, 300)
    cnet = Network(net_config=str(write_netx(quantize(conv_model(0.5)), tmp_path / "conv.h5")))
    assert len(cnet.layers) == 3 and tuple(cnet.inp.shape) == (8, 9, 2)  # Lava's (x, y, channels)


def _break(path, group, key, value=None):
    with h5py.File(path, "a") as f:
        del f[f"{group}/{key}"]
        if value is not None:
            f[group].create_dataset(key, data=value)


def _assert_same_network(a: QuantizedNet, b: QuantizedNet) -> None:
    assert (a.input_shape, a.n_classes, a.spec) == (tuple(b.input_shape), b.n_classes, b.spec)
    assert len(a.layers) == len(b.layers)
    for qa, qb in zip(a.layers, b.layers):
        for f in dataclasses.fields(qa):
            va, vb = getattr(qa, f.name), getattr(qb, f.name)
            assert np.array_equal(va, vb) and np.asarray(va).dtype.kind == np.asarray(vb).dtype.kind, f.name


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_netx_round_trip_returns_the_written_network(tmp_path, kind):
    torch.manual_seed(3)
    model = build_model(ModelConfig(hidden=(12,)), (2, 5, 5), 4) if kind == "mlp" else conv_model(0.5)
    spec = Loihi2Spec(name="loihi2-w5", weight_bits=5, vth_bits=16)
    qnet = quantize(model, spec)
    assert any(q.n_clipped or q.mean_abs_error for q in qnet.layers)  # the statistics travel too
    _assert_same_network(read_netx(write_netx(qnet, tmp_path / "net.h5")), qnet)


@pytest.mark.slow
def test_compare_exports_the_network_it_ran_for_any_spec_change(trained_run, tmp_path):
    import shutil

    from sast_deploy.deploy.compare import compare_run

    run = shutil.copytree(trained_run, tmp_path / "run")
    spec = Loihi2Spec(name="loihi2-vth16", vth_bits=16)  # same weight bits, another field
    compare_run(run, samples=3, progress=False, spec=spec, copies=1)
    model = load_run(run)[0]
    _assert_same_network(read_netx(run / "net.h5"), quantize(model, spec))
    compare_run(run, samples=3, progress=False, copies=1)  # back to the default spec: exported again
    _assert_same_network(read_netx(run / "net.h5"), quantize(model, Loihi2Spec()))
    assert json.loads((run / "quantization.json").read_text())["target"] == "loihi2"


def test_malformed_networks_are_named_by_file_and_field(tmp_path):
    qnet = random_mlp(0, (24, 12, 5), (300, 400), (410, 0))
    cases = [
        ("layer/1/neuron", "vThMant", None, "missing field /layer/1/neuron/vThMant"),
        ("layer/2", "weight", np.full((5, 12), 0.5), "/layer/2/weight must hold integers"),
        ("layer/2", "weight", np.zeros((5, 12), dtype=int), "/layer/2/weight is all zero"),
        ("layer/1", "weight", np.ones((12, 7), dtype=int), "/layer/1/weight has shape"),
        ("layer/1/neuron", "vDecay", 5000, "vDecay = 5000 is outside"),
        ("layer/1/neuron", "iDecay", 2048, "iDecay = 2048; only 4096"),
    ]
    for group, key, value, message in cases:
        path = write_netx(qnet, tmp_path / f"{key}.h5")
        _break(path, group, key, value)
        with pytest.raises(NetxFormatError, match=message) as info:
            read_netx(path)
        assert str(path) in str(info.value)
    with pytest.raises(NetxFormatError, match="not found"):
        read_netx(tmp_path / "missing.h5")


def test_compare_on_a_trained_run(trained_run, capsys):
    assert main(["compare", str(trained_run), "--samples", "25", "--quiet"]) == 0
    result = json.loads((trained_run / "compare.json").read_text())
    for key in ("surrogate_accuracy", "hard_accuracy", "emulator_accuracy", "lava_accuracy", "lava_emulator_agreement",
                "lava_hard_prediction_agreement", "transfer_gap_pp", "quantization_gap_pp", "n_samples"):
        assert key in result
    assert result["n_samples"] == 25
    # Lava ran a class-stratified subset: each class's share of the test split, within one sample
    labels = load_dataset(load_run(trained_run)[1].data, progress=False)[1].labels.numpy()
    share = np.bincount(labels, minlength=10) * 25 / len(labels)
    assert sum(result["lava_class_counts"]) == 25 and np.all(np.abs(np.asarray(result["lava_class_counts"]) - share) < 1)
    assert result["lava_emulator_agreement"] == 1.0
    assert result["emulator_accuracy_lava_subset"] == result["lava_accuracy"]
    # percentages are 100 x k / n in float64, as printed: 22.5, never 22.499999403953552 (float32)
    for key, n in (("lava_accuracy", 25), ("hard_accuracy_lava_subset", 25), ("hard_accuracy", result["n_test"]),
                   ("surrogate_accuracy", result["n_test"]), ("emulator_accuracy", result["n_test"])):
        assert result[key] == 100 * round(result[key] * n / 100) / n, (key, result[key])
    assert result["lava_hard_prediction_agreement"] == round(result["lava_hard_prediction_agreement"] * 25) / 25
    assert (trained_run / "compare.md").read_text().startswith("| run |")
    assert "| " + trained_run.name in capsys.readouterr().out
    # the same comparison in memory, from the model and the file compare wrote: the same fields and values
    from sast_deploy.deploy.compare import compare

    model, recipe, _ = load_run(trained_run)
    test = load_dataset(recipe.data, progress=False)[1]
    before = (trained_run / "compare.json").stat().st_mtime_ns
    again = compare(model, trained_run / "net.h5", test, samples=25, subset_seed=recipe.data.subset_seed, progress=False)
    timing = {"lava_samples_per_s", "lava_timesteps_per_s", "lava_compile_seconds"}
    assert list(again) == [k for k in result if k not in ("run", "weight_bits", "deployable")]
    assert {k: v for k, v in again.items() if k not in timing} == {k: result[k] for k in again if k not in timing}
    assert (trained_run / "compare.json").stat().st_mtime_ns == before  # writes nothing


@pytest.mark.slow
def test_cli_export_simulate_and_bad_inputs(trained_run, tmp_path, capsys, small_data):
    assert main(["export", str(trained_run), "--out", str(tmp_path / "n.h5")]) == 0
    assert "vThMant" in capsys.readouterr().out
    assert main(["simulate", str(tmp_path / "n.h5"), "--run", str(trained_run), "--samples", "5", "--out", str(tmp_path / "s.json"), "--quiet"]) == 0
    sim = json.loads((tmp_path / "s.json").read_text())
    assert len(sim["spike_counts"]) == 5 and sim["timesteps_per_s"] > 0
    assert len(set(sim["labels"])) == 5 and sum(sim["class_counts"]) == 5  # five samples, five classes: stratified
    # a run directory without a model: error, and no network written
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty")]) == 2
    assert "no model in this run directory" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "net.h5").exists()
    # a network whose input size does not match the dataset
    other = write_netx(random_mlp(0, (24, 12, 10), (300, 400), (410, 0)), tmp_path / "small.h5")
    assert main(["simulate", str(other), "--run", str(trained_run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "small.h5" in err and "takes 24 inputs" in err
    # a malformed file
    bad = tmp_path / "bad.h5"
    write_netx(random_mlp(0, (24, 12, 10), (300, 400), (410, 0)), bad)
    _break(bad, "layer/1/neuron", "iDecay")
    assert main(["simulate", str(bad), "--run", str(trained_run), "--quiet", "--out", str(tmp_path / "x.json")]) == 2
    assert "iDecay" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


@pytest.fixture
def netx_opened(monkeypatch):
    """The files lava-dl netx builds its process graphs from (CopiesNetwork's included: a subclass)."""
    from lava.lib.dl.netx import hdf5

    opened, init = [], hdf5.Network.__init__

    def spy(self, *args, **kwargs):
        path = kwargs.get("net_config", args[0] if args else None)
        with h5py.File(path, "r") as f:
            opened.append((path, f.attrs.get("note")))
        init(self, *args, **kwargs)

    monkeypatch.setattr(hdf5.Network, "__init__", spy)
    return opened


@pytest.mark.slow
def test_simulate_builds_lavas_graph_from_the_users_file(trained_run, tmp_path, capsys, netx_opened):
    """netx's interface is the file: ``sast-deploy simulate NET.h5`` runs the file it was given,
    not a rewritten copy (the note below is a byte that only the user's file holds)."""
    net = tmp_path / "mine.h5"
    assert main(["export", str(trained_run), "--out", str(net)]) == 0
    with h5py.File(net, "a") as f:
        f.attrs["note"] = "the user's own file"
    for copies in ("1", "3"):  # netx's Network, and CopiesNetwork on the same file
        assert main(["simulate", str(net), "--run", str(trained_run), "--samples", "3", "--copies", copies,
                     "--out", str(tmp_path / "s.json"), "--quiet"]) == 0
    assert netx_opened == [(str(net), "the user's own file")] * 2
    capsys.readouterr()


def test_simulate_lava_takes_a_file_and_quantized_nets_go_through_one(tmp_path, netx_opened):
    qnet = random_mlp(0, (24, 12, 5), (300, 400), (410, 0))
    frames = random_spikes(0, 3, 6, (1, 1, 24))
    with pytest.raises(TypeError, match="write_netx"):
        simulate_lava(qnet, frames, progress=False)
    from sast_deploy.deploy.simulate import simulate_quantized

    in_memory = simulate_quantized(qnet, frames, progress=False)
    (temporary, _), = netx_opened
    assert not Path(temporary).exists()  # written for the run, then removed
    path = write_netx(qnet, tmp_path / "net.h5")
    np.testing.assert_array_equal(simulate_lava(path, frames, progress=False).counts, in_memory.counts)
    assert netx_opened[1] == (str(path), None)


def test_hardware_configs_load_and_bad_keys_are_named(tmp_path):
    from pathlib import Path

    from sast_deploy.training.recipe import RecipeError
    from sast_deploy.deploy.simulate import SimulatorConfig

    for path in (Path(__file__).resolve().parents[1] / "hardware").glob("*.toml"):
        assert SimulatorConfig.load(path).select_tag == "fixed_pt"
    bad = tmp_path / "hw.toml"
    bad.write_text('select_tag = "fixed_pt"\nchunk = 3\n')
    with pytest.raises(RecipeError, match=r"hw.toml.*chunk"):
        SimulatorConfig.load(bad)
    with pytest.raises(RecipeError, match="not found"):
        SimulatorConfig.load(tmp_path / "none.toml")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_k_copies_in_one_graph_are_bit_identical(tmp_path, kind):
    if kind == "mlp":
        qnet, shape = random_mlp(4, (24, 12, 5), (300, 400), (410, 0)), (1, 1, 24)
    else:
        qnet, shape = quantize(conv_model(0.5)), (2, 9, 8)
    path = write_netx(qnet, tmp_path / "net.h5")
    frames = random_spikes(9, 7, 8, shape, 0.4)  # 7 samples: the last group of 3 is padded
    single = simulate_lava(path, frames, progress=False)
    batched = simulate_lava(path, frames, progress=False, copies=3)
    np.testing.assert_array_equal(batched.counts, single.counts)
    np.testing.assert_array_equal(single.counts, emulate_counts(read_netx(path), torch.from_numpy(frames)).numpy())
    assert single.counts.sum() > 0


@pytest.mark.parametrize("command,bits,bound", [("export", "9", "<= 8"), ("compare", "1", ">= 2"), ("evaluate", "0", ">= 2")])
def test_weight_bits_are_checked_once_by_the_target_spec(tmp_path, capsys, command, bits, bound):
    extra = ["--emulator"] if command == "evaluate" else []
    assert main([command, str(tmp_path), "--weight-bits", bits, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"sast-deploy {command}: error: target loihi2: weight_bits must be {bound}, got {bits}"
    assert list(tmp_path.iterdir()) == []  # refused before anything is read or written
