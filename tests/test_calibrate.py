"""Post-hoc threshold calibration: fitted on training data only, carried by the model config."""

import numpy as np
import pytest
import torch

from sast_deploy.calibrate import calibrate_run, calibrate_thresholds, calibration_split
from sast_deploy.data import load_dataset
from sast_deploy.model import ModelConfig, build_model
from sast_deploy.quantize import quantize
from sast_deploy.train import evaluate, load_run


def test_calibration_split_takes_whole_training_sources(small_data):
    _, (train, test) = small_data
    calib = calibration_split(train, 0.2, seed=0)
    assert 0 < len(calib) < len(train)
    chosen = set(calib.source_ids.tolist())
    assert chosen <= set(train.source_ids.tolist()) and not chosen & set(test.source_ids.tolist())
    # every recording of a chosen source is in
    assert len(calib) == int(np.isin(train.source_ids, list(chosen)).sum())


def test_thresholds_move_to_what_maximises_hard_accuracy(small_data):
    _, (train, _) = small_data
    calib = calibration_split(train, 0.5)
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=(16,)), calib.input_shape, 10)  # untrained: weak currents
    before = evaluate(model, calib, ("hard",))["hard_accuracy"]
    scales, acc = calibrate_thresholds(model, calib, grid=(0.2, 0.5, 1.0), passes=1)
    assert acc >= before and len(scales) == 2 and set(scales) <= {0.2, 0.5, 1.0}
    with pytest.raises(ValueError, match="v_th_scale has 1 entries"):
        build_model(ModelConfig(hidden=(16,), v_th_scale=(0.5,)), calib.input_shape, 10)


def test_calibrated_run_carries_its_thresholds_to_every_backend(trained_run, tmp_path):
    m = calibrate_run(trained_run, tmp_path / "cal", fraction=0.2, progress=False)
    model, recipe, metrics = load_run(tmp_path / "cal")
    assert recipe.model.v_th_scale == tuple(m["v_th_scale"])
    assert [layer.lif.v_th for layer in model.layers] == [1.0 * s for s in m["v_th_scale"]]
    test = load_dataset(recipe.data, progress=False)[1]
    assert evaluate(model, test, ("hard",))["hard_accuracy"] == pytest.approx(metrics["hard_accuracy"])
    q = quantize(model)
    assert [layer.vth_mant for layer in q.layers] == [round(lif_th * layer.scale) for lif_th, layer in
                                                      zip([lay.lif.v_th for lay in model.layers], q.layers)]
    assert metrics["calibrated_from"] == str(trained_run)
