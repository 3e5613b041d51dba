"""One ONNX Runtime session factory for every graph, and a checked runner per graph.

`SessionFactory` picks the execution provider (`auto`, `cpu`, `cuda`) and the thread settings in one
place; `GraphRunner` checks a graph's inputs and outputs against the contract of its role
(latent_onnx.contracts) when it opens, and every feed before it runs.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .bundle import Bundle
from .contracts import CONTRACTS
from .errors import BundleError, DeviceError, InputError, RuntimeMissingError
from .onnx_scan import op_types

try:
    import onnxruntime as ort
except ImportError as _error:  # the base install has no ONNX Runtime: the cpu or gpu extra brings it
    raise RuntimeMissingError(
        "latent-onnx needs ONNX Runtime, from one of its extras: pip install 'latent-onnx[cpu]' (CPU),"
        " or pip install 'latent-onnx[gpu]' (NVIDIA CUDA); not both"
    ) from _error

DEVICES = ("auto", "cpu", "cuda")
_ORT_VERSION = tuple(int(part) for part in ort.__version__.split(".")[:2])
# the CLI prints warnings as `latent-onnx: warning: ...`; with no handler set up, Python prints the message
_log = logging.getLogger(__name__)
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int64)": np.int64}
_DTYPES = {"float32": np.float32, "uint8": np.uint8, "int64": np.int64}


def _signature(tensors) -> tuple:
    """A contract's tensors as (name, numpy dtype, dims) (latent_onnx.contracts)."""
    return tuple((t.name, _DTYPES[t.dtype], t.dims) for t in tensors)


def bundle_dims(bundle: Bundle) -> dict[str, int]:
    """The contract symbols' sizes for a bundle (K and T only when the bundle has them)."""
    dims = {"D": bundle.latent_dim, "H": bundle.image_hw[0], "W": bundle.image_hw[1]}
    if bundle.classes is not None:
        dims["K"] = len(bundle.classes)
    if bundle.max_tokens is not None:
        dims["T"] = bundle.max_tokens
    return dims


# On the CPU, a single chain (batch 1) of a large class_grad may run faster on a second session that
# does not pre-pack weights: float32 matrix-vector products stream one copy of each weight, where the
# packed session holds a forward and a backward packing of it (bench: 18-25% faster float32 steps for
# the ImageNet-size MLP, 167 MB packed vs 84 MB; batches of 2 and more are 2x slower unpacked, and a
# small graph such as fashion-colors' 0.7 MB gains nothing, hence the size threshold). Quantised
# weights (int8) are another matter: unpacked ran 3.6-3.7x slower on AMD EPYCs (5.1 vs 1.4 ms). So a
# quantised graph (any of QUANTISED_OPS) uses the unpacked session only when measured faster: at its
# first batch-1 run the runner opens it and times both sessions on typical feeds (SINGLE_ROW_TRIALS
# runs each, taking turns, best of each), keeps the faster and drops the other. The decision is kept
# for the process per graph (sha256) and thread count: its cost, once, is one more session opened
# plus 2 x SINGLE_ROW_TRIALS runs at batch 1.
SINGLE_ROW_ROLES = ("class_grad",)
SINGLE_ROW_MIN_BYTES = 32 * 2**20
# 5, not 3: with 3, 2 of 20 fresh processes on a 2-core Intel Xeon picked two threads for fashion-colors'
# class_grad at batch 8, where one is about 1.5x faster; with 5, none of 20 did.
SINGLE_ROW_TRIALS = 5
QUANTISED_OPS = frozenset(
    {
        "DynamicQuantizeLinear",
        "QuantizeLinear",
        "DequantizeLinear",
        "MatMulInteger",
        "QLinearMatMul",
        "MatMulNBits",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
    }
)
# (graph sha256, threads) -> whether a quantised graph's unpacked session measured faster
_UNPACKED_FASTER: dict[tuple, bool] = {}

