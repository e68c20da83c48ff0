"""Stage 10, tuning: ``sast-deploy tune``, a search over recipes on Optuna.

* :mod:`.space`: the search space, a TOML file next to the recipes (``train/tune-*.toml``);
* :mod:`.sampling`: Optuna's samplers and pruner as the space names them, seeded per trial;
* :mod:`.search`: the study (storage, resume, interrupted trials) and one trial, a run directory;
* :mod:`.summary`: ``tune.md``, ``tune.json``, ``best.toml`` and the figures.

Every choice reads the validation split only; the test split is never evaluated here.
"""
