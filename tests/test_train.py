"""The training loop, run directories, resume, and the CLI's error handling."""

import json

import numpy as np
import pytest
import torch

import sast_deploy.training.train as train_mod
from sast_deploy.cli import main
from sast_deploy.training.runs import read_checkpoint
from sast_deploy.training.recipe import RecipeError, apply_overrides, load_recipe
from sast_deploy.errors import RunError
from sast_deploy.training.evaluate import evaluate
from sast_deploy.training.runs import load_run
from sast_deploy.training.train import train
from sast_deploy.data.datasets import split_validation

from helpers import SMALL_SYNTHETIC, tiny_recipe


def _train_part(data, recipe=None):
    """The part of the training recordings ``data[0]`` the optimizer sees (the rest is validation)."""
    return split_validation(*data, (recipe or tiny_recipe()).data).train


@pytest.mark.parametrize("optimizer", ["sast", "sam", "baseline", "ste"])
def test_every_optimizer_trains_and_writes_a_run(tmp_path, small_data, optimizer):
    _, data = small_data
    # without a validation split (its own tests are below): on these 320 recordings, 10 % fewer
    # leave SAM near chance for the first epochs, and this test is about every optimizer's loop
    run = train(tiny_recipe(**{"optimizer.name": optimizer, "data.val_fraction": 0}), tmp_path, progress=False, data=data)
    metrics = run.metrics
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["transfer_gap_pp"] == pytest.approx(on_disk["surrogate_accuracy"] - on_disk["hard_accuracy"])
    assert len(on_disk["history"]) == 2 and on_disk["validation"] is None
    assert on_disk["train_class_counts"] == np.bincount(data[0].labels.numpy(), minlength=10).tolist()
    assert on_disk["test_class_counts"] == np.bincount(data[1].labels.numpy(), minlength=10).tolist()
    assert on_disk["forward_backward_passes"] == (2 if optimizer in ("sast", "sam") else 1) * 2 * -(-len(data[0]) // 32)
    # it learned something: well above the 10 % of chance on 10 classes
    assert max(metrics["surrogate_accuracy"], metrics["hard_accuracy"]) > 25
    model, recipe, saved = load_run(tmp_path)
    assert recipe.optimizer.name == optimizer and saved["hard_accuracy"] == metrics["hard_accuracy"]
    assert evaluate(model, data[1], ("hard",))["hard_accuracy"] == pytest.approx(metrics["hard_accuracy"])
    # train returns the network it wrote: the weights load_run reads back, on the CPU, in eval mode
    assert run.run_dir == tmp_path and not run.model.training
    trained, saved_weights = run.model.state_dict(), model.state_dict()
    assert trained.keys() == saved_weights.keys()
    assert all(v.device.type == "cpu" and torch.equal(v, saved_weights[k]) for k, v in trained.items())


def test_perturb_every_k_saves_passes(tmp_path, small_data):
    _, data = small_data
    m = train(tiny_recipe(**{"optimizer.perturb_every": 2, "training.epochs": 1}), tmp_path, progress=False, data=data).metrics
    steps = -(-len(_train_part(data)) // 32)
    assert m["forward_backward_passes"] == 2 * ((steps + 1) // 2) + steps // 2


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, small_data, monkeypatch):
    _, data = small_data
    recipe = tiny_recipe(**{"training.epochs": 3})
    train(recipe, tmp_path / "straight", progress=False, data=data)

    calls = {"n": 0}
    real_evaluate = train_mod.evaluate

    def crash_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "resumed", progress=False, data=data)
    assert not (tmp_path / "resumed" / "model.pt").exists()  # no half-finished outputs
    assert read_checkpoint(tmp_path / "resumed" / "checkpoint.pt")[0].epoch == 1
    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)
    train(recipe, tmp_path / "resumed", progress=False, data=data)

    a, _, ma = load_run(tmp_path / "straight")
    b, _, mb = load_run(tmp_path / "resumed")
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)
    assert [h["val_hard_accuracy"] for h in ma["history"]] == [h["val_hard_accuracy"] for h in mb["history"]]
    assert ma["hard_accuracy"] == mb["hard_accuracy"] and ma["validation"] == mb["validation"]


