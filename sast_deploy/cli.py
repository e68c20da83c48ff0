"""``sast-deploy``: a thin command line over the library's stages.

    sast-deploy train --config train/demo.toml [--set key=value ...] --out RUN_DIR
    sast-deploy evaluate RUN_DIR [--mode surrogate|hard|both] [--emulator] [--data-set data.KEY=VALUE ...]
    sast-deploy export RUN_DIR --target lava|nir|onnx [--out FILE] [--spec export/loihi2.toml]
    sast-deploy simulate NET.h5 --run RUN_DIR [--samples N] [--out FILE]
    sast-deploy compare RUN_DIR [--samples N]
    sast-deploy demo [--out runs/demo]
    sast-deploy write-dataset synthetic-nmnist --out DATA_DIR [--train N --test M]
    sast-deploy tune train/tune-nmnist.toml --out OUT [--n-trials N] [--objectives accuracy,synops] [--storage URL]

Every command exits non-zero with a one-line message naming the file or field at fault.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys

from pathlib import Path
from typing import List, Optional

from .distributed import is_rank_zero
from .errors import EXIT_BAD_INPUT, EXIT_SIGINT, EXIT_SIGTERM, SastDeployError, Terminated, one_line
from .deploy.export import EXPORT_TARGETS
from .deploy.simulate import DEFAULT_CONV_COPIES, DEFAULT_COPIES
from .functional.lif import LOIHI_WEIGHT_BITS
from .data.tonic_layout import LAYOUTS
from .signals import terminate_raises
from .configs import recipe_path
from .validation import SEED_MAX

DEMO_RECIPE = "demo.toml"
DEMO_ARCTAN_RECIPE = "demo-arctan.toml"
DEMO_DEPLOY_RECIPE = "deploy-nmnist.toml"


def _find_recipe(name: str) -> Path:
    """A recipe path, or the name of one in train/ ('demo' or 'demo.toml') as the package ships it."""
    return recipe_path(name)


def cmd_train(args) -> int:
    from .training.recipe import load_recipe
    from .training.train import train

    overrides = list(args.set) + ([f"training.device={args.device}"] if args.device else [])
    recipe = load_recipe(_find_recipe(args.config), overrides)
    metrics = train(recipe, args.out, progress=not args.quiet, resume=not args.restart).metrics
    if is_rank_zero():  # under torchrun only rank 0 prints results (every rank computes them)
        print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from .analysis.transfer import evaluate_run_on

    modes = ("surrogate", "hard") if args.mode == "both" else (args.mode,)
    result = evaluate_run_on(args.run_dir, args.data_set, modes, emulator=args.emulator, progress=not args.quiet,
                             spec=_spec(args) if args.emulator else None)
    print(json.dumps(result, indent=2))
    return 0


def _spec(args):
    from .deploy.quantize import load_spec, with_weight_bits

    return with_weight_bits(load_spec(getattr(args, "spec", None)), getattr(args, "weight_bits", None))


def cmd_export(args) -> int:
    from .deploy.export import export_markdown, export_run

    if args.target is None or args.run_dir is None:
        print("export targets:")
        for name, what in EXPORT_TARGETS.items():
            print(f"  {name:5s} {what}")
        return 0 if args.target is None else 2
    print(export_markdown(export_run(args.run_dir, args.out, _spec(args), target=args.target)), end="")
    return 0


def cmd_simulate(args) -> int:
    from .deploy.lava_run import simulate_run, summary

    result, path = simulate_run(args.net, args.run, samples=args.samples, out=args.out, hardware=args.hardware,
                                copies=args.copies, progress=not args.quiet)
    print(json.dumps(summary(result), indent=2))
    print(f"per-sample results: {path}")
    return 0


def cmd_compare(args) -> int:
    from .deploy.compare import compare_markdown, compare_run
    from .deploy.export import precision_suffix

    spec = _spec(args)
    result = compare_run(args.run_dir, samples=args.samples, progress=not args.quiet, spec=spec, copies=args.copies)
    if not is_rank_zero():
        return 0
    print(compare_markdown([(Path(args.run_dir).name, result)]))
    suffix = precision_suffix(spec)
    print(f"wrote {Path(args.run_dir) / f'compare{suffix}.json'} and compare{suffix}.md")
    return 0


def cmd_precision(args) -> int:
    from .analysis.precision import precision_markdown, precision_table
    from .fileio import atomic_write_text

    table = precision_table(args.run_dirs, args.bits)
    md = precision_markdown(table)
    print(md)
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(table, indent=2) + "\n")
    return 0


def cmd_calibrate(args) -> int:
    from .training.calibrate import calibrate_run

    m = calibrate_run(args.run_dir, args.out, fraction=args.fraction, progress=not args.quiet)
    print(json.dumps({k: m[k] for k in ("v_th_scale", "calibration_split", "calibration_samples", "calibration_hard_accuracy", "calibration_out_of_range",
                                        "uncalibrated_hard_accuracy", "surrogate_accuracy", "hard_accuracy", "transfer_gap_pp")}, indent=2))
    return 0


def cmd_study(args) -> int:
    from .analysis.study import load_study, run_study

    study = load_study(_find_recipe(args.study))
    runs = run_study(study, args.out, progress=not args.quiet, seeds=args.seeds)
    print(f"{len(runs)} runs complete in {args.out}; next: sast-deploy report {args.out} --out REPORT_DIR")
    return 0


def cmd_report(args) -> int:
    from .analysis.report import write_report

    result = write_report(args.study_dir, args.out, diagnostics=not args.no_diagnostics, also=args.also)
    print(result["md"].read_text())
    print(f"wrote {result['md']}, {result['json']} and {len(result['figures'])} figures")
    return 0


def cmd_robustness(args) -> int:
    from .analysis.robustness import robustness, robustness_markdown, write_robustness

    result = robustness(args.run_dirs, seed=args.seed, progress=not args.quiet)
    paths = write_robustness(result, args.out)
    print(robustness_markdown(result))
    print(f"wrote {paths['json']}, {paths['md']} and {paths['png']}")
    return 0


def cmd_demo(args) -> int:
    from .analysis.demo import deploy_demo, plan_demo, train_demo, training_markdown

    paper = [(_find_recipe(args.config), list(args.set))] + ([(_find_recipe(args.beside), [])] if args.beside else [])
    runs = plan_demo(args.out, paper, _find_recipe(args.deploy) if args.deploy else None)
    metrics = train_demo(runs)
    print(f"\nTransfer gap on {runs[0].recipe.data.name} (test split, {metrics[0]['n_test']} samples)\n")
    print(training_markdown(runs, metrics))
    if args.lava_samples == 0:
        return 0
    from .deploy.compare import compare_markdown

    compared = deploy_demo(runs, args.lava_samples)
    print("\nDeployment (hard spikes): float PyTorch, quantized emulator, Lava simulator\n")
    print(compare_markdown(compared))
    return 0


def cmd_write_dataset(args) -> int:
    from .training.recipe import RecipeError, apply_overrides, recipe_from_dict
    from .data.tonic_layout import write_tonic_tree

    ignored = [item for item in args.set if not item.split("=", 1)[0].strip().startswith("data.")]
    if ignored:  # a dataset has no model or optimizer: such a setting would be accepted and ignored
        raise RecipeError(f"--set {ignored[0]!r}: write-dataset takes only data.* fields")
    recipe = recipe_from_dict(apply_overrides({"data": {"name": args.dataset}}, args.set), source="--set")
    counts = {"train": args.train, "test": args.test} if (args.train or args.test) else None  # 0, 0: each once
    folder = write_tonic_tree(recipe.data, args.out, counts, progress=not args.quiet)
    # train/nmnist.toml and train/dvsgesture.toml are named after the real datasets
    print(f"wrote {folder}; train on it: sast-deploy train --config {LAYOUTS[args.dataset].real_name} "
          f"--set data.data_dir={args.out} --out RUN_DIR")
    return 0


def cmd_tune(args) -> int:
    from .tuning.search import parse_objectives, tune
    from .tuning.space import load_space

    space = load_space(_find_recipe(args.space))
    objectives = parse_objectives(args.objectives) if args.objectives else None
    result = tune(space, args.out, args.n_trials, objectives, args.storage, progress=not args.quiet)
    print(result.written["md"].read_text())
    print(f"wrote {', '.join(str(p) for p in result.written.values())}")
    return 0


# --- option values: argparse types for their syntax (argparse reports them, exit 2). The library
# checks what they mean (weight widths, seeds, fractions, file counts), once for the CLI and Python;
# only a sample count's sign is checked here, since the library reads any count <= 0 as 'all'.


def count(text: str) -> int:
    """An argparse type: a whole number >= 0 (a negative count is an error, not 'all')."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = all), got {value}")
    return value


