"""Stage 7, simulation: the exported network as a Lava process graph on Lava's CPU simulator,
in the execution model Loihi 2 uses (``Loihi2SimCfg(select_tag='fixed_pt')``).

Samples run back to back in one graph and one runtime: a ``RingBuffer`` source plays the
input spikes of all samples, netx's ``reset_interval`` clears every neuron between samples,
and a :class:`~sast_deploy.deploy.lava.counts.SpikeCounts` sink counts the output spikes of
each window. Each Lava layer delays spikes by one step, so a sample of T frames occupies a
window of R = T + L steps (L layers): its frames, then L empty steps that flush the
pipeline. Output spikes of a window are that sample's.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..configs import default_hardware_path
from ..errors import SastDeployError
from ..data.frames import Frames, as_frames
from .export import read_netx, write_netx
from .layers import layer_kind
from .lava_runtime import lava_runtime, read_var
from .quantize import QuantizedNet
from ..validation import Count, file_data, validated


class SimulationError(SastDeployError, ValueError):
    """The simulation cannot run as asked; the message names the file or value."""


@file_data
@dataclass(frozen=True)
class SimulatorConfig:
    """A run config in ``hardware/`` (default ``hardware/lava-sim.toml``)."""

    name: str = "lava-sim"
    select_tag: str = "fixed_pt"
    chunks: Count = 20

    def __post_init__(self):
        if self.select_tag not in ("fixed_pt", "floating_pt"):
            raise SimulationError(f"select_tag must be fixed_pt or floating_pt, got {self.select_tag!r}")
        if self.chunks < 1:
            raise SimulationError(f"chunks must be >= 1, got {self.chunks}")

    @classmethod
    def load(cls, path: Optional[str | Path] = None) -> "SimulatorConfig":
        from ..training.recipe import RecipeError, read_toml

        default = default_hardware_path()
        path = Path(path) if path else default
        if path == default and not path.is_file():
            return cls()
        return validated(cls, read_toml(path, "hardware config"), str(path), RecipeError)


@dataclass
class SimulationResult:
    counts: np.ndarray  # [N, classes] output spike counts
    seconds: float  # wall time of the runs (excluding graph build and compilation)
    compile_seconds: float
    timesteps: int
    samples: int  # samples simulated (K per window with copies, padding included)
    copies: int = 1  # network copies per graph (K)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")

    @property
    def timesteps_per_s(self) -> float:
        return self.timesteps / self.seconds if self.seconds > 0 else float("nan")


#: The largest spike count per bin the source plays: :func:`input_buffer` holds int8.
LAVA_INPUT_MAX = int(np.iinfo(np.int8).max)


def input_buffer(frames: np.ndarray, first_kind: str, n_layers: int) -> np.ndarray:
    """Source data for N samples of T frames [N, T, P, H, W]: a window of T + L steps per
    sample, time last; (features, N * R) for a dense first layer, (W, H, P, N * R) for conv."""
    n, t = frames.shape[:2]
    r = t + n_layers
    if not layer_kind(first_kind).is_spatial:
        buf = np.zeros((n, r, int(np.prod(frames.shape[2:]))), dtype=np.int8)
        buf[:, :t] = frames.reshape(n, t, -1)
        return buf.reshape(n * r, -1).T
    buf = np.zeros((n, r) + frames.shape[2:], dtype=np.int8)  # [N, R, P, H, W]
    buf[:, :t] = frames
    return buf.reshape((n * r,) + frames.shape[2:]).transpose(3, 2, 1, 0)  # (W, H, P, time)


def group_copies(frames: np.ndarray, copies: int) -> np.ndarray:
    """[N, T, P, H, W] -> [ceil(N/K), T, K*P, H, W]: K samples side by side along the channels
    (zero samples pad the last group); the layout :class:`sast_deploy.deploy.lava.process.CopiesNetwork`
    reads (copy k on channels k*P ... (k+1)*P)."""
    n, t = frames.shape[:2]
    groups = -(-n // copies)
    padded = np.zeros((groups * copies,) + frames.shape[1:], dtype=frames.dtype)
    padded[:n] = frames
    x = padded.reshape(groups, copies, t, *frames.shape[2:]).swapaxes(1, 2)  # [G, T, K, P, H, W]
    return x.reshape(groups, t, copies * frames.shape[2], *frames.shape[3:])


# K for batched simulation: the smallest K that reached 10x stock single-copy Lava in
# benchmarks/simulation_speed.py (its figures: README, "Simulation speed"), for MLPs and for
# nets with conv layers.
DEFAULT_COPIES = 32
DEFAULT_CONV_COPIES = 32


def default_copies(qnet: QuantizedNet) -> int:
    """:data:`DEFAULT_CONV_COPIES` for a net with a conv or pool layer, else :data:`DEFAULT_COPIES`."""
    return DEFAULT_CONV_COPIES if any(layer_kind(q.kind).is_spatial for q in qnet.layers) else DEFAULT_COPIES


def resolve_copies(qnet: QuantizedNet, copies: Optional[int], n_samples: int) -> int:
    """K for ``n_samples`` samples: ``copies``, or by default :func:`default_copies`, no more
    than there are samples. Any K >= 1 fits one graph: the event-driven Conv model scatters
    copies per block and holds the K-fold conv groups as int32 (the stock model's int8 groups
    are why K stopped at 127 / groups before)."""
    if copies is None:
        return max(1, min(default_copies(qnet), n_samples))
    if copies < 1:
        raise SimulationError(f"copies must be >= 1, got {copies}")
    return copies


def simulate_lava(
    net: str | Path, frames: Frames, progress: bool = True, chunks: Optional[int] = None,
    hardware: Optional[SimulatorConfig] = None, copies: Optional[int] = None, event_driven: bool = True,
) -> SimulationResult:
    """Run ``frames`` (binary spikes [N, T, P, H, W], :func:`sast_deploy.data.frames.as_frames`)
    through the netx HDF5 network file ``net`` on Lava's simulator, in the process graph lava-dl
    netx builds from that very file. The file is validated first
    (:func:`sast_deploy.deploy.export.read_netx`: every field, within the target's ranges) so that
    Lava never sees a malformed one; an in-memory network goes through a file too
    (:func:`simulate_quantized`).

    ``event_driven`` selects the event-driven Dense model
    (:class:`sast_deploy.deploy.lava.models.PyEventDenseModel`) through the run config; False runs
    Lava's stock ``PyDenseModelBitAcc`` (K = 1 only). With ``copies`` = K, K copies of the
    network in one graph each take a different sample
    (:class:`sast_deploy.deploy.lava.process.CopiesNetwork`; None: :func:`resolve_copies`'s default,
    1 with the stock model). Outputs are bit-identical in all cases.
    """
    if isinstance(net, QuantizedNet):
        raise TypeError("simulate_lava takes the path of a netx HDF5 file (Lava reads files): "
                        "write_netx(qnet, path) first, or call simulate_quantized(qnet, frames)")
    net_path = Path(net)
    qnet = read_netx(net_path)
    frames = as_frames(frames, qnet.input_shape, max_value=LAVA_INPUT_MAX).numpy()
    n = len(frames)
    if n == 0:
        raise SimulationError("no samples to simulate")
    copies = resolve_copies(qnet, 1 if copies is None and not event_driven else copies, n)
    if copies > 1 and not event_driven:
        raise SimulationError("K copies per graph use the event-driven models (event_driven=True)")
    grouped = group_copies(frames, copies) if copies > 1 else frames
    res = _simulate_graph(qnet, net_path, grouped, progress, chunks, hardware, copies, event_driven)
    res.counts = res.counts.reshape(-1, res.counts.shape[1] // copies)[:n]  # [G, K*C] -> [G*K, C], sample order
    return res


def simulate_quantized(qnet: QuantizedNet, frames: Frames, **kwargs) -> SimulationResult:
    """:func:`simulate_lava` of an in-memory network: ``qnet`` written to a temporary netx
    file (:func:`sast_deploy.deploy.export.write_netx`), and that file simulated. ``kwargs``
    as for :func:`simulate_lava`."""
    with tempfile.TemporaryDirectory(prefix="sast-deploy-lava-") as tmp:
        return simulate_lava(write_netx(qnet, Path(tmp) / "net.h5"), frames, **kwargs)


@dataclass
class _Graph:
    """A netx network wired between a source playing the input and a sink counting the output
    spikes of each window."""

    net: Any
    sink: Any
    window: int  # steps per sample, R = T + L
    samples: int  # windows (of K samples each with copies)


def _build_graph(qnet: QuantizedNet, net_path: Path, frames: np.ndarray, copies: int) -> _Graph:
    # lava-dl's slayer prints CUDA and Prophesee notices on import (errors still raise)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from lava.lib.dl.netx.hdf5 import Network

        from .lava.process import CopiesNetwork
    from lava.proc.io.source import RingBuffer as Source

    from .lava.counts import SpikeCounts

    n, t = frames.shape[:2]
    r = t + len(qnet.layers)
    data = input_buffer(frames, qnet.layers[0].kind, len(qnet.layers))
    if copies == 1:
        net = Network(net_config=str(net_path), reset_interval=r)
    else:
        net = CopiesNetwork(str(net_path), copies=copies, reset_interval=r)
    if tuple(net.inp.shape) != data.shape[:-1]:
        raise SimulationError(f"the network's input port has shape {tuple(net.inp.shape)}, the data {data.shape[:-1]}")
    source = Source(data=data)
    sink = SpikeCounts(shape=net.out.shape, window=r, windows=n)
    source.s_out.connect(net.inp)
    net.out.connect(sink.a_in)
    return _Graph(net, sink, r, n)


def _simulate_graph(
    qnet: QuantizedNet, net_path: Path, frames: np.ndarray, progress: bool = True, chunks: Optional[int] = None,
    hardware: Optional[SimulatorConfig] = None, copies: int = 1, event_driven: bool = True,
) -> SimulationResult:
    """One Lava graph over ``frames`` [N, T, K*P, H, W] (K copies of the network in ``net_path``).

    The graph is built and compiled once; the runtime then steps through the samples in up
    to ``chunks`` consecutive ``run()`` calls (whole samples each, so the progress bar moves;
    state carries over between calls exactly as within one call). The runtime is always
    stopped, its workers reaped and its shared memory released: on errors, SIGINT and SIGTERM
    (:func:`sast_deploy.deploy.lava_runtime.lava_runtime`). ``hardware`` defaults to ``hardware/lava-sim.toml``.
    """
    from .lava.counts import PySpikeCountsModel
    from .lava.models import run_config

    hardware = hardware or SimulatorConfig.load()
    if event_driven and hardware.select_tag != "fixed_pt":
        raise SimulationError(f"the event-driven models are fixed point; {hardware.name} selects {hardware.select_tag}")
    graph = _build_graph(qnet, net_path, frames, copies)
    run_cfg = run_config(event_driven, hardware.select_tag, graph.net)
    # keyed by the instance, so that Lava's compiler takes it without searching for models
    run_cfg.exception_proc_model_map[graph.sink] = PySpikeCountsModel
    t0 = time.perf_counter()
    with lava_runtime(graph.net, run_cfg):
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _run_in_chunks(graph, run_cfg, chunks or hardware.chunks, copies, progress)
        seconds = time.perf_counter() - t0
        counts = read_var(graph.sink.counts).reshape(-1, graph.samples).T.astype(np.int64)  # [N, classes]
    n, r = graph.samples, graph.window
    return SimulationResult(counts=counts, seconds=seconds, compile_seconds=compile_s, timesteps=n * r, copies=copies,
                            samples=n * copies)


def _run_in_chunks(graph: _Graph, run_cfg, chunks: int, copies: int, progress: bool) -> None:
    """Step the running graph through all its samples in up to ``chunks`` ``run()`` calls."""
    from lava.magma.core.run_conditions import RunSteps
    from tqdm import tqdm

    n = graph.samples
    per_chunk = max(1, -(-n // max(1, chunks)))
    with tqdm(total=n * copies, desc="lava simulator", disable=not progress, unit="sample") as bar:
        done = 0
        while done < n:
            k = min(per_chunk, n - done)
            graph.net.run(condition=RunSteps(num_steps=k * graph.window), run_cfg=run_cfg)
            done += k
            bar.update(k * copies)