def test_checkpoint_of_another_recipe_is_refused(tmp_path, small_data):
    _, data = small_data
    train(tiny_recipe(**{"training.epochs": 1}), tmp_path, progress=False, data=data)
    with pytest.raises(RunError, match="different recipe"):
        train(tiny_recipe(**{"training.epochs": 1, "optimizer.rho": 0.2}), tmp_path, progress=False, data=data)


def test_recipes_in_train_folder_are_valid():
    from pathlib import Path

    from sast_deploy.analysis.study import load_study
    from sast_deploy.tuning.space import load_space

    recipes = sorted((Path(__file__).resolve().parents[1] / "train").glob("*.toml"))
    assert recipes
    for path in recipes:
        if path.name.startswith("study-"):
            assert load_study(path).methods  # study files: methods over a recipe, each override valid
        elif path.name.startswith("tune-") and not path.name.startswith("tune-best-"):
            assert load_space(path).params  # search spaces: every value of every parameter valid
        else:
            load_recipe(path)


def test_overrides_never_change_the_callers_tables():
    raw = {"data": {"synthetic": {"test_variants": 1}}}
    assert apply_overrides(raw, ["data.synthetic.test_variants=8"])["data"]["synthetic"]["test_variants"] == 8
    assert raw == {"data": {"synthetic": {"test_variants": 1}}}  # shared test data once changed this way


def test_recipe_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nalpah = 2.0\n')
    with pytest.raises(RecipeError, match=r"bad.toml.*model.alpah"):
        load_recipe(bad)
    bad.write_text('[optimizer]\nrho = "big"\n')
    with pytest.raises(RecipeError, match=r"optimizer.rho must be a number"):
        load_recipe(bad)
    bad.write_text('[optimizer]\nname = "adamw"\n')
    with pytest.raises(RecipeError, match=r"unknown optimizer 'adamw'"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.toml")
    good = tmp_path / "good.toml"
    good.write_text("[model]\nalpha = 2\n")
    r = load_recipe(good, ["model.hidden=[64, 32]", "data.name=nmnist", "optimizer.rho=0.3"])
    assert r.model.hidden == (64, 32) and r.data.name == "nmnist" and r.optimizer.rho == 0.3 and r.model.alpha == 2.0


def test_cli_errors_are_one_line_and_nonzero(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nepochs = 0\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "training.epochs" in err
    assert not (tmp_path / "run" / "model.pt").exists()
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(tmp_path / "empty")]) == 2
    assert "no model in this run directory" in capsys.readouterr().err


