"""``sast-deploy``: a thin command line over the library's stages.

    sast-deploy train --config train/demo.toml [--set key=value ...] --out RUN_DIR
    sast-deploy evaluate RUN_DIR [--mode surrogate|hard|both]
    sast-deploy demo [--out runs/demo]

Every command exits non-zero with a one-line message naming the file or field at fault.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

RECIPES_DIR = Path(__file__).resolve().parent.parent / "train"
DEMO_RECIPE = "demo.toml"


def _find_recipe(name: str) -> Path:
    p = Path(name)
    if p.exists() or p.suffix == ".toml":
        return p
    return RECIPES_DIR / f"{name}.toml"


def cmd_train(args) -> int:
    from .config import load_recipe
    from .train import train

    recipe = load_recipe(_find_recipe(args.config), args.set)
    metrics = train(recipe, args.out, progress=not args.quiet, resume=not args.restart)
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from .data import load_dataset
    from .train import evaluate, load_run

    model, recipe, _ = load_run(args.run_dir)
    _, test = load_dataset(recipe.data, progress=not args.quiet)
    modes = ("surrogate", "hard") if args.mode == "both" else (args.mode,)
    result = evaluate(model, test, modes, recipe.training.eval_batch_size)
    result["n_samples"] = len(test)
    print(json.dumps(result, indent=2))
    return 0


def cmd_demo(args) -> int:
    from .config import load_recipe
    from .data import load_dataset
    from .train import train

    recipe_path = _find_recipe(args.config)
    out = Path(args.out)
    rows = []
    data = None
    for opt in ("baseline", "sast"):
        recipe = load_recipe(recipe_path, [f"optimizer.name={opt}", *args.set])
        if data is None:
            data = load_dataset(recipe.data, progress=True)
        print(f"\n== {opt}: {recipe.name} ({recipe.training.epochs} epochs, rho={recipe.optimizer.rho}) -> {out / opt}")
        rows.append((opt, train(recipe, out / opt, progress=True, data=data)))
    print(f"\nTransfer gap on {recipe.data.name} (test split, {rows[0][1]['n_test']} samples)\n")
    print("| method | surrogate acc % | hard acc % | transfer gap pp | train s |")
    print("|---|---|---|---|---|")
    for opt, m in rows:
        print(f"| {opt} | {m['surrogate_accuracy']:.2f} | {m['hard_accuracy']:.2f} | {m['transfer_gap_pp']:+.2f} | {m['train_seconds']:.0f} |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sast-deploy", description="Sharpness-Aware Surrogate Training, deployed to Loihi 2 through Lava.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a recipe and evaluate it in surrogate and hard-spike mode")
    p.add_argument("--config", required=True, help="recipe TOML file (or the name of one in train/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field, e.g. optimizer.rho=0.3")
    p.add_argument("--out", required=True, help="run directory (model.pt, metrics.json, checkpoint.pt)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint instead of resuming")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy of a trained run on its test split, as JSON")
    p.add_argument("run_dir")
    p.add_argument("--mode", choices=("surrogate", "hard", "both"), default="both")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="train baseline and SAST on the embedded default and print the paper's table")
    p.add_argument("--config", default=DEMO_RECIPE, help=f"recipe (default train/{DEMO_RECIPE})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/demo")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    from .config import RecipeError
    from .data import DataError
    from .train import RunError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RecipeError, DataError, RunError, FileNotFoundError) as exc:
        print(f"sast-deploy {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sast-deploy {args.command}: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
