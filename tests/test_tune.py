"""``sast-deploy tune`` end to end on a tiny space: trials are run directories, the summary
and best.toml, the test split never evaluated, pruning, failed trials, resume after SIGTERM,
and two processes on one storage."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import sast_deploy.training.train as train_mod
import sast_deploy.training.val_metrics as val_metrics
from sast_deploy.cli import main
from sast_deploy.training.recipe import load_recipe
from sast_deploy.tuning.search import TuneError, default_storage, open_study, tune
from sast_deploy.tuning.space import load_space

from helpers import SMALL_RECIPE_TOML

CLI = [sys.executable, "-m", "sast_deploy.cli"]
BASE = 'name = "tiny"\n' + SMALL_RECIPE_TOML + """
[optimizer]
name = "baseline"
lr = 5e-3
[training]
epochs = 1
batch_size = 64
"""

SPACE = """
base = "base.toml"
startup_trials = 2
[pruning]
enabled = false
[[param]]
name = "optimizer.name"
choices = ["baseline", "sast", "ste"]
[[param]]
name = "optimizer.rho"
low = 0.01
high = 0.5
log = true
when = { "optimizer.name" = ["sast"] }
[[param]]
name = "model.alpha"
low = 0.5
high = 4.0
log = true
"""


def _space(tmp_path, space=SPACE, base=BASE):
    (tmp_path / "base.toml").write_text(base)
    (tmp_path / "space.toml").write_text(space)
    return load_space(tmp_path / "space.toml")


def _study(out, name="space"):
    return optuna.load_study(study_name=name, storage=default_storage(out))


def _trial_dirs(out):
    return sorted(p.name for p in (out / "trials").iterdir())


@pytest.fixture
def test_split_watch(monkeypatch):
    """Every dataset the training and validation code evaluates, and the test splits handed out."""
    from sast_deploy.data import datasets

    seen = {"evaluated": [], "tests": []}
    load_splits, evaluate, deployed = datasets.load_splits, train_mod.evaluate, val_metrics.deployed_accuracy

    def watched_load(*a, **k):
        splits = load_splits(*a, **k)
        seen["tests"].append(splits.test)
        return splits

    def watched_evaluate(net, data, *a, **k):
        seen["evaluated"].append(data)
        return evaluate(net, data, *a, **k)

    def watched_deployed(net, data, *a, **k):
        seen["evaluated"].append(data)
        return deployed(net, data, *a, **k)

    monkeypatch.setattr(datasets, "load_splits", watched_load)
    monkeypatch.setattr(train_mod, "evaluate", watched_evaluate)
    monkeypatch.setattr(val_metrics, "evaluate", watched_evaluate)
    monkeypatch.setattr(val_metrics, "deployed_accuracy", watched_deployed)
    return seen


@pytest.mark.slow
def test_tune_trains_trials_as_runs_writes_best_recipe_and_never_evaluates_the_test_split(tmp_path, small_data, test_split_watch):
    space = _space(tmp_path)
    out = tmp_path / "out"
    result = tune(space, out, n_trials=3, progress=False, log=lambda s: None)
    study = _study(out)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert _trial_dirs(out) == ["trial-0000", "trial-0001", "trial-0002"]
    for t in study.trials:
        run = out / t.user_attrs["run_dir"]
        assert (run / "metrics.json").is_file() and (run / "model.pt").is_file()
        recipe = load_recipe(run / "recipe.toml")  # the trial's recipe, written beside its run
        assert recipe == space.recipe(space.values_of(t.params), name=f"space-{run.name}")
        assert t.values[0] == t.user_attrs["val_emulator_accuracy"]
    # the test split was handed to training but never evaluated
    assert test_split_watch["tests"] and test_split_watch["evaluated"]
    assert not any(d is test for d in test_split_watch["evaluated"] for test in test_split_watch["tests"])
    import json, math

    metrics = json.loads((out / "trials" / "trial-0000" / "metrics.json").read_text())
    assert metrics["test_evaluated"] is False and math.isnan(metrics["surrogate_accuracy"])
    assert metrics["validation"]["n_samples"] > 0
    # the summary and the best recipe, which train reads as it is
    md = (out / "tune.md").read_text()
    best = study.best_trial
    assert f"Trial {best.number} (`trials/trial-{best.number:04d}`)" in md and "| 3 | 3 | 0 | 0 | 0 |" in md
    best_recipe = load_recipe(out / "best.toml")
    assert best_recipe == space.recipe(space.values_of(best.params), name="space-best")
    assert "Accuracy-SynOps front of the finished trials" in md
    for png in ("history", "param_importances", "pareto_front"):
        assert result.written[png].read_bytes()[:4] == b"\x89PNG"
    # rerunning continues the study: one more trial, numbered on
    tune(space, out, n_trials=1, progress=False, log=lambda s: None)
    assert len(_study(out).trials) == 4 and _trial_dirs(out)[-1] == "trial-0003"


@pytest.mark.slow
def test_pruning_stops_a_trial_that_trails_after_an_epoch(tmp_path, small_data):
    space = _space(tmp_path, """