def test_cli_train_and_evaluate(tmp_path, capsys):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        'name = "tiny"\n[data]\nn_time_bins = 10\n[data.synthetic]\nmax_sources = 200\ntrain_variants = 2\ntest_variants = 1\n'
        '[model]\nhidden = [16]\n[optimizer]\nname = "sast"\n[training]\nepochs = 1\nbatch_size = 64\n'
    )
    assert main(["train", "--config", str(recipe), "--set", "optimizer.rho=0.2", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"surrogate_accuracy", "hard_accuracy", "transfer_gap_pp"} <= set(printed)
    assert main(["evaluate", str(tmp_path / "run"), "--mode", "both", "--quiet"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["hard_accuracy"] == pytest.approx(printed["hard_accuracy"])
    assert ev["transfer_gap_pp"] == pytest.approx(printed["transfer_gap_pp"])


@pytest.mark.slow
def test_conv_net_trains_on_event_frames(tmp_path, small_data):
    _, data = small_data
    # the default conv net (conv stride 4 -> dense -> readout, no pooling layer); in
    # surrogate-forward mode it sits near chance for the first epochs before it learns
    recipe = tiny_recipe(**{"model.arch": "conv", "model.hidden": "[16]", "model.conv_channels": 4, "training.epochs": 8, "optimizer.name": "baseline"})
    metrics = train(recipe, tmp_path, progress=False, data=data).metrics
    model, _, _ = load_run(tmp_path)
    assert [layer.kind for layer in model.layers] == ["conv", "dense", "dense"]
    assert metrics["surrogate_accuracy"] > 25  # chance: 10


def test_rerunning_a_finished_run_rewrites_its_outputs(tmp_path, small_data):
    _, data = small_data
    recipe = tiny_recipe(**{"training.epochs": 1})
    first = train(recipe, tmp_path, progress=False, data=data).metrics
    (tmp_path / "metrics.json").unlink()
    again = train(recipe, tmp_path, progress=False, data=data).metrics  # resumes after the last epoch: nothing to train
    assert again["hard_accuracy"] == first["hard_accuracy"] and (tmp_path / "metrics.json").exists()
    assert again["forward_backward_passes"] == first["forward_backward_passes"]


def test_history_counts_passes_and_a_checkpoint_from_before_the_count_resumes_as_unknown(tmp_path, small_data):
    _, data = small_data
    recipe = tiny_recipe(**{"training.epochs": 2, "optimizer.name": "baseline"})
    first = train(recipe, tmp_path, progress=False, data=data).metrics
    steps = -(-len(_train_part(data)) // 32)
    assert [h["forward_backward_passes"] for h in first["history"]] == [steps, 2 * steps]  # the run so far
    blob = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for row in blob["history"]:
        del row["forward_backward_passes"]  # as written before passes were counted
    torch.save(blob, tmp_path / "checkpoint.pt")
    again = train(recipe, tmp_path, progress=False, data=data).metrics
    assert again["forward_backward_passes"] is None and again["hard_accuracy"] == first["hard_accuracy"]


def test_runs_and_checkpoints_written_before_the_surrogate_field_load_as_arctan(tmp_path, small_data):
    _, data = small_data
    recipe = tiny_recipe(**{"training.epochs": 1, "optimizer.name": "baseline"})
    train(recipe, tmp_path, progress=False, data=data)
    for name in ("model.pt", "checkpoint.pt"):  # as main wrote them before model.surrogate existed
        blob = torch.load(tmp_path / name, weights_only=True)
        for cfg in (blob.get("model_config"), blob["recipe"]["model"]):
            if cfg is not None:
                assert cfg.pop("surrogate") == "arctan"
        assert blob["recipe"]["optimizer"].pop("adaptive") is False
        torch.save(blob, tmp_path / name)
    model, old, _ = load_run(tmp_path)
    assert old.model.surrogate == "arctan" and all(layer.lif.p.surrogate == "arctan" for layer in model.layers)
    # the old checkpoint matches today's recipe with the defaults filled in: resumed, not refused
    train(recipe, tmp_path, progress=False, data=data)
    assert load_run(tmp_path)[1] == old


@pytest.mark.slow
@pytest.mark.parametrize("recipe, generated, synthetic", [
    ("nmnist.toml", "synthetic-nmnist", SMALL_SYNTHETIC),
    ("dvsgesture.toml", "synthetic-gesture", {"max_subjects": 3, "recordings_per_class": 1, "duration_ms": 300.0}),
])
def test_real_data_recipes_train_on_a_tree_in_tonics_layout(tmp_path, recipe, generated, synthetic):
    from pathlib import Path

    from sast_deploy.data.datasets import DataConfig
    from sast_deploy.data.tonic_layout import write_tonic_tree

    write_tonic_tree(DataConfig(name=generated, synthetic=synthetic), tmp_path / "data", progress=False)
    path = Path(__file__).resolve().parents[1] / "train" / recipe
    with pytest.raises(Exception, match="data_dir is required"):
        train(load_recipe(path, ["training.epochs=1"]), tmp_path / "none", progress=False)
    r = load_recipe(path, [f"data.data_dir={tmp_path / 'data'}", "training.epochs=1", "data.n_time_bins=10", "data.max_train=120"])
    metrics = train(r, tmp_path / "run", progress=False).metrics
    n_classes = 10 if recipe == "nmnist.toml" else 11
    files = len([f for f in (tmp_path / "data").rglob("*") if f.suffix in (".bin", ".npy") and "Test" not in str(f)])
    assert metrics["n_train"] + metrics["validation"]["n_samples"] == min(120, files)
    assert sum(metrics["train_class_counts"]) == metrics["n_train"]
    assert len(metrics["train_class_counts"]) == n_classes and min(metrics["train_class_counts"]) > 0
