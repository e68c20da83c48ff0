"""sast-deploy: Sharpness-Aware Surrogate Training for spiking networks, deployed to Loihi 2 through Lava.

The public API, one name per step of the flow (README, "Python")::

    load_recipe, recipe_path        a recipe file (or a recipe the package ships) -> Recipe
    load_dataset                    DataConfig -> (train, test) FrameDataset (frames [N, T, P, H, W])
    train                           Recipe -> run directory (model.pt, metrics.json); returns a TrainedRun
                                    (model, metrics, run_dir)
    load_run, evaluate              run directory -> (SpikingNet, Recipe, metrics); accuracies in percent
    load_spec, quantize             target spec (export/loihi2.toml) -> QuantizedNet (Loihi 2 fixed point)
    export_run, write_netx, read_netx, write_nir, write_onnx      each export target
    as_frames                       the one input type of the deploy stages: numpy or torch frames
                                    [N, T, P, H, W] (bool, integer or float spike counts) -> uint8 tensor
    emulate                         QuantizedNet + frames -> bit-exact output counts and activity
    simulate_lava                   netx file + frames -> Lava's CPU simulator's output counts (netx builds
                                    the graph from that file; simulate_quantized: a QuantizedNet through one)
    simulate_run                    netx file + run directory -> simulate.json (accuracy on its test split)
    compare                         float model + netx file + FrameDataset -> float, emulator and Lava,
                                    sample by sample (compare.json's fields; writes nothing)
    compare_run                     run directory -> compare.json and compare.md (the same, from a run)

Names are imported on first use (module ``__getattr__``), so ``import sast_deploy`` does not
import torch.
"""

from __future__ import annotations

# Lava's runtime calls multiprocessing.set_start_method('fork') (unforced) when first
# imported, which fails once anything else fixed the start method: tqdm does, by creating
# its multiprocessing lock. Importing that module first (0.4 s) keeps every later Lava
# import working, whatever ran in between.
import lava.magma.runtime.message_infrastructure.multiprocessing  # noqa: F401,E402

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Dict, List

try:
    __version__ = version("sast-deploy")  # one home: pyproject.toml's [project] version
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"

# public name -> the module that defines it
_EXPORTS: Dict[str, str] = {
    "SastDeployError": "sast_deploy.errors",
    "recipe_path": "sast_deploy.configs",
    "Recipe": "sast_deploy.training.recipe",
    "load_recipe": "sast_deploy.training.recipe",
    "DataConfig": "sast_deploy.data.datasets",
    "load_dataset": "sast_deploy.data.datasets",
    "FrameDataset": "sast_deploy.data.frames",
    "Frames": "sast_deploy.data.frames",
    "as_frames": "sast_deploy.data.frames",
    "train": "sast_deploy.training.train",
    "TrainedRun": "sast_deploy.training.train",
    "SpikingNet": "sast_deploy.training.model",
    "load_run": "sast_deploy.training.runs",
    "evaluate": "sast_deploy.training.evaluate",
    "Loihi2Spec": "sast_deploy.deploy.quantize",
    "QuantizedNet": "sast_deploy.deploy.quantize",
    "load_spec": "sast_deploy.deploy.quantize",
    "quantize": "sast_deploy.deploy.quantize",
    "EXPORT_TARGETS": "sast_deploy.deploy.export",
    "export_run": "sast_deploy.deploy.export",
    "write_netx": "sast_deploy.deploy.export",
    "read_netx": "sast_deploy.deploy.export",
    "write_nir": "sast_deploy.deploy.interchange",
    "write_onnx": "sast_deploy.deploy.interchange",
    "Emulation": "sast_deploy.deploy.emulator",
    "emulate": "sast_deploy.deploy.emulator",
    "SimulationResult": "sast_deploy.deploy.simulate",
    "simulate_lava": "sast_deploy.deploy.simulate",
    "simulate_quantized": "sast_deploy.deploy.simulate",
    "simulate_run": "sast_deploy.deploy.lava_run",
    "compare": "sast_deploy.deploy.compare",
    "compare_run": "sast_deploy.deploy.compare",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> List[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load lazily
    from .configs import recipe_path
    from .data.datasets import DataConfig, load_dataset
    from .data.frames import FrameDataset, Frames, as_frames
    from .deploy.compare import compare, compare_run
    from .deploy.emulator import Emulation, emulate
    from .deploy.export import EXPORT_TARGETS, export_run, read_netx, write_netx
    from .deploy.interchange import write_nir, write_onnx
    from .deploy.quantize import Loihi2Spec, QuantizedNet, load_spec, quantize
    from .deploy.lava_run import simulate_run
    from .deploy.simulate import SimulationResult, simulate_lava, simulate_quantized
    from .errors import SastDeployError
    from .training.evaluate import evaluate
    from .training.model import SpikingNet
    from .training.recipe import Recipe, load_recipe
    from .training.runs import load_run
    from .training.train import TrainedRun, train
