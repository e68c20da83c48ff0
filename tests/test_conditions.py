"""Deployment conditions: weight precision, SynOps, robustness to input corruption."""

import json

import numpy as np
import pytest
import torch

from sast_deploy.cli import main
from sast_deploy.deploy.export import read_netx, write_netx
from sast_deploy.deploy.emulator import emulate, fan_out
from sast_deploy.deploy.quantize import Loihi2Spec, QuantizationError, QuantizedLayer, QuantizedNet, load_spec, quantize
from sast_deploy.analysis.precision import precision_table, sweep_specs
from sast_deploy.analysis.robustness import FlipPolarity, corrupted_frames, split_events
from sast_deploy.deploy.simulate import simulate_lava
from sast_deploy.training.runs import load_run


@pytest.mark.slow
def test_four_bit_weights_lava_equals_emulator(tmp_path, trained_run):
    model, recipe, _ = load_run(trained_run)
    qnet = quantize(model, Loihi2Spec(weight_bits=4))
    for q in qnet.layers:
        assert q.weight.min() >= -8 and q.weight.max() <= 7
        assert q.weight.max() == 7 or q.weight.min() == -7  # the largest |w| uses the 4-bit range
    path = write_netx(qnet, tmp_path / "w4.h5")
    from sast_deploy.data.datasets import load_dataset

    frames = load_dataset(recipe.data, progress=False)[1].frames[:30]
    sim = simulate_lava(path, frames.numpy(), progress=False)
    emu = emulate(read_netx(path), frames).counts.numpy()
    assert emu.sum() > 0
    np.testing.assert_array_equal(sim.counts, emu)
    # fewer bits, coarser weights
    err = [quantize(model, Loihi2Spec(weight_bits=b)).layers[0].mean_abs_error for b in (8, 6, 4)]
    assert err[0] < err[1] < err[2]


def test_synops_count_spikes_times_fan_out():
    w1 = np.array([[1, 2, 0], [3, -1, 2]])  # 3 inputs -> 2 neurons, fan-out 2 each
    w2 = np.array([[5, 5]])  # 2 -> 1, fan-out 1
    layers = [QuantizedLayer("dense", w1, 2, 0, 4096, 1.0, (3,), (2,)), QuantizedLayer("dense", w2, 4, 0, 4096, 1.0, (2,), (1,))]
    qnet = QuantizedNet(layers, (1, 1, 3), 1)
    frames = torch.zeros(2, 4, 1, 1, 3, dtype=torch.uint8)
    frames[0, :, 0, 0, 1] = 1  # sample 0: input 1 spikes every step (4 spikes)
    frames[1, 0, 0, 0, :] = 1  # sample 1: all inputs once (3 spikes)
    e = emulate(qnet, frames)
    # layer 0: (4 + 3) input spikes x fan-out 2 = 14; layer 1: its input spikes x 1
    assert e.synops[0] == 14
    assert e.synops[1] == e.spikes[0] * 1
    assert e.synops_per_sample == (14 + e.spikes[0]) / 2
    act = e.activity()
    assert act["spikes_per_neuron_per_step"][0] == e.spikes[0] / (2 * 4 * 2)
    # conv fan-out: interior pixels reach more outputs than border pixels
    conv = QuantizedLayer("conv", np.ones((4, 2, 3, 3), dtype=np.int64), 1, 0, 4096, 1.0, (2, 6, 6), (4, 4, 4))
    fo = fan_out(conv)
    assert fo[0, 0, 0] == 4 and fo[0, 3, 3] == 4 * 9


def test_corruptions_are_seeded_and_change_the_input(trained_run):
    _, recipe, _ = load_run(trained_run)
    events, labels = split_events(recipe.data)
    assert len(events) == len(labels) > 0
    clean = corrupted_frames(events[:5], recipe.data, "drop", 0.0)
    np.random.seed(1234)
    callers_draw = np.random.random()
    np.random.seed(1234)
    for name, sev in (("drop", 0.5), ("noise", 10.0), ("jitter", 20.0), ("flip", 0.5)):
        a = corrupted_frames(events[:5], recipe.data, name, sev, seed=1)
        b = corrupted_frames(events[:5], recipe.data, name, sev, seed=1)
        assert torch.equal(a, b), name
        assert not torch.equal(a, clean), name
    assert np.random.random() == callers_draw  # numpy's global generator is the caller's, untouched
    ev = events[0]
    flipped = FlipPolarity(p=1.0)(ev)
    assert np.array_equal(flipped["p"], 1 - ev["p"]) and np.array_equal(flipped["t"], ev["t"])


def test_precision_sweep_is_the_default_spec_at_each_width_checked_before_any_run(tmp_path):
    specs = sweep_specs((8, 4))
    assert [(s.weight_bits, s.vth_bits) for s in specs] == [(8, load_spec().vth_bits), (4, load_spec().vth_bits)]
    for bits, message in (((8, 9), "weight_bits must be <= 8, got 9"), ((4, 4), "each width once")):
        with pytest.raises(QuantizationError, match=message):
            precision_table([tmp_path / "no-such-run"], bits)


@pytest.mark.slow
def test_cli_robustness_and_precision(trained_run, tmp_path, capsys):
    assert main(["robustness", str(trained_run), "--out", str(tmp_path / "rob"), "--quiet"]) == 0
    result = json.loads((tmp_path / "rob" / "robustness.json").read_text())
    settings = {(r["corruption"], r["severity"]) for r in result["rows"]}
    assert ("clean", 0.0) in settings and len(settings) == 13
    assert (tmp_path / "rob" / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["precision", str(trained_run), "--bits", "8,4", "--out", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "hard 4-bit %" in out and "SynOps/sample 8-bit" in out
    table = json.loads((tmp_path / "p.json").read_text())
    assert set(table["runs"][0]) >= {"w8", "w4", "synops_w8"}