def int_list(text: str) -> tuple:
    """An argparse type: comma-separated integers ('8,6,4'); the library checks their values."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


# --- the parser: shared options as parent parsers, then one function per command -------------


def _option(*names: str, **kwargs) -> argparse.ArgumentParser:
    """A parent parser holding one option, for the commands that share it."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(*names, **kwargs)
    return p


class Shared:
    """The options several commands take, each a parent parser."""

    def __init__(self):
        self.quiet = _option("--quiet", action="store_true", help="no progress bars")
        self.set = _option("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="override a recipe field, e.g. optimizer.rho=0.3")
        self.spec = _option("--spec", help="target spec TOML (default export/loihi2.toml; export/loihi2-w4.toml: 4-bit weights)")
        self.spec.add_argument("--weight-bits", type=int,
                               help="weight mantissa bits (8, 6, 4, ...), overrides the spec (compare's files get a -wN suffix)")
        self.copies = _option("--copies", type=int, default=None,
                              help=f"K network copies in one graph, each on its own sample, bit-identical to K=1 (default "
                                   f"{DEFAULT_COPIES} for MLPs, {DEFAULT_CONV_COPIES} for conv nets, fewer for fewer samples; "
                                   f"benchmarks/simulation_speed.py times each K)")

    @staticmethod
    def out(help: str, **kwargs) -> argparse.ArgumentParser:
        """--out, whose meaning differs per command."""
        return _option("--out", help=help, **kwargs)


def add_train(sub, o: Shared) -> None:
    p = sub.add_parser("train", parents=[o.set, o.quiet, o.out("run directory (model.pt, metrics.json, checkpoint.pt)", required=True)],
                       help="train a recipe and evaluate it in surrogate and hard-spike mode")
    p.add_argument("--config", required=True, help="recipe TOML file (or the name of one in train/)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint instead of resuming")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), help="overrides training.device (auto: CUDA when present)")
    p.set_defaults(func=cmd_train)


