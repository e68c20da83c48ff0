"""A run the target cannot represent is a result, recorded with its reason, not the end of a study."""

import json
import math

import pytest

from sast_deploy.analysis.report import write_report
from sast_deploy.analysis.study import load_study, run_study
from sast_deploy.cli import main

from conftest import SMALL_RECIPE_TOML

BASE = 'name = "tiny"\n' + SMALL_RECIPE_TOML + """
[optimizer]
lr = 5e-3
name = "baseline"
[training]
epochs = 1
batch_size = 64
"""

# a first-layer threshold of 1e-6 rounds to 0 at any scale its weights allow: not deployable
STUDY = """
name = "one-fails"
base = "base.toml"
seeds = [0]
lava_samples = 8
[[method]]
name = "baseline"
[[method]]
name = "tiny-threshold"
set = ["model.v_th_scale=[1e-6, 1.0]"]
"""


@pytest.mark.slow
def test_a_study_with_a_run_that_cannot_be_deployed_completes_and_reports_why(tmp_path, capsys):
    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "study.toml").write_text(STUDY)
    out = tmp_path / "out"
    logged = []
    runs = run_study(load_study(tmp_path / "study.toml"), out, progress=False, log=logged.append)
    assert len(runs) == 2 and all((r / "compare.json").exists() for r in runs)
    failed = json.loads((out / "tiny-threshold" / "seed0" / "compare.json").read_text())
    assert failed["deployable"] is False and "layer 0 (dense): threshold rounds to 0" in failed["reason"]
    assert json.loads((out / "baseline" / "seed0" / "compare.json").read_text())["deployable"] is True
    assert any("tiny-threshold seed 0: cannot be deployed" in line for line in logged)
    # its training recorded it too, in the validation block
    metrics = json.loads((out / "tiny-threshold" / "seed0" / "metrics.json").read_text())
    assert metrics["validation"]["emulator_accuracy"] is None and "threshold rounds to 0" in metrics["validation"]["emulator_error"]
    # resumed: the recorded run is done, not retried
    logged.clear()
    run_study(load_study(tmp_path / "study.toml"), out, progress=False, log=logged.append)
    assert logged == []

    result = write_report(out, tmp_path / "report", diagnostics=False)
    md = result["md"].read_text()
    assert "## Runs that cannot be deployed" in md and failed["reason"] in md and "1 (1 not deployable)" in md
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [(x["method"], x["seed"]) for x in report["not_deployable"]] == [("tiny-threshold", 0)]
    row = {r["method"]: r for r in report["rows"]}
    assert math.isnan(row["tiny-threshold"]["emulator_accuracy"][0]) and not math.isnan(row["baseline"]["emulator_accuracy"][0])

    # by hand, compare says so in one line and exit code 2, and records it the same way
    capsys.readouterr()
    assert main(["compare", str(out / "tiny-threshold" / "seed0"), "--samples", "4", "--quiet"]) == 2
    assert "threshold rounds to 0" in capsys.readouterr().err
