"""The search-space files of ``sast-deploy tune``: strict validation (one line naming the file
and the field, exit 2), conditional parameters, and property tests of the parser."""

import json
import tempfile
from pathlib import Path

import optuna
import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sast_deploy.cli import main
from sast_deploy.training.recipe import load_recipe
from sast_deploy.tuning.sampling import TrialSeededSampler
from sast_deploy.tuning.space import SpaceError, load_space, recipe_toml

BASE = """name = "base"
[data]
n_time_bins = 10
[model]
hidden = [16]
[training]
epochs = 1
"""

SPACE = """
base = "base.toml"
set = ["training.batch_size=64"]
[[param]]
name = "optimizer.name"
choices = ["baseline", "sast", "sam", "ste"]
[[param]]
name = "optimizer.rho"
low = 0.01
high = 1.0
log = true
when = { "optimizer.name" = ["sast", "sam"] }
[[param]]
name = "model.hidden"
choices = [[8], [16, 8]]
[[param]]
name = "training.epochs"
low = 1
high = 3
integer = true
"""


def _space(tmp_path, text, base=BASE):
    (tmp_path / "base.toml").write_text(base)
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


def test_space_draws_conditional_params_and_rebuilds_recipes(tmp_path):
    space = load_space(_space(tmp_path, SPACE))
    assert space.name == "space" and [p.name for p in space.params][:2] == ["optimizer.name", "optimizer.rho"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        values = space.suggest(trial)
        seen.add(values["optimizer.name"])
        # rho only where the optimizer perturbs
        assert ("optimizer.rho" in values) == (values["optimizer.name"] in ("sast", "sam"))
        assert values["model.hidden"] in ([8], [16, 8]) and isinstance(values["training.epochs"], int)
        assert space.values_of(trial.params) == values
        recipe = space.recipe(values, name="t")
        assert recipe.training.batch_size == 64 and list(recipe.model.hidden) == values["model.hidden"]
        study.tell(trial, 1.0)
    assert seen == {"baseline", "sast", "sam", "ste"}


def test_recipe_toml_round_trips_through_load_recipe(tmp_path):
    space = load_space(_space(tmp_path, SPACE))
    recipe = space.recipe({"optimizer.name": "sast", "optimizer.rho": 0.123456789, "model.hidden": [16, 8]}, name="best")
    (tmp_path / "best.toml").write_text(recipe_toml(recipe, "a header\nover two lines"))
    assert load_recipe(tmp_path / "best.toml") == recipe


def test_trial_seeded_sampler_draws_by_trial_number_not_by_process(tmp_path):
    """Two processes with the space's seed draw different start-up trials (each trial's draw is
    seeded by its number), and trial k's draw is the same whichever process runs it."""
    space = load_space(_space(tmp_path, SPACE))

    def draws(numbers):
        study = optuna.create_study(sampler=TrialSeededSampler("random", 0, 5))
        out = {}
        for n in range(max(numbers) + 1):
            trial = study.ask()
            values = space.suggest(trial)
            study.tell(trial, 1.0)
            if n in numbers:
                out[n] = values
        return out

    a, b = draws({0, 1, 2, 3}), draws({0, 1, 2, 3})
    assert a == b  # reproducible
    assert len({json.dumps(v, sort_keys=True) for v in a.values()}) > 1  # not one draw repeated


BAD = [
    ("", "missing key 'base'"),
    ('base = "base.toml"', "no [[param]] to search"),
    ('base = "nope.toml"\n[[param]]\nname = "model.alpha"\nlow = 1\nhigh = 2', "base recipe 'nope.toml' not found"),
    ('base = "base.toml"\nbogus = 1\n[[param]]\nname = "model.alpha"\nlow = 1\nhigh = 2', "unknown key bogus"),
    ('base = "base.toml"\n[[param]]\nname = "model.alpha"\nlow = 2\nhigh = 1', "low (2.0) must be below high (1.0)"),
    ('base = "base.toml"\n[[param]]\nname = "model.alpha"\nlow = 0\nhigh = 1\nlog = true', "a log range needs low > 0"),
    ('base = "base.toml"\n[[param]]\nname = "model.alpha"\nlow = 1', "a range needs both low and high"),
    ('base = "base.toml"\n[[param]]\nname = "model.alpha"\nlow = 1\nhigh = 2\nchoices = [1]', "either choices or low and high"),
    ('base = "base.toml"\n[[param]]\nname = "model.alpha"\nlow = "1"\nhigh = 2', "param[0].low must be a number"),
    ('base = "base.toml"\n[[param]]\nname = "alpha"\nlow = 1\nhigh = 2', "name must be a recipe field as section.key"),
    ('base = "base.toml"\n[[param]]\nname = "model.alphq"\nlow = 1\nhigh = 2', "unknown key model.alphq"),
    ('base = "base.toml"\n[[param]]\nname = "model.surrogate"\nchoices = ["arctan", "boxcar"]',
     "model.surrogate: unknown surrogate family 'boxcar'"),
    ('base = "base.toml"\n[[param]]\nname = "model.alpha"\nlow = -1\nhigh = 2', "model.alpha must be > 0"),
    ('base = "base.toml"\n[[param]]\nname = "training.epochs"\nlow = 1\nhigh = 2.5\ninteger = true', "integer bounds"),
    ('base = "base.toml"\n[[param]]\nname = "training.epochs"\nlow = 1.0\nhigh = 3.0',
     "training.epochs must be an integer"),
    ('base = "base.toml"\n[[param]]\nname = "model.alpha"\nchoices = [1, 1]', "choices repeat a value"),
    ('base = "base.toml"\n[[param]]\nname = "model.alpha"\nlow = 1\nhigh = 2\n[[param]]\nname = "model.alpha"\nlow = 1\nhigh = 3',
     "param 'model.alpha' is listed twice"),
    ('base = "base.toml"\n[[param]]\nname = "optimizer.rho"\nlow = 0.1\nhigh = 1\nwhen = { "optimizer.name" = ["sast"] }',
     "when.optimizer.name must name a categorical param listed before it"),
    ('base = "base.toml"\n[[param]]\nname = "optimizer.name"\nchoices = ["sast"]\n[[param]]\nname = "optimizer.rho"\n'
     'low = 0.1\nhigh = 1\nwhen = { "optimizer.name" = ["sam"] }', "lists ['sam'], not among its choices"),
    ('base = "base.toml"\nsampler = "grid"\n[[param]]\nname = "model.alpha"\nlow = 1\nhigh = 2', "unknown sampler 'grid'"),
    ('base = "base.toml"\nset = ["model.alpha=-3"]\n[[param]]\nname = "model.v_th"\nlow = 1\nhigh = 2', "model.alpha"),
    ('base = "base.toml"\n[pruning]\nmin_epochs = 0\n[[param]]\nname = "model.alpha"\nlow = 1\nhigh = 2', "pruning.min_epochs"),
    ('base = "base.toml"\n[[param]]\nname = "model.alpha"\nlow = 1\nhigh = inf', "param[0].high must be a finite number"),
    ('base = "base.toml"\n[[param', "not valid TOML"),
    ('base = "base.toml"\nset = ["data.val_fraction=0.0"]\n[[param]]\nname = "model.alpha"\nlow = 1\nhigh = 2',
     "data.val_fraction must be > 0: trials are scored on the validation split"),
    ('base = "base.toml"\n[[param]]\nname = "data.val_fraction"\nchoices = [0.1, 0.0]',
     "param 'data.val_fraction' = 0.0: data.val_fraction must be > 0"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m for _, m in BAD])
def test_bad_space_is_one_line_naming_file_and_field(tmp_path, capsys, text, message):
    path = _space(tmp_path, text)
    with pytest.raises(SpaceError) as exc:
        load_space(path)
    assert str(exc.value).startswith(str(path)) and message in str(exc.value), str(exc.value)
    code = main(["tune", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()


# --- property tests --------------------------------------------------------------------

FIELDS = ["model.alpha", "model.v_th", "model.beta", "model.surrogate", "model.hidden", "optimizer.name",
          "optimizer.rho", "optimizer.lr", "training.epochs", "training.batch_size", "model.nope", "alpha", "x.y.z"]
scalars = st.one_of(st.booleans(), st.integers(-5, 300), st.floats(-10, 10, allow_nan=False),
                    st.sampled_from(["arctan", "sigmoid", "hardsigmoid", "sast", "sam", "baseline", "ste", "mlp", ""]))
choice = st.one_of(scalars, st.lists(st.integers(-2, 64), min_size=0, max_size=3))
positive = st.floats(1e-3, 10, allow_nan=False)


def _range(low, high, integer=False):
    """A range param: sorted bounds, sometimes log."""
    bounds = st.lists(low, min_size=2, max_size=2, unique=True).map(sorted)
    return st.tuples(bounds, st.booleans()).map(
        lambda b: {"low": b[0][0], "high": b[0][1], "log": b[1], **({"integer": True} if integer else {})})


# plausible params per recipe field: what a user writes, so that many drawn spaces are valid
PLAUSIBLE = {
    "model.alpha": st.one_of(_range(positive, positive), st.lists(positive, min_size=1, max_size=3, unique=True).map(lambda c: {"choices": c})),
    "model.v_th": _range(positive, positive),
    "model.surrogate": st.lists(st.sampled_from(["arctan", "sigmoid", "hardsigmoid"]), min_size=1, unique=True).map(lambda c: {"choices": c}),
    "model.hidden": st.lists(st.lists(st.integers(1, 64), min_size=1, max_size=2), min_size=1, max_size=3, unique_by=str)
    .map(lambda c: {"choices": c}),
    "optimizer.name": st.lists(st.sampled_from(["baseline", "sast", "sam", "ste"]), min_size=1, unique=True).map(lambda c: {"choices": c}),
    "optimizer.rho": _range(positive, positive),
    "optimizer.lr": _range(st.floats(1e-5, 1e-1), st.floats(1e-5, 1e-1)),
    "training.epochs": _range(st.integers(1, 5), st.integers(1, 5), integer=True),
}


@st.composite
def plausible_space(draw):
    """A space of plausible params, one field of which may then be replaced by junk."""
    names = draw(st.lists(st.sampled_from(sorted(PLAUSIBLE)), min_size=1, max_size=5, unique=True))
    params = [{"name": n, **draw(PLAUSIBLE[n])} for n in names]
    optimizers = next((p["choices"] for p in params if p["name"] == "optimizer.name"), None)
    for p in params:
        if p["name"] == "optimizer.rho" and optimizers and names.index("optimizer.rho") > names.index("optimizer.name"):
            p["when"] = {"optimizer.name": draw(st.lists(st.sampled_from(optimizers), min_size=1, unique=True))}
    if draw(st.integers(0, 3)) == 0:  # one hostile edit
        p = draw(st.sampled_from(params))
        p[draw(st.sampled_from(["name", "low", "high", "choices", "log", "integer", "when", "junk"]))] = draw(choice)
    return {"base": "base.toml", "param": params}


param = st.fixed_dictionaries({"name": st.sampled_from(FIELDS)}, optional={
    "choices": st.lists(choice, max_size=4),
    "low": st.one_of(st.integers(-3, 10), st.floats(-3, 10, allow_nan=False)),
    "high": st.one_of(st.integers(-3, 20), st.floats(-3, 20, allow_nan=False)),
    "log": st.booleans(), "integer": st.booleans(),
    "when": st.dictionaries(st.sampled_from(FIELDS), st.lists(choice, max_size=3), max_size=2),
})
space_dicts = st.one_of(plausible_space(), st.fixed_dictionaries({"base": st.just("base.toml"), "param": st.lists(param, max_size=4)}, optional={
    "seed": st.integers(-1, 2**33), "sampler": st.sampled_from(["tpe", "random", "nsga2", "grid"]),
    "startup_trials": st.integers(-1, 5), "set": st.lists(st.sampled_from(["model.alpha=2", "model.alpha=-1", "bad"]), max_size=2),
    "pruning": st.fixed_dictionaries({}, optional={"enabled": st.booleans(), "min_epochs": st.integers(-1, 3)}),
}))
raw_toml = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.sampled_from(["base", "param", "name", "low", "choices", "x"]),
                                                                        inner, max_size=3)), max_leaves=8)


def _load(text_or_dict):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "base.toml").write_text(BASE)
        path = tmp / "space.toml"
        path.write_text(text_or_dict if isinstance(text_or_dict, str) else tomli_w.dumps(text_or_dict))
        try:
            return path, load_space(path), None
        except SpaceError as exc:
            return path, None, exc


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space_dicts)
def test_any_space_is_a_space_whose_every_draw_is_a_valid_recipe_or_one_error(raw):
    """The parser accepts a space only when every trial it can draw is a valid recipe;
    anything else is one SpaceError line naming the file."""
    path, space, error = _load(raw)
    if error is not None:
        assert str(error).startswith(str(path)) and "\n" not in str(error)
        return
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(4):
        trial = study.ask()
        values = space.suggest(trial)
        space.recipe(values, name="t")  # raises if a drawn recipe were invalid
        assert space.values_of(trial.params) == values
        study.tell(trial, 0.0)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["base", "param", "name", "set", "seed", "pruning", "x"]), raw_toml, max_size=4))
def test_arbitrary_toml_never_crashes_the_parser(raw):
    _, _, error = _load(raw)
    assert error is None or "\n" not in str(error)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_text_never_crashes_the_parser(text):
    _, _, error = _load(text)
    assert error is None or "\n" not in str(error)