def add_evaluate(sub, o: Shared) -> None:
    p = sub.add_parser("evaluate", parents=[o.quiet, o.spec],
                       help="accuracy of a trained run on its test split, or on another dataset's (--data-set), as JSON")
    p.add_argument("run_dir")
    p.add_argument("--mode", choices=("surrogate", "hard", "both"), default="both")
    p.add_argument("--emulator", action="store_true",
                   help="also the deployed network's accuracy (Loihi 2 fixed point on the emulator, equal to Lava bit for bit)")
    p.add_argument("--data-set", action="append", default=[], metavar="KEY=VALUE",
                   help="score on another dataset's test split, e.g. --data-set data.name=nmnist --data-set data.data_dir=DIR; "
                        "it must have the run's classes and input shape; its frames are made as the run's")
    p.set_defaults(func=cmd_evaluate)


def add_demo(sub, o: Shared) -> None:
    p = sub.add_parser("demo", parents=[o.set, o.out("output folder", default="runs/demo")],
                       help="the paper's effect (baseline and SAST) and the recipe to deploy, on the embedded default: trained, then deployed to Lava")
    p.add_argument("--config", default=DEMO_RECIPE,
                   help=f"recipe (default train/{DEMO_RECIPE}: the regime where SAST's effect is largest); --set applies to it")
    p.add_argument("--beside", default=DEMO_ARCTAN_RECIPE, metavar="RECIPE",
                   help=f"a second recipe trained and shown beside it (default train/{DEMO_ARCTAN_RECIPE}, the arctan regime; '' for none)")
    p.add_argument("--deploy", default=DEMO_DEPLOY_RECIPE, metavar="RECIPE",
                   help=f"the recipe to deploy, trained as it stands (default train/{DEMO_DEPLOY_RECIPE}: chosen for deployed "
                        "validation accuracy; '' for none)")
    p.add_argument("--lava-samples", type=count, default=200, help="test samples run on Lava's simulator (0: skip deployment)")
    p.set_defaults(func=cmd_demo)


