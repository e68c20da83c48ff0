"""NIR and ONNX exports, each verified against our own model or emulator."""

import nir
import numpy as np
import onnx
import pytest
import torch

from sast_deploy.cli import main
from sast_deploy.data.datasets import FrameDataset, load_dataset
from sast_deploy.deploy.interchange import InterchangeError, run_nir_with_norse, run_onnx_reference, write_nir, write_onnx
from sast_deploy.training.model import ModelConfig, build_model
from sast_deploy.deploy.emulator import emulate_counts
from sast_deploy.deploy.quantize import quantize
from sast_deploy.training.evaluate import output_counts
from sast_deploy.training.runs import load_run


def _test_frames(run, n=24):
    _, recipe, _ = load_run(run)
    test = load_dataset(recipe.data, progress=False)[1]
    return test.frames[:n]


def _conv_net():
    torch.manual_seed(3)
    model = build_model(ModelConfig(arch="conv", hidden=(), conv_channels=4, conv_kernel=3, conv_stride=2, pool=2, beta=0.8), (2, 12, 12), 5)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)
    return model, (torch.rand(10, 8, 2, 12, 12, generator=torch.Generator().manual_seed(4)) < 0.3).to(torch.uint8)


def test_nir_round_trip_through_norse_matches_our_hard_spikes(tmp_path, trained_run):
    model, _, _ = load_run(trained_run)
    frames = _test_frames(trained_run)
    path = write_nir(model, tmp_path / "net.nir")
    graph = nir.read(str(path))
    assert {type(n).__name__ for n in graph.nodes.values()} >= {"Input", "Flatten", "Linear", "LIF", "Output"}
    lif = graph.nodes["lif0"]
    np.testing.assert_allclose(lif.tau, 1e-3 / (1 - 0.9), rtol=1e-6)
    ours = output_counts(model, FrameDataset(frames.numpy(), np.zeros(len(frames))), "hard")
    theirs = run_nir_with_norse(path, frames)
    assert ours.sum() > 0
    assert torch.equal(theirs, ours)

    conv, cframes = _conv_net()
    cpath = write_nir(conv, tmp_path / "conv.nir")
    ours = output_counts(conv, FrameDataset(cframes.numpy(), np.zeros(len(cframes))), "hard")
    assert ours.sum() > 0
    assert torch.equal(run_nir_with_norse(cpath, cframes), ours)


def test_nir_refuses_a_neuron_without_leak(tmp_path):
    model = build_model(ModelConfig(hidden=(4,), beta=1.0), (2, 3, 3), 2)
    with pytest.raises(InterchangeError, match="beta = 1"):
        write_nir(model, tmp_path / "x.nir")
    assert not (tmp_path / "x.nir").exists()


def test_onnx_step_graph_matches_the_emulator(tmp_path, trained_run):
    model, _, _ = load_run(trained_run)
    frames = _test_frames(trained_run)
    for net, fr, name in ((model, frames, "mlp"), (*_conv_net(), "conv")):
        qnet = quantize(net)
        path = write_onnx(qnet, tmp_path / f"{name}.onnx")
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        emu = emulate_counts(qnet, fr).numpy()
        assert emu.sum() > 0
        np.testing.assert_array_equal(run_onnx_reference(path, qnet, fr.numpy()), emu)


def test_cli_export_targets(trained_run, tmp_path, capsys):
    assert main(["export", "--target"]) == 0
    listed = capsys.readouterr().out
    assert all(t in listed for t in ("lava", "nir", "onnx"))
    assert main(["export", str(trained_run), "--target", "tflite"]) == 2
    assert "unknown target 'tflite'; known: lava, nir, onnx" in capsys.readouterr().err
    for target in ("nir", "onnx"):
        assert main(["export", str(trained_run), "--target", target, "--out", str(tmp_path / f"n.{target}")]) == 0
        assert (tmp_path / f"n.{target}").stat().st_size > 0
