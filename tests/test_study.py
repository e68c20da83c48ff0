"""The study runner (resumable) and its report."""

import json

import pytest

from sast_deploy.cli import main
from sast_deploy.training.recipe import RecipeError
from sast_deploy.analysis.report import family_points
from sast_deploy.analysis.study import load_study, run_study

from helpers import SMALL_RECIPE_TOML

BASE = 'name = "tiny"\n' + SMALL_RECIPE_TOML + """
[optimizer]
lr = 5e-3
[training]
epochs = 1
batch_size = 64
"""

STUDY = """
name = "tiny-study"
base = "base.toml"
seeds = [0, 1]
lava_samples = 8
[[method]]
name = "baseline"
set = ["optimizer.name=baseline"]
[[method]]
name = "sast-rho0.05"
set = ["optimizer.name=sast", "optimizer.rho=0.05"]
[[method]]
name = "sast-rho0.2"
set = ["optimizer.name=sast", "optimizer.rho=0.2"]
[[method]]
name = "baseline-calibrated"
calibrate = "baseline"
"""


@pytest.mark.slow
def test_study_runs_resumes_and_reports(tmp_path, small_data):
    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "study.toml").write_text(STUDY)
    study = load_study(tmp_path / "study.toml")
    assert [m.name for m in study.methods] == ["baseline", "sast-rho0.05", "sast-rho0.2", "baseline-calibrated"]
    out = tmp_path / "out"
    runs = run_study(study, out, progress=False, log=lambda s: None)
    assert len(runs) == 8 and all((r / "compare.json").exists() for r in runs)
    stamps = {r: (r / "model.pt").stat().st_mtime for r in runs}
    # a finished study does nothing again; a deleted run is redone alone
    (out / "sast-rho0.2" / "seed1" / "metrics.json").unlink()
    logged = []
    run_study(study, out, progress=False, log=logged.append)
    assert len(logged) == 1 and "sast-rho0.2 seed 1" in logged[0]
    assert all((r / "model.pt").stat().st_mtime == stamps[r] for r in runs if "sast-rho0.2/seed1" not in str(r))
    calibrated = json.loads((out / "baseline-calibrated" / "seed0" / "metrics.json").read_text())
    assert calibrated["calibrated_from"].endswith("baseline/seed0")
    # issue 20: a run is complete when its files are, not when metrics.json is there
    (out / "baseline" / "seed0" / "model.pt").unlink()
    logged.clear()
    run_study(study, out, progress=False, log=logged.append)
    assert len(logged) == 1 and "baseline seed 0: train" in logged[0]
    assert (out / "baseline" / "seed0" / "model.pt").is_file()
    (out / "sast-rho0.05" / "seed0" / "compare.json").write_text("{cut sho")
    logged.clear()
    run_study(study, out, progress=False, log=logged.append)
    assert logged == [] and json.loads((out / "sast-rho0.05" / "seed0" / "compare.json").read_text())["n_samples"] == 8
    # a changed study into the same --out is refused before any work, every file unchanged
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (tmp_path / "study.toml").write_text(STUDY.replace('"optimizer.rho=0.2"', '"optimizer.rho=0.9"'))
    with pytest.raises(RecipeError, match=r"sast-rho0\.2/seed0: was made by a different version of this study"):
        run_study(load_study(tmp_path / "study.toml"), out, progress=False, log=lambda s: None)
    assert main(["study", str(tmp_path / "study.toml"), "--out", str(out), "--quiet"]) == 2
    (tmp_path / "study.toml").write_text(STUDY)
    (tmp_path / "base.toml").write_text(BASE.replace("lr = 5e-3", "lr = 4e-3"))  # the base recipe changed
    with pytest.raises(RecipeError, match=r"baseline/seed0: was made by a different version of this study"):
        run_study(load_study(tmp_path / "study.toml"), out, progress=False, log=lambda s: None)
    (tmp_path / "base.toml").write_text(BASE)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files

    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    for name in ("baseline", "sast-rho0.05", "sast-rho0.2", "baseline-calibrated", "Mechanism diagnostics"):
        assert name in md
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r["seeds"] for r in report["rows"]] == [2, 2, 2, 2]
    for png in ("gap_vs_rho", "accuracy_by_mode", "membrane_margins", "training_curves", "gap_vs_rho_by_family"):
        assert (tmp_path / "report" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(RecipeError, match=r"seeds \[7\] are not among"):
        run_study(study, out, progress=False, log=lambda s: None, seeds=(7,))
    logged.clear()
    run_study(study, out, progress=False, log=logged.append, seeds=(1,))  # finished: nothing to do
    assert logged == []


def _run(optimizer, rho, gap, surrogate="hardsigmoid", alpha=0.5, epochs=10, **metrics):
    return {"optimizer": optimizer, "rho": rho, "surrogate": surrogate, "alpha": alpha,
            "metrics": {"transfer_gap_pp": gap, "epochs": epochs, **metrics}}


def test_family_points_keep_plain_baseline_and_sast_per_family_and_rho():
    methods = {
        "baseline": [_run("baseline", 0.3, 80.0), _run("baseline", 0.3, 86.0)],
        "sast-rho0.3": [_run("sast", 0.3, 8.0), _run("sast", 0.3, 6.0)],
        "sam-rho0.3": [_run("sam", 0.3, 10.0)],
        "baseline-2x": [_run("baseline", 0.3, 85.0, epochs=20)],
        "baseline-calibrated": [_run("baseline", 0.3, 20.0, calibrated_from="x")],
        "arctan-sast-rho0.1": [_run("sast", 0.1, 7.0, surrogate="arctan", alpha=0.25)],
    }
    assert family_points(methods) == {"hardsigmoid α=0.5": {0.0: [80.0, 86.0], 0.3: [8.0, 6.0]},
                                      "arctan α=0.25": {0.1: [7.0]}}


def test_bad_study_files_are_named(tmp_path):
    (tmp_path / "base.toml").write_text(BASE)
    bad = tmp_path / "s.toml"
    bad.write_text('base = "base.toml"\n[[method]]\nname = "x"\nset = ["optimizer.rhoo=1"]\n')
    with pytest.raises(RecipeError, match="optimizer.rhoo"):
        load_study(bad)
    bad.write_text('base = "base.toml"\n[[method]]\nname = "c"\ncalibrate = "baseline"\n')
    with pytest.raises(RecipeError, match="must be listed before it"):
        load_study(bad)
    bad.write_text('[[method]]\nname = "x"\n')
    with pytest.raises(RecipeError, match="missing key 'base'"):
        load_study(bad)


def test_demo_shows_the_papers_effect_and_the_recipe_to_deploy(tmp_path, small_data, capsys):
    (tmp_path / "main.toml").write_text(BASE.replace('name = "tiny"', 'name = "light"').replace(
        "alpha = 1.0", 'alpha = 0.5\nsurrogate = "hardsigmoid"'))
    (tmp_path / "beside.toml").write_text(BASE.replace('name = "tiny"', 'name = "heavy"'))
    (tmp_path / "deploy.toml").write_text(BASE.replace('name = "tiny"', 'name = "chosen"').replace(
        "alpha = 1.0", 'alpha = 2.0\nsurrogate = "sigmoid"').replace(
        "[optimizer]", '[optimizer]\nname = "baseline"'))
    out = tmp_path / "demo"
    assert main(["demo", "--config", str(tmp_path / "main.toml"), "--beside", str(tmp_path / "beside.toml"),
                 "--deploy", str(tmp_path / "deploy.toml"), "--lava-samples", "0", "--out", str(out)]) == 0
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines()
            if line.startswith(("| light", "| heavy", "| to deploy"))]
    assert rows == [
        "light: hardsigmoid σ, α = 0.5, baseline", "light: hardsigmoid σ, α = 0.5, SAST ρ = 0.05",
        "heavy: arctan σ, α = 1, baseline", "heavy: arctan σ, α = 1, SAST ρ = 0.05",
        "to deploy: chosen: sigmoid σ, α = 2, baseline"]  # trained as the file says, not as a pair
    assert all((out / name / opt / "metrics.json").exists() for name in ("light", "heavy") for opt in ("baseline", "sast"))
    assert (out / "chosen" / "baseline" / "metrics.json").exists() and not (out / "chosen" / "sast").exists()
    assert main(["demo", "--config", str(tmp_path / "main.toml"), "--beside", "", "--deploy", "", "--lava-samples", "0",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "heavy" not in printed and "to deploy" not in printed


def test_a_run_folder_without_the_studys_fingerprint_is_refused_before_any_work(tmp_path):
    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "study.toml").write_text(STUDY)
    study = load_study(tmp_path / "study.toml")
    out = tmp_path / "out"
    (out / "sast-rho0.05" / "seed1").mkdir(parents=True)
    (out / "sast-rho0.05" / "seed1" / "metrics.json").write_text("{}")  # e.g. a run copied in by hand
    logged = []
    with pytest.raises(RecipeError, match=r"sast-rho0\.05/seed1: holds no study fingerprint"):
        run_study(study, out, progress=False, log=logged.append)
    assert logged == [] and sorted(p.name for p in out.iterdir()) == ["sast-rho0.05"]  # nothing trained, no study.json
