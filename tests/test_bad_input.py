"""Hostile but fair input: every case of issue 12 gets one line on stderr naming the file and
the field, exit code 2, no traceback, no code run from a file and no half-written output."""

import errno
import json
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

import sast_deploy.training.train as train_mod
from sast_deploy.cli import main
from sast_deploy.data.datasets import split_validation
from sast_deploy.training.recipe import RecipeError, load_recipe
from sast_deploy.errors import RunError
from sast_deploy.deploy.export import NetxFormatError, read_netx
from sast_deploy.lock import run_lock
from sast_deploy.training.runs import load_run
from sast_deploy.training.train import train

from helpers import SMALL_RECIPE_TOML, tiny_recipe

RECIPE = 'name = "tiny"\n' + SMALL_RECIPE_TOML + "[optimizer]\nname = \"baseline\"\nlr = 5e-3\n[training]\nepochs = 1\nbatch_size = 64\n"


def _cli(capsys, *argv):
    """(exit code, the one stderr line) of an in-process command."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return code, err[0]


@pytest.fixture
def run(trained_run, tmp_path):
    """A copy of the trained run that a test may damage."""
    return shutil.copytree(trained_run, tmp_path / "run")


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(RECIPE)
    return path


class Payload:
    """A pickle that runs a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --- 1. run files are data ---------------------------------------------------------------