# On the CPU a small gradient graph (below SINGLE_ROW_MIN_BYTES, such as fashion-colors' 0.5 MB
# class_grad) is bound by the fixed cost of its hundred-odd small nodes, and splitting each node over
# the intra-op threads adds a hand-off per node: on a 2-core AMD EPYC (AVX-512 VNNI, 32 MiB L3) that
# class_grad took 0.089 / 0.363 ms per run at batch 8 / 64 on one thread against 0.140 / 0.568 ms on
# two (sleeping between runs, as session_options sets), and at batch 256 two threads were as fast
# (1.23 against 1.30 ms). Where that helps depends on the machine and the batch, so a pipeline with
# more than one thread times, at each batch size's first run of such a graph, a one-thread session
# against the shared one (SINGLE_ROW_TRIALS runs each, taking turns) and keeps the faster for that
# batch size; the decision is kept for the process per graph (sha256), thread setting and batch size.
SERIAL_ROLES = ("class_grad", "caption_grad")
# (graph sha256, threads, batch) -> whether the one-thread session measured faster
_SERIAL_FASTER: dict[tuple, bool] = {}

# On CUDA a small gradient graph is bound by kernel launches, not by its arithmetic: the default
# bundle's class_grad took about 0.9 ms per run at any batch size on an H200, where replaying it as a
# captured CUDA graph takes a quarter of that (bench --sections cuda). So on CUDA the gradient roles
# run through IO binding into fixed device buffers (one set per batch size), and the first
# CAPTURED_BATCHES batch sizes each get a CUDA graph (ONNX Runtime's enable_cuda_graph, gpu_graph_id
# 1, 2, ...) that it captures on an early run and replays afterwards; further sizes run bound but
# uncaptured. A new graph's replay is compared once with its first, uncaptured run (CAPTURE_CHECK_RUNS
# runs: ONNX Runtime's regular runs before a capture, 1 or 2 by version, the capture, and a replay);
# a mismatch or a failed capture turns capture off for the graph.
CAPTURED_ROLES = ("class_grad", "caption_grad")
CAPTURED_BATCHES = 8
CAPTURE_CHECK_RUNS = 4

# Graphs run once per batch, between the chains (decode, encode, judge), are not interleaved with the
# sampler's NumPy work, so their workers spin between nodes (ONNX Runtime's default) instead of sleeping:
# fashion-colors' generator, a hundred-odd nodes, took 0.68 / 15.9 ms at batch 1 / 64 spinning against
# 1.0 / 17.4 ms sleeping on a 2-core Intel Xeon with AMX (480 MiB L3).
SPINNING_ROLES = ("generator", "encoder", "classifier")


@dataclass
class _Slot:
    """The IO binding of one batch size: its fixed input and output buffers and the options it runs with."""

    binding: ort.IOBinding
    inputs: dict[str, ort.OrtValue]
    outputs: list[ort.OrtValue]
    options: ort.RunOptions


def _graph_options(graph_id: int) -> ort.RunOptions:
    """Run options replaying CUDA graph `graph_id` (-1: run without capture)."""
    options = ort.RunOptions()
    options.add_run_config_entry("gpu_graph_id", str(graph_id))
    return options


