"""What a user installs: the public API, the files the package ships, the declared
dependencies, the wheel, and the README's Python example."""

import ast
import importlib.metadata
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import sast_deploy
from sast_deploy.configs import FOLDERS, packaged, recipe_path

from helpers import SMALL_RECIPE_TOML

REPO = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_public_name_resolves_and_the_import_stays_light():
    assert sast_deploy.__all__[0] == "__version__" and len(set(sast_deploy.__all__)) == len(sast_deploy.__all__)
    for name in sast_deploy.__all__:
        assert getattr(sast_deploy, name) is not None, name
    assert set(sast_deploy.__all__) <= set(dir(sast_deploy))
    with pytest.raises(AttributeError):
        sast_deploy.no_such_name  # noqa: B018
    # a fresh interpreter: the import loads neither torch nor our stages, but does fix Lava's import order
    code = ("import sys, sast_deploy; print(sorted(m for m in ('torch', 'sast_deploy.training.train') if m in sys.modules)); "
            "print('lava.magma.runtime.message_infrastructure.multiprocessing' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "True"]


def test_version_has_one_home_in_pyproject():
    version = _pyproject()["project"]["version"]
    assert sast_deploy.__version__ == version == importlib.metadata.version("sast-deploy")
    copies = [p for p in (REPO / "sast_deploy").rglob("*.py") if re.search(r"['\"]" + re.escape(version) + r"['\"]", p.read_text())]
    assert copies == []  # no second, hard-coded copy of the version to fall out of step


def test_packaged_folders_are_the_repositorys_folders():
    # one source of truth: the package's folders are links to train/, export/, hardware/
    for folder in FOLDERS:
        assert packaged(folder).resolve() == (REPO / folder).resolve()
        assert sorted(p.name for p in packaged(folder).glob("*.toml")) == sorted(p.name for p in (REPO / folder).glob("*.toml"))
    assert recipe_path("demo") == recipe_path("demo.toml") == packaged("train") / "demo.toml"
    assert recipe_path("train/demo.toml") == Path("train/demo.toml")  # a path stays a path


def _third_party_imports() -> set:
    names = set()
    for path in (REPO / "sast_deploy").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    newer_stdlib = {"tomllib"}  # in the standard library from Python 3.11; recipe.py falls back to tomli
    return {n for n in names if n not in sys.stdlib_module_names | newer_stdlib and n != "sast_deploy"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _providers() -> dict:
    """Top-level module -> the installed distributions whose files hold it, from the first path
    component of each RECORD line (importlib.metadata.packages_distributions misses the wheels
    without top_level.txt, and dist.files builds an object per file: minutes for torch's)."""
    providers = {}
    for dist in importlib.metadata.distributions():
        tops = {line.split(",", 1)[0].split("/", 1)[0] for line in (dist.read_text("RECORD") or "").splitlines()}
        for top in tops:
            if top and top != ".." and not top.endswith((".dist-info", ".egg-info", ".data", ".pth")):
                providers.setdefault(top.removesuffix(".py"), set()).add(_canonical(dist.metadata["Name"]))
    return providers


def test_every_imported_distribution_is_a_declared_dependency():
    declared = {_canonical(re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0]) for req in _pyproject()["project"]["dependencies"]}
    providers = _providers()
    missing = {module: sorted(providers.get(module, ())) for module in _third_party_imports()
               if not providers.get(module, set()) & declared}
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"


@pytest.mark.slow
def test_wheel_holds_every_recipe_spec_and_hardware_config(tmp_path):
    """pip builds the wheel as a user's install would (isolated build: setuptools from the index)."""
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-w", str(tmp_path), "-q"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("sast_deploy-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        for folder in FOLDERS:
            for path in (REPO / folder).glob("*.toml"):
                member = f"sast_deploy/configs/{folder}/{path.name}"
                assert member in names, f"{folder}/{path.name} is not in the wheel"
                assert zf.read(member) == path.read_bytes()
    assert "sast_deploy/configs/__init__.py" in names
    required = {re.split(r"[<>=!~;\[ ]", line[len("Requires-Dist: "):], maxsplit=1)[0]
                for line in metadata.splitlines() if line.startswith("Requires-Dist: ")}
    assert {"nir", "threadpoolctl", "lava-nc", "lava-dl", "norse"} <= required


def _readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert len(blocks) == 1, "the README has one Python example, and this test runs it"
    return blocks[0]


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch, small_data, capsys):
    """The README's block as written, with the recipe it names swapped for a small one (same
    model family, a tenth of the data) so that it runs in seconds."""
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('name = "tiny"\n' + SMALL_RECIPE_TOML + '[optimizer]\nname = "sast"\nlr = 5e-3\n')

    def small_recipe(name):
        assert recipe_path(name).is_file(), f"the README names a recipe the package lacks: {name}"
        return tiny

    monkeypatch.setattr(sast_deploy, "recipe_path", small_recipe)
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_python(), "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert "surrogate_accuracy" in out[0] and "transfer_gap_pp" in out[0]
    lava_accuracy, agreement = map(float, out[-1].split())
    assert 0 <= lava_accuracy <= 100 and agreement == 1.0
    # the in-memory route writes the run and the network the user exported, nothing else
    written = sorted(p.name for p in (tmp_path / "runs" / "py").iterdir() if p.name != ".lock")  # the run's lock stays
    assert written == ["checkpoint.pt", "metrics.json", "model.pt", "net.h5"]


def test_a_folder_named_like_a_recipe_does_not_hide_it(tmp_path, monkeypatch):
    # `tune tune-gesture --out tune-gesture`, rerun from the same folder, found the output folder
    from sast_deploy.configs import packaged, recipe_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    assert recipe_path("demo") == packaged("train") / "demo.toml"
    (tmp_path / "mine.toml").write_text("x = 1\n")
    assert recipe_path("mine.toml") == Path("mine.toml")  # a file in the working directory is read as it is