def add_export(sub, o: Shared) -> None:
    p = sub.add_parser("export", parents=[o.spec, o.out("output file (default RUN_DIR/net.h5, net.nir or net.onnx)")],
                       help="export a run: Loihi 2 netx HDF5 (lava), NIR or ONNX")
    p.add_argument("run_dir", nargs="?")
    p.add_argument("--target", nargs="?", const=None, default="lava",
                   help=f"export target: {', '.join(EXPORT_TARGETS)} (default lava; --target alone lists them)")
    p.set_defaults(func=cmd_export)


def add_simulate(sub, o: Shared) -> None:
    p = sub.add_parser("simulate", parents=[o.copies, o.quiet, o.out("output JSON (default RUN_DIR/simulate.json)")],
                       help="run an exported network on Lava's CPU simulator (Loihi2SimCfg, fixed_pt)")
    p.add_argument("net", help="netx HDF5 file")
    p.add_argument("--run", required=True, help="the run whose recipe names the dataset")
    p.add_argument("--samples", type=count, default=500, help="test samples to run: a seeded class-stratified subset (0 = all)")
    p.add_argument("--hardware", help="simulator run config (default hardware/lava-sim.toml)")
    p.set_defaults(func=cmd_simulate)


def add_compare(sub, o: Shared) -> None:
    p = sub.add_parser("compare", parents=[o.spec, o.copies, o.quiet],
                       help="float vs quantized emulator vs Lava, sample by sample (compare.json, compare.md)")
    p.add_argument("run_dir")
    p.add_argument("--samples", type=count, default=500,
                   help="test samples run on Lava: a seeded class-stratified subset (the emulator runs them all; 0 = all)")
    p.set_defaults(func=cmd_compare)


def add_study(sub, o: Shared) -> None:
    p = sub.add_parser("study", parents=[o.quiet, o.out("study folder (one run directory per method and seed)", required=True)],
                       help="run a transfer-gap study (methods x seeds; resumable)")
    p.add_argument("study", help="study TOML (or the name of one in train/, e.g. study-nmnist or study-gesture)")
    p.add_argument("--seeds", type=lambda v: tuple(int(s) for s in v.split(",")), default=None, metavar="S1,S2",
                   help="run only these of the study's seeds (e.g. one process per seed in parallel; the report reads all)")
    p.set_defaults(func=cmd_study)


def add_report(sub, o: Shared) -> None:
    p = sub.add_parser("report", parents=[o.out("folder for report.md, report.json and the figures", required=True)],
                       help="table, diagnostics and figures of a study (report.md, report.json, PNGs)")
    p.add_argument("study_dir")
    p.add_argument("--no-diagnostics", action="store_true", help="skip spectral norms, gradient norms, sharpness, margins")
    p.add_argument("--also", action="append", default=[], metavar="STUDY_DIR",
                   help="another study whose baseline and SAST runs join the gap-vs-rho-per-surrogate-family figure (repeatable)")
    p.set_defaults(func=cmd_report)


def add_calibrate(sub, o: Shared) -> None:
    p = sub.add_parser("calibrate", parents=[o.quiet, o.out("run directory for the calibrated network", required=True)],
                       help="post-hoc per-layer threshold calibration of a run on a split of its training data")
    p.add_argument("run_dir")
    p.add_argument("--fraction", type=float, default=0.1, help="runs trained with data.val_fraction = 0 only (others calibrate on their validation split): fraction of training source images used for calibration, in (0, 1]")
    p.set_defaults(func=cmd_calibrate)


def add_robustness(sub, o: Shared) -> None:
    p = sub.add_parser("robustness", parents=[o.quiet, o.out("directory for robustness.json, .md and .png", required=True)],
                       help="hard-spike accuracy (emulator) under event drop, noise, jitter and polarity flips")
    p.add_argument("run_dirs", nargs="+", help="runs on the same dataset (e.g. baseline and SAST)")
    p.add_argument("--seed", type=int, default=0, help=f"seed of the corruptions, 0..{SEED_MAX}")
    p.set_defaults(func=cmd_robustness)


def add_precision(sub, o: Shared) -> None:
    p = sub.add_parser("precision", parents=[o.out("also write the table as JSON")],
                       help="hard-spike accuracy and SynOps of runs at 8/6/4-bit weights (emulator), mean ± std per method")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--bits", type=int_list, default=(8, 6, 4), metavar="B1,B2",
                   help=f"weight mantissa widths, each 2..{LOIHI_WEIGHT_BITS} and once (default 8,6,4)")
    p.set_defaults(func=cmd_precision)