class BoundRuns:
    """Runs one session through IO binding, with every input and output in a buffer on `device` ("cuda" or
    "cpu") that is allocated once per batch size and refilled per run; with `capture` (a session opened
    with enable_cuda_graph) each of the first CAPTURED_BATCHES batch sizes replays its own CUDA graph.
    Not thread-safe: GraphRunner calls it under a lock.
    """

    def __init__(self, session: ort.InferenceSession, output_specs: Callable[[int], list], device: str, capture: bool):
        self.session = session
        self.output_specs = output_specs  # batch -> [(name, numpy dtype, shape)] of the outputs, in order
        self.device = device
        self.capture = capture
        self.graph_ids: dict[int, int] = {}  # batch size -> its CUDA graph id
        self._slots: dict[int, _Slot] = {}  # batch size -> its buffers
        self._uncaptured = _graph_options(-1)

    def run(self, feeds: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
        """The outputs for `feeds` (checked by the caller; all of one batch size), as fresh host arrays."""
        slot = self._slots.get(batch)
        if slot is None:
            return self._first_run(feeds, batch)
        for name, array in feeds.items():
            slot.inputs[name].update_inplace(np.ascontiguousarray(array))
        return self._execute(slot, slot.options)

    def _execute(self, slot: _Slot, options: ort.RunOptions) -> list[np.ndarray]:
        self.session.run_with_iobinding(slot.binding, options)
        # a CUDA buffer's numpy() is a host copy; a CPU buffer's is a view of what the next run overwrites
        return [value.numpy().copy() if self.device == "cpu" else value.numpy() for value in slot.outputs]

    def _first_run(self, feeds: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
        slot = _Slot(self.session.io_binding(), {}, [], self._uncaptured)
        for name, array in feeds.items():
            slot.inputs[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)
            slot.binding.bind_ortvalue_input(name, slot.inputs[name])
        for name, dtype, shape in self.output_specs(batch):
            slot.outputs.append(ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, self.device, 0))
            slot.binding.bind_ortvalue_output(name, slot.outputs[-1])
        first = self._execute(slot, self._uncaptured)
        if self.capture and len(self.graph_ids) < CAPTURED_BATCHES:
            graph_id = len(self.graph_ids) + 1
            captured = _graph_options(graph_id)
            try:
                for _ in range(CAPTURE_CHECK_RUNS):
                    replayed = self._execute(slot, captured)
                agrees = all(np.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(first, replayed))
                problem = None if agrees else "a captured CUDA graph disagreed with its uncaptured run"
            except Exception as error:  # onnxruntime raises its own untyped errors
                problem = f"capturing a CUDA graph failed ({_first_line(error)})"
            if problem is None:
                self.graph_ids[batch], slot.options = graph_id, captured
            else:
                _log.warning(f"{problem}; running without captured graphs")
                self.capture, self.graph_ids = False, {}
                for other in self._slots.values():
                    other.options = self._uncaptured
        self._slots[batch] = slot
        return first


def _first_is_faster(first: ort.InferenceSession, second: ort.InferenceSession, names: list[str], feeds: dict) -> bool:
    """Whether `first` runs `feeds` faster than `second`: SINGLE_ROW_TRIALS runs each, taking turns, best of each."""
    best = [math.inf, math.inf]
    for _ in range(SINGLE_ROW_TRIALS):
        for index, session in enumerate((first, second)):
            started = time.perf_counter()
            session.run(names, feeds)
            best[index] = min(best[index], time.perf_counter() - started)
    return best[0] < best[1]


class GraphRunner:
    """A session for one role; `run(**feeds)` checks the feeds and returns {output name: array}.

    `open_single_row`, when given, opens the session that batch-1 runs use instead (see SINGLE_ROW_ROLES);
    it is opened on the first such run. With `timed_key` (a quantised graph) it is first timed against
    `session` and used only when faster, a decision cached under that key. `open_serial`, when given,
    opens a one-thread session that each batch size uses where it measured faster (see SERIAL_ROLES),
    decisions cached under `serial_key` and the batch size. With `bound_device`, every run
    goes through BoundRuns on that device ("cuda" or "cpu"), capturing CUDA graphs when `capture` (see
    CAPTURED_ROLES). Safe to call from several threads (ONNX Runtime's `run` is; bound runs take turns).
    """

    def __init__(
        self,
        role: str,
        session: ort.InferenceSession,
        dims: dict[str, int],
        bundle_name: str,
        open_single_row: Callable[[], ort.InferenceSession] | None = None,
        timed_key: tuple | None = None,
        open_serial: Callable[[], ort.InferenceSession] | None = None,
        serial_key: tuple | None = None,
        bound_device: str | None = None,
        capture: bool = False,
    ):
        self.role = role
        self.session = session
        self.dims = dims
        self.bundle_name = bundle_name
        contract = CONTRACTS[role]
        self.inputs, self.outputs = _signature(contract.inputs), _signature(contract.outputs)
        self._check_signature("input", session.get_inputs(), self.inputs)
        self._check_signature("output", session.get_outputs(), self.outputs)
        self.output_names = [name for name, _, _ in self.outputs]
        # what run() checks, worked out once: (name, dtype[, symbols], sizes of the axes after the batch)
        self._input_names = {name for name, _, _ in self.inputs}
        self._input_checks = [(name, dtype, dims, tuple(self._expected(dims)[1:])) for name, dtype, dims in self.inputs]
        self._output_checks = [(name, dtype, tuple(self._expected(dims)[1:])) for name, dtype, dims in self.outputs]
        self._open_single_row = open_single_row
        self._timed_key = timed_key
        self._single_row: ort.InferenceSession | None = None  # the session batch-1 runs use, once chosen
        self._open_serial = open_serial
        self._serial_key = serial_key
        self._serial: ort.InferenceSession | None = None  # the one-thread session, once a batch size wants it
        self._lock = threading.Lock()
        self.bound = None if bound_device is None else BoundRuns(session, self._output_specs, bound_device, capture)
        self._bound_lock = threading.Lock()

    def session_for(self, batch: int) -> ort.InferenceSession:
        """The session that runs a batch of `batch` rows."""
        if self._open_serial is not None:
            return self._serial_for(batch)
        if batch != 1 or self._open_single_row is None:
            return self.session
        with self._lock:
            if self._single_row is None:
                faster = True if self._timed_key is None else _UNPACKED_FASTER.get(self._timed_key)
                unpacked = self._open_single_row() if faster is not False else None
                if faster is None:
                    faster = _UNPACKED_FASTER[self._timed_key] = _first_is_faster(
                        unpacked, self.session, self.output_names, self.typical_feeds(1)
                    )
                self._single_row = unpacked if faster else self.session
            return self._single_row

    def _serial_for(self, batch: int) -> ort.InferenceSession:
        """The one-thread session where it runs `batch` rows faster than the shared one, else the shared one."""
        with self._lock:
            key = (*self._serial_key, batch)
            faster = _SERIAL_FASTER.get(key)
            if faster is not False and self._serial is None:
                self._serial = self._open_serial()
            if faster is None:
                faster = _SERIAL_FASTER[key] = _first_is_faster(
                    self._serial, self.session, self.output_names, self.typical_feeds(batch)
                )
            return self._serial if faster else self.session

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def _expected(self, symbols) -> list:
        return [self.dims.get(s, s) if isinstance(s, str) else s for s in symbols]

    def _output_specs(self, batch: int) -> list:
        return [(name, dtype, [batch, *self._expected(symbols)[1:]]) for name, dtype, symbols in self.outputs]

    def _check_signature(self, kind: str, actual, expected):
        where = f"bundle '{self.bundle_name}': graph {self.role}"
        actual_names = [node.name for node in actual]
        expected_names = [name for name, _, _ in expected]
        if sorted(actual_names) != sorted(expected_names):
            raise BundleError(f"{where} has {kind}s {actual_names}, the format requires {expected_names}")
        by_name = {node.name: node for node in actual}
        for name, dtype, symbols in expected:
            node = by_name[name]
            if _ORT_TYPES.get(node.type) is not dtype:
                raise BundleError(
                    f"{where}: {kind} '{name}' is {node.type}, the format requires {np.dtype(dtype).name}"
                )
            shape = list(node.shape)
            wanted = self._expected(symbols)
            if len(shape) != len(wanted):
                raise BundleError(
                    f"{where}: {kind} '{name}' has rank {len(shape)}, the format requires shape {symbols}"
                )
            if isinstance(shape[0], int):
                raise BundleError(
                    f"{where}: {kind} '{name}' has a fixed batch size {shape[0]}; export it with a dynamic batch axis"
                )
            for axis, (have, want) in enumerate(zip(shape[1:], wanted[1:]), start=1):
                if isinstance(have, int) and isinstance(want, int) and have != want:
                    raise BundleError(
                        f"{where}: {kind} '{name}' axis {axis} is {have}, the manifest implies {want} ({symbols[axis]})"
                    )

    def run(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on checked feeds (names, dtypes and shapes as the contract says)."""
        if feeds.keys() != self._input_names:
            raise InputError(f"graph {self.role} takes inputs {[n for n, _, _ in self.inputs]}, got {sorted(feeds)}")
        batch = None
        for name, dtype, symbols, trailing in self._input_checks:
            array = feeds[name]
            if not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim != len(symbols):
                raise InputError(
                    f"graph {self.role}: input '{name}' must be a {np.dtype(dtype).name} array of shape {list(symbols)}"
                )
            batch = array.shape[0] if batch is None else batch
            if array.shape[0] != batch or array.shape[1:] != trailing:
                raise InputError(
                    f"graph {self.role}: input '{name}' has shape {list(array.shape)}, expected {[batch, *trailing]}"
                )
        where = f"bundle '{self.bundle_name}': graph {self.role}"
        try:
            if self.bound is None:
                results = self.session_for(batch).run(self.output_names, feeds)
            else:
                with self._bound_lock:
                    results = self.bound.run(feeds, batch)
        except Exception as error:  # onnxruntime raises its own untyped errors (Fail, InvalidArgument, ...)
            raise BundleError(f"{where} failed in ONNX Runtime on a batch of {batch}: {_first_line(error)}") from None
        outputs = dict(zip(self.output_names, results))
        for name, dtype, trailing in self._output_checks:
            array = outputs[name]
            if array.dtype != dtype or array.shape[:1] != (batch,) or array.shape[1:] != trailing:
                raise BundleError(
                    f"{where} returned '{name}' as {array.dtype} {list(array.shape)}; the format requires"
                    f" {np.dtype(dtype).name} {[batch, *trailing]}"
                )
        return outputs

    def typical_feeds(self, batch: int) -> dict[str, np.ndarray]:
        """Inputs of `batch` rows: zero codes, the first class, the first token (<eos>), mid-grey images."""
        feeds = {}
        for name, dtype, symbols in self.inputs:
            array = np.zeros([batch, *self._expected(symbols)[1:]], dtype=dtype)
            if name in ("weights", "mask"):
                array[:, 0] = 1
            elif name == "image":
                array[:] = 128
            feeds[name] = array
        return feeds

    def probe(self) -> None:
        """Run the graph on typical inputs, a batch of 1 and of 2; BundleError unless it runs, its outputs have
        the contract's shapes and its float outputs are finite (what `latent-onnx info` calls verified)."""
        for batch in (1, 2):
            for name, array in self.run(**self.typical_feeds(batch)).items():
                if array.dtype.kind == "f" and not np.isfinite(array).all():
                    raise BundleError(
                        f"bundle '{self.bundle_name}': graph {self.role} returned non-finite '{name}'"
                        " for a finite probe input"
                    )


def session_options(threads: int | None, allow_spinning: bool = False, prepack: bool = True) -> ort.SessionOptions:
    """The ONNX Runtime session options of every graph: all optimisations, sequential, errors-only logging
    (`prepack=False` only for the single-row sessions, see SINGLE_ROW_ROLES)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    # Worker threads sleep between runs instead of spinning: the sampler's NumPy work runs between
    # graph runs, and spinning workers take its core (bench: 1.3-2.2x faster steps on 2 busy cores).
    # allow_spinning=True (ONNX Runtime's own default) is for the graphs run once per batch (SPINNING_ROLES).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class SessionFactory:
    """Creates every session of a pipeline with one device choice and one thread setting."""

    def __init__(self, device: str = "auto", threads: int | None = None, cuda_graphs: bool = True):
        if device not in DEVICES:
            raise InputError(f"device must be one of {', '.join(DEVICES)}, not '{device}'")
        if threads is not None and (
            not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 1024
        ):
            raise InputError(f"threads must be an integer from 1 to 1024, not {threads!r}")
        available = ort.get_available_providers()
        if device == "cuda" and _CUDA not in available:
            raise DeviceError(
                f"CUDA was asked for but this ONNX Runtime ({', '.join(_ort_builds()) or 'unknown build'}) has no CUDA"
                f" provider (available: {', '.join(available)}); switch to the CUDA build with `{GPU_INSTALL}`,"
                " or use --device cpu"
            )
        self.device = device
        self.threads = threads
        self.cuda_graphs = cuda_graphs  # on CUDA, capture the gradient graphs (CAPTURED_ROLES)
        self._providers = [_CUDA, _CPU] if device in ("auto", "cuda") and _CUDA in available else [_CPU]
        if self._providers[0] == _CUDA:
            # A CUDA provider that fails to load logs several coloured lines to stderr from C++; create()
            # says why in one line instead (--device cuda) or falls back to the CPU (auto).
            ort.set_default_logger_severity(4)  # fatal only
        self._lock = threading.Lock()

    def create(self, bundle: Bundle, role: str) -> GraphRunner:
        """A checked runner for one graph of the bundle, loaded from its verified bytes."""
        model = bundle.graph_bytes(role)
        with self._lock:  # one provider decision at a time (auto falls back to CPU once)
            captured = None
            if role in CAPTURED_ROLES and self.cuda_graphs and self._providers[0] == _CUDA:
                captured = self._open_captured(bundle, role, model)
            if captured is not None:
                return GraphRunner(role, captured, bundle_dims(bundle), bundle.name, bound_device="cuda", capture=True)
            options = session_options(self.threads, allow_spinning=role in SPINNING_ROLES)
            session = self._open(bundle, role, model, self._providers, options)
            if self._providers[0] == _CUDA and session.get_providers()[0] != _CUDA:
                if self.device == "cuda":
                    raise DeviceError(
                        f"CUDA was asked for but its provider failed to start ({_cuda_problem()}); install what is"
                        " missing (onnxruntime-gpu's CUDA and cuDNN libraries, an NVIDIA driver) or use --device cpu"
                    )
                _log.warning(
                    f"CUDA's provider failed to start ({_cuda_problem()}); running on the CPU"
                    " (device 'cpu' does not try CUDA)"
                )
                self._providers = [_CPU]
        open_single_row = timed_key = open_serial = serial_key = None
        on_cpu = session.get_providers()[0] == _CPU
        if role in SINGLE_ROW_ROLES and len(model) >= SINGLE_ROW_MIN_BYTES and on_cpu:
            options = session_options(
                self.threads, prepack=False
            )  # the bytes are read (and verified) again when opened
            open_single_row = lambda: self._open(bundle, role, bundle.graph_bytes(role), [_CPU], options)  # noqa: E731
            if op_types(model) & QUANTISED_OPS:
                timed_key = (bundle.graphs[role].sha256, self.threads)
        elif (
            role in SERIAL_ROLES
            and len(model) < SINGLE_ROW_MIN_BYTES
            and on_cpu
            and (self.threads or os.cpu_count() or 1) > 1
        ):
            open_serial = lambda: self._open(bundle, role, bundle.graph_bytes(role), [_CPU], session_options(1))  # noqa: E731
            serial_key = (bundle.graphs[role].sha256, self.threads)
        return GraphRunner(
            role, session, bundle_dims(bundle), bundle.name, open_single_row, timed_key, open_serial, serial_key
        )

    def _open_captured(self, bundle: Bundle, role: str, model: bytes) -> ort.InferenceSession | None:
        """A CUDA session of the graph with CUDA graph capture on, or None when ONNX Runtime refuses it (for
        example a node that runs on the CPU) or CUDA does not start (the plain session then says why)."""
        if _ORT_VERSION < (1, 18):  # one graph per session before 1.18: gpu_graph_id is not read
            return None
        providers = [(_CUDA, {"enable_cuda_graph": "1"}), _CPU]
        try:
            session = self._open(bundle, role, model, providers, session_options(self.threads))
        except BundleError as error:
            _log.info(f"graph {role} runs on CUDA without captured graphs: {error}")
            return None
        return session if session.get_providers()[0] == _CUDA else None

    @staticmethod
    def _open(
        bundle: Bundle, role: str, model: bytes, providers: list[str], options: ort.SessionOptions
    ) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(model, sess_options=options, providers=providers)
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise BundleError(
                f"bundle '{bundle.name}': ONNX Runtime cannot load graph {role}: {_first_line(error)}"
            ) from None


GPU_INSTALL = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'latent-onnx[gpu]'"  # README's CUDA install


def _ort_builds() -> list[str]:
    """The ONNX Runtime distributions installed (normally one: onnxruntime or onnxruntime-gpu)."""
    from importlib import metadata

    return [name for name in ("onnxruntime", "onnxruntime-gpu") if _installed(metadata, name)]


def _installed(metadata, name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _cuda_problem() -> str:
    """Why the CUDA provider did not start, as far as the dynamic loader tells (e.g. the missing libcudnn.so.9)."""
    import ctypes
    import sys
    from pathlib import Path

    builds = _ort_builds()
    if len(builds) > 1:
        return f"both {' and '.join(builds)} are installed and share one module; reinstall one: `{GPU_INSTALL}`"
    name = "onnxruntime_providers_cuda.dll" if sys.platform == "win32" else "libonnxruntime_providers_cuda.so"
    library = Path(ort.__file__).parent / "capi" / name
    if not library.is_file():
        return f"{name} is missing from {library.parent}"
    try:
        ctypes.CDLL(str(library))
    except OSError as error:  # e.g. "libcudnn.so.9: cannot open shared object file: No such file or directory"
        return f"{name} does not load: {_first_line(error)}"
    return f"{name} loads, so no usable GPU or driver was found"


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def probe_bundle(bundle: Bundle, threads: int | None = None) -> dict[str, GraphRunner]:
    """Open every graph of `bundle` on the CPU (checking it against its contract) and run its probe:
    what `latent-onnx info` and the bundle writer call a verified bundle."""
    factory = SessionFactory("cpu", threads)
    runners = {role: factory.create(bundle, role) for role in bundle.graphs}
    for runner in runners.values():
        runner.probe()
    return runners
