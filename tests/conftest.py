import os
from pathlib import Path

import pytest

# One genuine N-MNIST recording shipped with the tests (attribution: tests/data/README.md)
REFERENCE_NMNIST = Path(__file__).resolve().parent / "data" / "sample_nmnist.bin"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Generated data goes to a per-session cache, never the user's."""
    path = tmp_path_factory.mktemp("sast-deploy-cache")
    old = os.environ.get("SAST_DEPLOY_CACHE")
    os.environ["SAST_DEPLOY_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SAST_DEPLOY_CACHE", None)
    else:
        os.environ["SAST_DEPLOY_CACHE"] = old


@pytest.fixture(scope="session")
def reference_nmnist() -> Path:
    if not REFERENCE_NMNIST.is_file():
        pytest.fail(f"{REFERENCE_NMNIST} is missing: it ships with the repository (tests/data/README.md)")
    return REFERENCE_NMNIST


# A small synthetic-nmnist: 200 source images, 2 training variants, 1 test variant, T = 10.
SMALL_SYNTHETIC = {"max_sources": 200, "train_variants": 2, "test_variants": 1}


# The same data and model as a recipe file's sections (tests that go through TOML files).
SMALL_RECIPE_TOML = """
[data]
n_time_bins = 10
[data.synthetic]
max_sources = 200
train_variants = 2
test_variants = 1
[model]
hidden = [16]
alpha = 1.0
"""


@pytest.fixture(scope="session")
def small_data():
    from sast_deploy.data.datasets import DataConfig, load_dataset

    cfg = DataConfig(n_time_bins=10, synthetic=SMALL_SYNTHETIC)
    return cfg, load_dataset(cfg, progress=False)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, small_data):
    """A run trained for 2 epochs on the small synthetic set (baseline, alpha 2)."""
    from sast_deploy.training.train import train
    from test_train import _recipe

    _, data = small_data
    run = tmp_path_factory.mktemp("run")
    train(_recipe(**{"training.epochs": 2, "optimizer.name": "baseline", "model.alpha": 2.0}), run, progress=False, data=data)
    return run


def cli_error(capsys, *argv):
    """(exit code, the one stderr line) of an in-process ``sast-deploy`` command that fails:
    one line, no traceback; an argparse refusal (usage and error lines, exit 2) gives its
    error line."""
    from sast_deploy.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err), err
    if code == 2 and err[0].startswith("usage:"):
        err = [line for line in err if not line.startswith(("usage:", " "))]
    assert len(err) == 1, err
    return code, err[0]