base = "base.toml"
set = ["training.epochs=3"]
[pruning]
startup_trials = 1
min_epochs = 1
[[param]]
name = "optimizer.lr"
choices = [5e-3, 1e-9]
""")
    out = tmp_path / "out"
    study, _ = open_study(space, out, default_storage(out), None)
    study.enqueue_trial({"optimizer.lr": 5e-3})
    study.enqueue_trial({"optimizer.lr": 1e-9})  # does not learn: below the first trial after epoch 1
    tune(space, out, n_trials=2, progress=False, log=lambda s: None)
    first, second = _study(out).trials
    assert first.state == TrialState.COMPLETE and second.state == TrialState.PRUNED
    step = max(second.intermediate_values)  # the epoch after which it stopped, before the last
    assert step < 3 and second.user_attrs["epochs_done"] == step
    assert second.intermediate_values[step] < first.intermediate_values[step]
    pruned = out / "trials" / "trial-0001"
    assert (pruned / "checkpoint.pt").is_file() and not (pruned / "metrics.json").exists()  # resumable, not finished
    assert f"pruned after epoch {step}" in (out / "tune.md").read_text()


@pytest.mark.slow
def test_a_trial_without_a_deployable_network_fails_and_the_search_goes_on(tmp_path, small_data, monkeypatch):
    space = _space(tmp_path)
    calls = []
    deployed = val_metrics.deployed_accuracy

    def first_fails(net, data, *a, **k):
        calls.append(1)
        if len(calls) == 1:
            return {"emulator_accuracy": None, "emulator_synops_per_sample": None,
                    "emulator_error": "layer 1 (dense): threshold rounds to 0 at scale 1.05e+03"}
        return deployed(net, data, *a, **k)

    monkeypatch.setattr(val_metrics, "deployed_accuracy", first_fails)
    out = tmp_path / "out"
    tune(space, out, n_trials=2, progress=False, log=lambda s: None)
    failed, complete = _study(out).trials
    assert failed.state == TrialState.FAIL and complete.state == TrialState.COMPLETE
    assert "threshold rounds to 0" in failed.user_attrs["error"]
    md = (out / "tune.md").read_text()
    assert "not deployable: layer 1 (dense): threshold rounds to 0" in md and "Trial 1 (" in md


def test_a_study_on_another_base_or_objectives_is_refused(tmp_path):
    space = _space(tmp_path)
    out = tmp_path / "out"
    open_study(space, out, default_storage(out), None)
    with pytest.raises(TuneError, match="has 1 objective"):
        open_study(space, out, default_storage(out), ("accuracy", "synops"))
    other = _space(tmp_path, base=BASE.replace("lr = 5e-3", "lr = 1e-3"))
    with pytest.raises(TuneError, match="another base recipe"):
        open_study(other, out, default_storage(out), None)


def test_bad_storage_and_objectives_are_one_line(tmp_path, capsys):
    _space(tmp_path)
    for extra, message in ((["--storage", "nosuchdb://u:secret@h/x"], "--storage nosuchdb://u:***@h/x"),
                           (["--objectives", "accuracy,speed"], "--objectives 'accuracy,speed'")):
        code = main(["tune", str(tmp_path / "space.toml"), "--out", str(tmp_path / "out"), "--quiet", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0] and "secret" not in err[0], err


@pytest.mark.slow
def test_two_objectives_give_a_pareto_front(tmp_path, small_data):
    space = _space(tmp_path)
    out = tmp_path / "out"
    result = tune(space, out, n_trials=2, objectives=("accuracy", "synops"), progress=False, log=lambda s: None)
    study = _study(out)
    assert len(study.directions) == 2 and all(len(t.values) == 2 for t in study.trials)
    assert all(t.values[1] == t.user_attrs["val_emulator_synops_per_sample"] for t in study.trials)
    assert result.written["pareto_front"].read_bytes()[:4] == b"\x89PNG"
    md = (out / "tune.md").read_text()
    assert "Pareto front" in md and "pruning off: Optuna does not prune multi-objective studies" in md
    # a rerun without --objectives continues with the study's
    assert tune(space, out, n_trials=0, progress=False, log=lambda s: None).objectives == ("accuracy", "synops")


def _wait_for(path: Path, proc, seconds: float) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.2)


@pytest.mark.slow
def test_sigterm_mid_trial_exits_143_and_the_rerun_resumes_that_trial_from_its_checkpoint(tmp_path, small_data):
    space = _space(tmp_path, SPACE.replace('startup_trials = 2', 'startup_trials = 2\nset = ["training.epochs=40"]'))
    out = tmp_path / "out"
    proc = subprocess.Popen([*CLI, "tune", str(tmp_path / "space.toml"), "--out", str(out), "--n-trials", "1", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    _wait_for(out / "trials" / "trial-0000" / "checkpoint.pt", proc, 300)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "terminated (rerun the same command to resume)" in err, err
    trials = _study(out).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]  # failed, and queued again
    assert trials[1].params == trials[0].params
    # the rerun takes the queued retry first and trains it in trial 0's folder, from its checkpoint
    logged = []
    from sast_deploy.training.runs import read_checkpoint

    done = read_checkpoint(out / "trials" / "trial-0000" / "checkpoint.pt")[0].epoch
    space = load_space(tmp_path / "space.toml")
    with pytest.MonkeyPatch.context() as mp:  # stop the resumed trial after one more epoch
        def stop_after_one_more(self, trial):
            def callback(epoch, row):
                raise optuna.TrialPruned("enough for the test")
            return callback

        from sast_deploy.tuning.search import TrialRunner

        mp.setattr(TrialRunner, "_epoch_callback", stop_after_one_more)
        tune(space, out, n_trials=1, progress=False, log=logged.append)
    assert any(f"resuming {out / 'trials' / 'trial-0000'} after epoch {done}/40" in s for s in logged), logged
    trials = _study(out).trials
    assert trials[1].state == TrialState.PRUNED and trials[1].user_attrs["run_dir"] == "trials/trial-0000"
    assert _trial_dirs(out) == ["trial-0000"]
    assert "interrupted; retried as trial 1" in (out / "tune.md").read_text()


@pytest.mark.slow
def test_two_processes_share_one_storage(tmp_path, small_data):
    _space(tmp_path)
    out = tmp_path / "out"
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    cmd = [*CLI, "tune", str(tmp_path / "space.toml"), "--out", str(out), "--storage", url, "--n-trials", "2", "--quiet"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
    study = optuna.load_study(study_name="space", storage=url)
    assert len(study.trials) == 4 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert _trial_dirs(out) == [f"trial-{n:04d}" for n in range(4)]
    assert sorted(t.user_attrs["run_dir"] for t in study.trials) == [f"trials/trial-{n:04d}" for n in range(4)]
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4  # no draw repeated across processes
    assert not (out / "tune.db").exists()  # the given storage, not the default
    assert "| 4 | 4 | 0 | 0 | 0 |" in (out / "tune.md").read_text()


def test_a_run_that_leaves_the_test_split_unread_needs_a_validation_split(tmp_path, small_data):
    from sast_deploy.errors import RunError
    from sast_deploy.training.train import train

    (tmp_path / "base.toml").write_text(BASE)
    recipe = load_recipe(tmp_path / "base.toml", ["data.val_fraction=0.0"])
    with pytest.raises(RunError, match="needs a validation split"):
        train(recipe, tmp_path / "run", progress=False, data=small_data[1], evaluate_test=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