def add_write_dataset(sub, o: Shared) -> None:
    p = sub.add_parser("write-dataset", parents=[o.quiet, o.out("root folder; train on it with --config nmnist (or dvsgesture) "
                                                                "--set data.data_dir=OUT", required=True)],
                       help="write a generated dataset as a real one's files in tonic's layout (N-MNIST .bin, DVS Gesture .npy)")
    p.add_argument("dataset", choices=tuple(LAYOUTS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a [data] field of the generated set, e.g. data.synthetic.max_sources=200 or data.max_train=1000")
    p.add_argument("--train", type=int, default=0,
                   help="training files: a class-stratified subset, or every recording repeated in turn when larger (0: each once)")
    p.add_argument("--test", type=int, default=0, help="test files (as --train)")
    p.set_defaults(func=cmd_write_dataset)


def add_tune(sub, o: Shared) -> None:
    p = sub.add_parser("tune", parents=[o.quiet, o.out("output folder: trials/, tune.db, tune.md, best.toml, figures", required=True)],
                       help="search recipes with Optuna for the validation accuracy of the deployed network (resumable, shareable)")
    p.add_argument("space", help="search-space TOML (or the name of one in train/, e.g. tune-nmnist)")
    p.add_argument("--n-trials", type=int, default=10, help="trials this process runs (0: only write the summary)")
    p.add_argument("--objectives", default=None, metavar="accuracy[,synops]",
                   help="accuracy (validation accuracy on the emulator, maximised); accuracy,synops adds SynOps per "
                        "sample, minimised: the Pareto front (no pruning). Default: the study's, else accuracy")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage shared by several processes or machines (default sqlite:///OUT/tune.db), "
                        "e.g. postgresql://user@host/db")
    p.set_defaults(func=cmd_tune)


COMMANDS = (add_train, add_evaluate, add_demo, add_export, add_simulate, add_compare, add_study, add_report,
            add_calibrate, add_robustness, add_precision, add_write_dataset, add_tune)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sast-deploy", description="Sharpness-Aware Surrogate Training, deployed to Loihi 2 through Lava.")
    sub = ap.add_subparsers(dest="command", required=True)
    shared = Shared()
    for add in COMMANDS:
        add(sub, shared)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; bad input is one line on stderr and exit code 2, SIGINT exits 130 and
    SIGTERM 143 (after Lava runtimes are stopped and locks released). Without ``argv`` (the
    command line of this process, which exits next) the objects left are frozen first."""
    code = _run_command(argv)
    if argv is None:
        # Python's exit ends with full garbage collections that walk every object still alive
        # (torch's, Lava's, the dataset's) and free nothing the end of the process would not;
        # they took most of the time from a Ctrl-C to the exit (README, "Signals"). Frozen
        # objects are skipped.
        gc.freeze()
    return code


def _run_command(argv: Optional[List[str]]) -> int:
    args = build_parser().parse_args(argv)
    prefix = f"sast-deploy {args.command}"
    try:
        with terminate_raises():
            code = args.func(args)
            sys.stdout.flush()  # a closed pipe shows here, not in Python's flush at exit
            return code
    except SastDeployError as exc:
        return _fail(prefix, one_line(str(exc)), EXIT_BAD_INPUT)
    except BrokenPipeError:
        # the reader went away (`sast-deploy ... | head`): no traceback, and no second error
        # when Python flushes stdout at exit (https://docs.python.org/3/library/signal.html#note-on-sigpipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # a path the user gave cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(prefix, f"{where}{exc.strerror or exc}", EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        return _fail(prefix, "interrupted (rerun the same command to resume)", EXIT_SIGINT)
    except Terminated:
        return _fail(prefix, "terminated (rerun the same command to resume)", EXIT_SIGTERM)


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader closed


def _fail(prefix: str, message: str, code: int) -> int:
    try:
        print(f"{prefix}: error: {message}" if code == EXIT_BAD_INPUT else f"{prefix}: {message}", file=sys.stderr)
    except OSError:
        pass  # stderr itself is gone; the exit code still tells
    return code


if __name__ == "__main__":
    sys.exit(main())