def test_hostile_model_file_is_refused_and_its_payload_never_runs(run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    blob = torch.load(run / "model.pt", weights_only=True)
    torch.save({**blob, "metrics": Payload(marker)}, run / "model.pt")
    code, err = _cli(capsys, "evaluate", run, "--quiet")
    assert code == 2 and "model.pt: refused" in err and "posix.system" in err
    assert not marker.exists()


def test_hostile_checkpoint_is_refused_on_resume(tmp_path, recipe_file, small_data, capsys):
    out = tmp_path / "run"
    train(load_recipe(recipe_file), out, progress=False, data=small_data[1])
    marker = tmp_path / "pwned"
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    torch.save({**ckpt, "history": Payload(marker)}, out / "checkpoint.pt")
    code, err = _cli(capsys, "train", "--config", recipe_file, "--out", out, "--quiet")
    assert code == 2 and "checkpoint.pt: refused" in err
    assert not marker.exists()


def test_run_files_hold_only_tensors_and_plain_data(trained_run):
    for name in ("model.pt", "checkpoint.pt"):
        assert isinstance(torch.load(trained_run / name, weights_only=True), dict)


# --- 4. NaN and inf ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "nan", "1e39"])
def test_non_finite_learning_rate_is_a_recipe_error(recipe_file, tmp_path, capsys, value):
    code, err = _cli(capsys, "train", "--config", recipe_file, "--set", f"optimizer.lr={value}", "--out", tmp_path / "x")
    assert code == 2 and "tiny.toml" in err and "optimizer.lr" in err
    assert not (tmp_path / "x").exists()


def test_diverging_training_stops_at_the_first_non_finite_loss(recipe_file, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _cli(capsys, "train", "--config", recipe_file, "--set", "training.loss_scale=1e38", "--out", out, "--quiet")
    assert code == 2 and "diverged at epoch 1, step 1" in err and "non-finite loss" in err
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, small_data, monkeypatch):
    _, data = small_data
    recipe = tiny_recipe(**{"training.epochs": 3, "optimizer.name": "baseline"})
    real_step, calls = train_mod.plain_step, {"n": 0}
    steps_per_epoch = -(-len(split_validation(*data, recipe.data).train) // 32)

    def poisoned(model, *args):
        loss = real_step(model, *args)
        calls["n"] += 1
        if calls["n"] == steps_per_epoch + 2:  # epoch 2, step 2
            with torch.no_grad():
                model.layers[1].synapse.weight[0, 0] = float("inf")
        return loss

    monkeypatch.setattr(train_mod, "plain_step", poisoned)
    with pytest.raises(RunError, match=r"epoch 2, step 2: non-finite weights layers\.1\.synapse\.weight"):
        train(recipe, tmp_path, progress=False, data=data)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(w).all() for w in ckpt["model"].values())
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize("target", ["lava", "nir", "onnx"])
def test_every_export_target_refuses_non_finite_weights(run, capsys, target):
    blob = torch.load(run / "model.pt", weights_only=True)
    blob["state_dict"]["layers.0.synapse.weight"][0, 0] = float("nan")
    torch.save(blob, run / "model.pt")
    out = run / f"net.{target}"
    code, err = _cli(capsys, "export", run, "--target", target, "--out", out)
    assert code == 2 and "non-finite weights in layers.0.synapse.weight" in err
    assert not out.exists()


# --- 5. types ----------------------------------------------------------------------------


@pytest.mark.parametrize("override,field", [
    ('model.hidden="128"', "model.hidden must be a list"),
    ("model.hidden=128", "model.hidden must be a list"),
    ("training.epochs=2.5", "training.epochs must be an integer, got 2.5"),
    ("training.epochs=true", "training.epochs must be an integer, got true"),
    ('model.v_th_scale=["a"]', 'model.v_th_scale[0] must be a number, got "a"'),
    ("optimizer.rho=[1]", "optimizer.rho must be a number"),
    ('data.synthetic.seed="1"', "data.synthetic.seed must be an integer"),
])
def test_values_of_the_wrong_type_name_file_and_field(recipe_file, tmp_path, capsys, override, field):
    with pytest.raises(RecipeError, match="tiny.toml: " + field.replace("[", r"\[").replace(".", r"\.")):
        load_recipe(recipe_file, [override])
    code, err = _cli(capsys, "train", "--config", recipe_file, "--set", override, "--out", tmp_path / "x")
    assert code == 2 and field in err
    assert not (tmp_path / "x").exists()


def test_spec_and_hardware_values_of_the_wrong_type(run, tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text('weight_bits = "8"\n')
    code, err = _cli(capsys, "export", run, "--spec", spec, "--out", tmp_path / "n.h5")
    assert code == 2 and "spec.toml: weight_bits must be an integer" in err and not (tmp_path / "n.h5").exists()
    assert main(["export", str(run), "--out", str(tmp_path / "n.h5")]) == 0
    capsys.readouterr()
    hw = tmp_path / "hw.toml"
    hw.write_text('chunks = "a"\n')
    code, err = _cli(capsys, "simulate", tmp_path / "n.h5", "--run", run, "--hardware", hw, "--quiet")
    assert code == 2 and "hw.toml: chunks must be an integer" in err


# --- 6. a missing --spec -----------------------------------------------------------------


def test_a_missing_spec_file_is_an_error(run, capsys):
    code, err = _cli(capsys, "export", run, "--spec", "export/loihi2-w4.tml", "--out", run / "n.h5")
    assert code == 2 and "loihi2-w4.tml: target spec file not found" in err
    assert not (run / "n.h5").exists()


# --- 7. the run-directory lock -----------------------------------------------------------


def test_a_locked_run_directory_refuses_a_second_command(run, recipe_file, tmp_path, capsys):
    before = (run / "model.pt").read_bytes()
    with run_lock(run, "train"):
        with pytest.raises(RunError, match="in use by sast-deploy train"):
            with run_lock(run, "compare"):
                pass
        for argv in (["train", "--config", recipe_file, "--out", run, "--quiet"], ["compare", run, "--quiet"],
                     ["calibrate", tmp_path / "x", "--out", run, "--quiet"]):
            code, err = _cli(capsys, *argv)
            assert code == 2 and "in use by sast-deploy train" in err, argv
    assert (run / "model.pt").read_bytes() == before
    with run_lock(run, "compare"):  # released
        pass


@pytest.mark.slow
def test_two_concurrent_trainings_into_one_directory(recipe_file, tmp_path, small_data):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sast_deploy.cli", "train", "--config", str(recipe_file), "--out", str(out), "--quiet"]
    procs = [subprocess.Popen(cmd + ["--set", f"training.seed={seed}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, _, err in results if code == 2)
    assert "in use by sast-deploy train" in loser and "Traceback" not in loser
    winner_seed = 1 if results[0][0] == 0 else 2
    _, recipe, _ = load_run(out)
    assert recipe.training.seed == winner_seed


# --- 8. one line instead of a traceback --------------------------------------------------


@pytest.mark.parametrize("content,message", [(os.urandom(512), "not a readable model file"),
                                             (b"", "not a readable model file (empty or cut short)")])
def test_unreadable_model_file(run, capsys, content, message):
    (run / "model.pt").write_bytes(content)
    code, err = _cli(capsys, "evaluate", run, "--quiet")
    assert code == 2 and "model.pt: " + message in err


def test_truncated_checkpoint_on_resume(tmp_path, recipe_file, small_data, capsys):
    out = tmp_path / "run"
    train(load_recipe(recipe_file), out, progress=False, data=small_data[1])
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    code, err = _cli(capsys, "train", "--config", recipe_file, "--out", out, "--quiet")
    assert code == 2 and "checkpoint.pt: not a readable checkpoint" in err


def test_model_file_with_wrong_fields(run, capsys):
    blob = torch.load(run / "model.pt", weights_only=True)
    torch.save({**blob, "n_classes": "10"}, run / "model.pt")
    code, err = _cli(capsys, "evaluate", run, "--quiet")
    assert code == 2 and "model.pt: n_classes must be an integer" in err


def _study(tmp_path, run):
    study = tmp_path / "study"
    shutil.copytree(run, study / "baseline" / "seed0")
    (study / "study.json").write_text('{"name": "s", "base": "b.toml", "seeds": [0], "lava_samples": 8, '
                                      '"methods": [{"name": "baseline", "set": [], "calibrate": ""}]}')
    return study


@pytest.mark.parametrize("damage,message", [
    (("baseline/seed0/compare.json", "{not json"), "compare.json: not a readable comparison"),
    (("baseline/seed0/compare.json", '{"lava_accuracy": 50.0}'), "compare.json: missing key 'emulator_accuracy'"),
    (("study.json", "\x00\x01garbage"), "study.json: not a readable study index"),
    (("study.json", '{"name": "s", "base": "b", "seeds": "0", "lava_samples": 8, "methods": []}'), "study.json: seeds must be a list"),
])
def test_report_on_damaged_study_files(run, tmp_path, capsys, damage, message):
    study = _study(tmp_path, run)
    (study / "baseline" / "seed0" / "compare.json").write_text(
        '{"emulator_accuracy": 50.0, "lava_accuracy": 50.0, "lava_emulator_agreement": 1.0}')
    name, text = damage
    (study / name).write_text(text)
    code, err = _cli(capsys, "report", study, "--out", tmp_path / "report", "--no-diagnostics")
    assert code == 2 and message in err
    assert not (tmp_path / "report").exists()  # 10. no empty output directory


def _exported(run, tmp_path):
    assert main(["export", str(run), "--out", str(tmp_path / "n.h5")]) == 0
    return tmp_path / "n.h5"


def test_hdf5_layer_type_that_is_not_a_string(run, tmp_path, capsys):
    path = _exported(run, tmp_path)
    capsys.readouterr()
    with h5py.File(path, "a") as f:
        del f["layer/1/type"]
        f["layer/1"].create_dataset("type", data=7)
    with pytest.raises(NetxFormatError, match=r"n\.h5: field /layer/1/type must be a string"):
        read_netx(path)
    code, err = _cli(capsys, "simulate", path, "--run", run, "--quiet", "--out", tmp_path / "s.json")
    assert code == 2 and "/layer/1/type must be a string" in err and not (tmp_path / "s.json").exists()


def test_interchange_errors_reach_the_cli_as_one_line(run, tmp_path, capsys):
    blob = torch.load(run / "model.pt", weights_only=True)
    blob["model_config"]["beta"] = 1.0
    torch.save(blob, run / "model.pt")
    code, err = _cli(capsys, "export", run, "--target", "nir", "--out", tmp_path / "n.nir")
    assert code == 2 and "beta = 1" in err and not (tmp_path / "n.nir").exists()


@pytest.mark.slow
def test_closed_pipe_ends_quietly(trained_run, tmp_path):
    cmd = [sys.executable, "-m", "sast_deploy.cli", "export", str(trained_run), "--out", str(tmp_path / "n.h5")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line, as after `| head -0`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipeError" not in err, err
    assert (tmp_path / "n.h5").exists()  # the command itself completed


# --- 9. integers the target cannot hold --------------------------------------------------


def test_weights_out_of_the_targets_range_are_rejected(run, tmp_path, capsys):
    path = _exported(run, tmp_path)
    capsys.readouterr()
    with h5py.File(path, "a") as f:
        w = f["layer/1/weight"][()]
        del f["layer/1/weight"]
        f["layer/1"].create_dataset("weight", data=(w * 10**12).astype(np.int64))
    with pytest.raises(NetxFormatError, match=r"/layer/1/weight holds .* 8-bit signed mantissas, -128\.\.127"):
        read_netx(path)
    code, err = _cli(capsys, "simulate", path, "--run", run, "--quiet", "--out", tmp_path / "s.json")
    assert code == 2 and "/layer/1/weight holds" in err


# --- 10. no leftovers ----------------------------------------------------------------------


def test_a_data_error_leaves_no_output_directory(recipe_file, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _cli(capsys, "train", "--config", recipe_file, "--set", "data.name=nmnist",
                     "--set", f"data.data_dir={tmp_path / 'none'}", "--set", "data.synthetic={}", "--out", out)
    assert code == 2 and "data.data_dir" in err
    assert not out.exists()


# --- 11. real recordings and written datasets ------------------------------------------------


@pytest.mark.parametrize("content, message", [(b"", "empty recording (0 bytes)"), (bytes(12), "truncated N-MNIST recording")])
def test_bad_recording_in_a_real_dataset_is_named_by_the_cli(recipe_file, tmp_path, capsys, reference_nmnist, content, message):
    for split, digit in (("Train", 1), ("Train", 2), ("Test", 1)):
        (tmp_path / "data" / "NMNIST" / split / str(digit)).mkdir(parents=True)
        (tmp_path / "data" / "NMNIST" / split / str(digit) / "00000.bin").write_bytes(reference_nmnist.read_bytes())
    bad = tmp_path / "data" / "NMNIST" / "Train" / "2" / "00000.bin"
    bad.write_bytes(content)
    out = tmp_path / "run"
    code, err = _cli(capsys, "train", "--config", recipe_file, "--set", "data.name=nmnist", "--set", "data.synthetic={}",
                     "--set", f"data.data_dir={tmp_path / 'data'}", "--out", out, "--quiet")
    assert code == 2 and f"{bad}: {message}" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_write_dataset_never_overwrites(tmp_path, capsys):
    (tmp_path / "NMNIST").mkdir()
    code, err = _cli(capsys, "write-dataset", "synthetic-nmnist", "--out", tmp_path, "--set", "data.synthetic.max_sources=20")
    assert code == 2 and "NMNIST: already exists" in err
    for counts, shown in ((["--train", "10"], "train=10, test=0"), (["--train", "-1", "--test", "5"], "train=-1, test=5")):
        # checked by the library (write_tonic_tree) before anything is generated or written
        code, err = _cli(capsys, "write-dataset", "synthetic-nmnist", "--out", tmp_path / "x", *counts)
        assert code == 2 and err.strip() == f"sast-deploy write-dataset: error: file counts: give both train and test, each >= 1, got {shown}"
        assert not (tmp_path / "x").exists()


# --- issue 20 ------------------------------------------------------------------------------
# 1. the run-directory lock never follows a link and never empties a file that is not its own


@pytest.mark.parametrize("command", ["compare", "train"])
def test_a_symlinked_lock_is_refused_and_its_target_unchanged(run, recipe_file, tmp_path, capsys, command):
    target = tmp_path / "important.txt"
    target.write_text("precious\n")
    (run / ".lock").unlink(missing_ok=True)
    (run / ".lock").symlink_to(target)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.is_symlink()}
    argv = (["compare", run, "--samples", "4"] if command == "compare"
            else ["train", "--config", recipe_file, "--out", run])
    code, err = _cli(capsys, *argv, "--quiet")
    assert code == 2 and ".lock: is a symbolic link" in err
    assert target.read_text() == "precious\n" and (run / ".lock").is_symlink()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.is_symlink()} == before


@pytest.mark.parametrize("make,message", [
    (lambda lock, other: os.link(other, lock), "has 2 names (hard links)"),
    (lambda lock, other: os.mkfifo(lock), "is not a plain file"),
    (lambda lock, other: lock.mkdir(), "cannot open the lock file"),
    (lambda lock, other: lock.write_text("my notes\n"), "holds something other than a sast-deploy lock line"),
])
def test_a_lock_file_that_is_not_ours_is_refused_untouched(tmp_path, make, message):
    run_dir, other = tmp_path / "run", tmp_path / "notes.txt"
    run_dir.mkdir()
    other.write_text("my notes\n")
    make(run_dir / ".lock", other)
    with pytest.raises(RunError, match=r"\.lock: " + re.escape(message)):
        with run_lock(run_dir, "train"):
            pass
    assert other.read_text() == "my notes\n"


def test_a_stale_lock_line_of_ours_is_reused(tmp_path):
    (tmp_path / ".lock").write_text("sast-deploy train (pid 1)\n")
    with run_lock(tmp_path, "compare"):
        assert (tmp_path / ".lock").read_text() == f"sast-deploy compare (pid {os.getpid()})\n"
    assert (tmp_path / ".lock").read_text() == ""


# 2. a study's method names are folder names, never paths


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("method", [
    'name = "../../escape"', 'name = "/tmp/sast-deploy-escape"', 'name = ""', 'name = "."', 'name = "a/b"',
    'name = "x..y"', 'name = "-rf"', 'name = "ok"\n[[method]]\nname = "c"\ncalibrate = "../ok"',
])
def test_study_method_names_that_are_paths_are_refused(tmp_path, recipe_file, capsys, method):
    study = tmp_path / "study.toml"
    study.write_text(f'base = "{recipe_file.name}"\nseeds = [0]\nlava_samples = 4\n[[method]]\n{method}\n')
    before = _tree(tmp_path)
    code, err = _cli(capsys, "study", study, "--out", tmp_path / "out", "--quiet")
    assert code == 2 and "study.toml: " in err and "must be 1 to 100 letters, digits" in err
    assert _tree(tmp_path) == before and not os.path.exists("/tmp/sast-deploy-escape")


def test_report_refuses_a_study_index_whose_method_is_a_path(run, tmp_path, capsys):
    study = _study(tmp_path, run)
    (study / "study.json").write_text('{"name": "s", "base": "b.toml", "seeds": [0], "lava_samples": 8, '
                                      '"methods": [{"name": "../../baseline", "set": [], "calibrate": ""}]}')
    code, err = _cli(capsys, "report", study, "--out", tmp_path / "report", "--no-diagnostics")
    assert code == 2 and "study.json: method.name must be" in err and not (tmp_path / "report").exists()


# 3. calibrate never overwrites a trained run


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("onto", ["itself", "itself-by-another-path", "another-run", "model-only"])
def test_calibrate_onto_a_run_is_refused_and_its_files_unchanged(run, tmp_path, capsys, onto):
    other = shutil.copytree(run, tmp_path / "other")
    out = {"itself": run, "itself-by-another-path": tmp_path / "." / "run" / ".." / "run", "another-run": other,
           "model-only": other}[onto]
    if onto == "model-only":
        (other / "checkpoint.pt").unlink()
        (other / "metrics.json").unlink()
    before = {d: _files(d) for d in (run, other)}
    code, err = _cli(capsys, "calibrate", run, "--out", out, "--quiet")
    assert code == 2 and ("--out is the source run itself" in err if onto.startswith("itself")
                          else "refusing to overwrite it" in err), err
    assert {d: _files(d) for d in (run, other)} == before


def test_calibrate_replaces_only_an_earlier_calibration_of_the_same_source(run, tmp_path):
    from sast_deploy.training.calibrate import check_calibration_target

    cal = shutil.copytree(run, tmp_path / "cal")
    (cal / "checkpoint.pt").unlink()
    metrics = json.loads((cal / "metrics.json").read_text())
    (cal / "metrics.json").write_text(json.dumps({**metrics, "calibrated_from": str(run)}))
    check_calibration_target(run, cal)  # an earlier calibration of this run: replaced
    check_calibration_target(run, tmp_path / "new")  # nothing there yet
    with pytest.raises(RunError, match="not an earlier calibration of"):
        check_calibration_target(tmp_path / "elsewhere", cal)
    (cal / "checkpoint.pt").write_bytes(b"")  # calibrate never writes one: a trained run
    with pytest.raises(RunError, match="refusing to overwrite it"):
        check_calibration_target(run, cal)


# 17. a negative count is an error, not "all"


@pytest.mark.parametrize("argv", [["simulate", "n.h5", "--run", "r", "--samples", "-1"],
                                  ["compare", "r", "--samples", "-1"], ["demo", "--lava-samples", "-5"]])
def test_negative_counts_are_refused_by_the_parser(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--out" if argv[0] != "compare" else "--quiet"] + ([str(tmp_path / "o")] if argv[0] != "compare" else []))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "must be >= 0 (0 = all), got -" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


# 18. every input of demo is checked before the first minute of work


def test_demo_checks_every_recipe_before_training(recipe_file, tmp_path, capsys):
    out = tmp_path / "demo"
    code, err = _cli(capsys, "demo", "--config", recipe_file, "--beside", tmp_path / "nonexist.toml",
                     "--lava-samples", "0", "--out", out)
    assert code == 2 and "nonexist.toml" in err
    assert not out.exists()  # nothing trained


# 7. simulate checks the network's outputs against the run's classes


@pytest.mark.parametrize("outputs", [20, 5])
def test_simulate_refuses_a_network_whose_outputs_are_not_the_runs_classes(run, tmp_path, capsys, outputs):
    import dataclasses

    from sast_deploy.deploy.export import write_netx
    from sast_deploy.deploy.quantize import QuantizedNet

    qnet = read_netx(_exported(run, tmp_path))
    capsys.readouterr()
    last = qnet.layers[-1]
    weight = np.resize(last.weight, (outputs,) + last.weight.shape[1:])  # rows repeated or cut
    layers = [*qnet.layers[:-1], dataclasses.replace(last, weight=weight, out_shape=(outputs,))]
    path = write_netx(QuantizedNet(layers, qnet.input_shape, outputs, qnet.spec), tmp_path / f"net{outputs}.h5")
    code, err = _cli(capsys, "simulate", path, "--run", run, "--samples", "4", "--quiet", "--out", tmp_path / "s.json")
    assert code == 2 and f"net{outputs}.h5: the network has {outputs} output neurons, the run's dataset has 10 classes" in err
    assert not (tmp_path / "s.json").exists()


# 6. a full disk while saving is one line naming the file, and no temporary file is left


def _torch_save_on_a_full_disk(kind):
    """torch.save as it fails on a full disk: some bytes written, then the error torch raises
    (a RuntimeError, and another while it closes the file) or the OSError of a plain writer."""
    def save(obj, f):
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 partial")
        if kind == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        try:
            raise RuntimeError("[enforce fail at inline_container.cc:764] . PytorchStreamWriter failed writing file data/0: "
                               "file write failed")
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 2688 vs 2582")
    return save


@pytest.mark.parametrize("kind,reason", [("oserror", "No space left on device"),
                                         ("torch", "PytorchStreamWriter failed writing file data/0: file write failed")])
def test_a_full_disk_while_training_is_one_line_and_leaves_no_temporary_file(recipe_file, tmp_path, capsys, monkeypatch,
                                                                            kind, reason):
    monkeypatch.setattr(torch, "save", _torch_save_on_a_full_disk(kind))
    out = tmp_path / "run"
    code, err = _cli(capsys, "train", "--config", recipe_file, "--out", out, "--quiet")
    assert code == 2 and f"{out / 'checkpoint.pt'}: cannot write it ({reason}; " in err and "MiB free" in err
    assert not out.exists() or [p.name for p in out.iterdir()] in ([], [".lock"])  # no temporary file, no checkpoint
