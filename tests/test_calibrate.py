"""Post-hoc threshold calibration: fitted on training data only, carried by the model config."""

import numpy as np
import pytest
import torch

from sast_deploy.training.calibrate import LIMIT_OCTAVES, calibrate_run, calibrate_thresholds, calibration_split, search_log_scale
from sast_deploy.data.datasets import load_dataset, load_splits
from sast_deploy.deploy.quantize import QuantizationError, load_spec, threshold_mantissa
import sast_deploy.training.calibrate as calibrate_mod
from sast_deploy.training.model import ModelConfig, build_model
from sast_deploy.deploy.quantize import quantize
from sast_deploy.training.evaluate import evaluate
from sast_deploy.training.runs import load_run


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
    cal = calibrate_thresholds(model, calib, passes=1)
    assert cal.accuracy >= before and len(cal.scales) == 2 and len(cal.bound_hit) == 2
    assert evaluate(model_with(model, cal.scales), calib, ("hard",))["hard_accuracy"] == cal.accuracy
    with pytest.raises(ValueError, match="v_th_scale has 1 entries"):
        build_model(ModelConfig(hidden=(16,), v_th_scale=(0.5,)), calib.input_shape, 10)


def model_with(model, scales):
    import dataclasses
    out = build_model(dataclasses.replace(model.config, v_th_scale=tuple(scales)), model.input_shape, model.n_classes)
    out.load_state_dict(model.state_dict())
    return out


@pytest.mark.parametrize("peak_octave", [-9.0, -2.5, 0.0, 5.25])
def test_log_search_grows_past_its_first_grid_until_the_optimum_is_inside(peak_octave):
    calls = []

    def accuracy_at(s):  # a single peak at 2^peak_octave, flat (chance) far from it
        calls.append(s)
        return max(10.0, 90.0 - 20.0 * abs(np.log2(s) - peak_octave))

    start_accuracy = accuracy_at(1.0)
    calls.clear()
    scale, acc, (lo, hi), bound, skipped = search_log_scale(accuracy_at, 1.0, start_accuracy)
    assert scale == pytest.approx(2.0 ** peak_octave) and acc == pytest.approx(90.0)
    assert not bound and lo < scale < hi and not skipped  # the optimum is interior to what was searched
    assert len(calls) == len(set(calls))  # no multiplier evaluated twice
    assert len(calls) < 60  # it stopped growing once the peak was inside


def test_log_search_reports_when_its_outer_limit_is_hit_and_keeps_ties_at_the_start():
    scale, acc, (lo, _), bound, _ = search_log_scale(lambda s: -np.log2(s), 1.0, 0.0)  # better and better as s -> 0
    assert bound and scale == lo == 2.0 ** LIMIT_OCTAVES[0]
    scale, acc, (lo, hi), bound, _ = search_log_scale(lambda s: 50.0, 1.0, 50.0)  # flat: nothing beats the start
    assert scale == 1.0 and acc == 50.0 and not bound
    assert (lo, hi) == (2.0 ** LIMIT_OCTAVES[0], 2.0 ** LIMIT_OCTAVES[1])  # a plateau is searched to the limits


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
    # fitted on the run's own validation split (the cut training made), not a new carve
    val = load_splits(recipe.data, progress=False).val
    assert m["calibration_split"] == "validation" and m["calibration_samples"] == len(val)
    assert metrics["validation"]["n_samples"] == len(val)
    assert metrics["validation"]["hard_accuracy"] == pytest.approx(m["calibration_hard_accuracy"])
    assert len(metrics["calibration_bound_hit"]) == len(model.layers) == len(metrics["calibration_searched"])
    assert len(metrics["calibration_out_of_range"]) == len(model.layers)


def test_log_search_skips_what_the_target_cannot_represent():
    calls = []

    def accuracy_at(s):  # best far below the representable floor of 2^-3
        calls.append(s)
        return max(10.0, 90.0 - 10.0 * abs(np.log2(s) + 9))

    floor = 2.0 ** -3
    scale, acc, (lo, hi), bound, skipped = search_log_scale(accuracy_at, 1.0, accuracy_at(1.0), lambda s: s >= floor)
    assert scale == floor and lo == floor and min(calls) >= floor  # never evaluated below the floor
    assert skipped and max(skipped) < floor and not bound
    # a start that is itself out of range is never kept, even when nothing scores better
    scale, *_ = search_log_scale(lambda s: 10.0, 2.0 ** -6, 90.0, lambda s: s >= floor)
    assert scale >= floor


def test_calibration_never_yields_an_unrepresentable_threshold(small_data, monkeypatch):
    _, (train, _) = small_data
    calib = calibration_split(train, 0.5)
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=(16,)), calib.input_shape, 10)  # untrained: silent, wants low thresholds
    with torch.no_grad():
        model.layers[0].synapse.weight[0, 0] = 300.0  # one outlier: the layer's scale leaves low thresholds at 0
    # the regression: without the check, the search settles on thresholds that round to 0
    monkeypatch.setattr(calibrate_mod, "representable_multipliers", lambda m, spec=None: [lambda s: True] * len(m.layers))
    free = calibrate_thresholds(model, calib, passes=1)
    with pytest.raises(QuantizationError, match="layer 0 .*threshold rounds to 0"):
        quantize(model_with(model, free.scales), load_spec())
    monkeypatch.undo()
    cal = calibrate_thresholds(model, calib, passes=1)
    q = quantize(model_with(model, cal.scales), load_spec())  # deployable
    assert all(layer.vth_mant >= 1 for layer in q.layers)
    lo, hi = cal.out_of_range[0]
    assert threshold_mantissa(300.0, hi, load_spec()) == 0 and cal.scales[0] > hi  # says what it skipped
