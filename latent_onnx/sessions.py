"""One ONNX Runtime session factory for every graph, and a checked runner per graph.

`SessionFactory` picks the execution provider (`auto`, `cpu`, `cuda`) and the thread settings in one
place; `GraphRunner` checks a graph's inputs and outputs against the contract of its role
(docs/bundle-format.md) when it opens, and every feed before it runs.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import onnxruntime as ort

from .bundle import Bundle
from .errors import BundleError, DeviceError, InputError

DEVICES = ("auto", "cpu", "cuda")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int64)": np.int64}
_F, _U8, _I64 = np.float32, np.uint8, np.int64

# role -> (inputs, outputs); each a tuple of (name, dtype, dims); dims use the symbols of
# docs/bundle-format.md ("B" is the dynamic batch axis) or fixed integers.
CONTRACTS = {
    "generator": ((("z", _F, ("B", "D")),), (("image", _U8, ("B", "H", "W", 3)),)),
    "classifier": ((("z", _F, ("B", "D")),), (("logits", _F, ("B", "K")),)),
    "class_grad": (
        (("z", _F, ("B", "D")), ("weights", _F, ("B", "K"))),
        (("logp", _F, ("B",)), ("grad", _F, ("B", "D"))),
    ),
    "caption_grad": (
        (("z", _F, ("B", "D")), ("tokens", _I64, ("B", "T")), ("mask", _F, ("B", "T"))),
        (("logp", _F, ("B",)), ("grad", _F, ("B", "D"))),
    ),
    "encoder": ((("image", _U8, ("B", "H", "W", 3)),), (("z", _F, ("B", "D")),)),
    "composite_class_grad": (
        (("z", _F, ("B", "D")), ("weights", _F, ("B", "K"))),
        (("logp", _F, ("B",)), ("grad", _F, ("B", "D"))),
    ),
}


def bundle_dims(bundle: Bundle) -> dict[str, int]:
    """The contract symbols' sizes for a bundle (K and T only when the bundle has them)."""
    dims = {"D": bundle.latent_dim, "H": bundle.image_hw[0], "W": bundle.image_hw[1]}
    if bundle.classes is not None:
        dims["K"] = len(bundle.classes)
    if bundle.max_tokens is not None:
        dims["T"] = bundle.max_tokens
    return dims


# On the CPU, a single chain (batch 1) of a large class_grad runs faster on a second session that
# does not pre-pack weights: matrix-vector products stream one copy of each weight, where the packed
# session holds a forward and a backward packing of it (twice the bytes through the caches). bench:
# 18-25% faster steps for the ImageNet-size MLP (167 MB packed vs 84 MB); batches of 2 and more are
# 2x slower unpacked, and a small graph (fashion-colors, 0.7 MB) gains nothing, hence the threshold.
SINGLE_ROW_ROLES = ("class_grad",)
SINGLE_ROW_MIN_BYTES = 32 * 2**20


class GraphRunner:
    """A session for one role; `run(**feeds)` checks the feeds and returns {output name: array}.

    `open_single_row`, when given, opens the session that batch-1 runs use instead (see
    SINGLE_ROW_ROLES); it is opened on the first such run. Safe to call from several threads
    (ONNX Runtime's `run` is).
    """

    def __init__(self, role: str, session: ort.InferenceSession, dims: dict[str, int], bundle_name: str,
                 open_single_row: Callable[[], ort.InferenceSession] | None = None):
        self.role = role
        self.session = session
        self.dims = dims
        self.bundle_name = bundle_name
        self.inputs, self.outputs = CONTRACTS[role]
        self._check_signature("input", session.get_inputs(), self.inputs)
        self._check_signature("output", session.get_outputs(), self.outputs)
        self.output_names = [name for name, _, _ in self.outputs]
        self._open_single_row = open_single_row
        self._single_row: ort.InferenceSession | None = None
        self._lock = threading.Lock()

    def session_for(self, batch: int) -> ort.InferenceSession:
        """The session that runs a batch of `batch` rows."""
        if batch != 1 or self._open_single_row is None:
            return self.session
        with self._lock:
            if self._single_row is None:
                self._single_row = self._open_single_row()
            return self._single_row

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def _expected(self, symbols) -> list:
        return [self.dims.get(s, s) if isinstance(s, str) else s for s in symbols]

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
                raise BundleError(f"{where}: {kind} '{name}' is {node.type}, the format requires {np.dtype(dtype).name}")
            shape = list(node.shape)
            wanted = self._expected(symbols)
            if len(shape) != len(wanted):
                raise BundleError(f"{where}: {kind} '{name}' has rank {len(shape)}, the format requires shape {symbols}")
            if isinstance(shape[0], int):
                raise BundleError(f"{where}: {kind} '{name}' has a fixed batch size {shape[0]}; export it with a dynamic batch axis")
            for axis, (have, want) in enumerate(zip(shape[1:], wanted[1:]), start=1):
                if isinstance(have, int) and isinstance(want, int) and have != want:
                    raise BundleError(
                        f"{where}: {kind} '{name}' axis {axis} is {have}, the manifest implies {want} ({symbols[axis]})"
                    )

    def run(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on checked feeds (names, dtypes and shapes as the contract says)."""
        if sorted(feeds) != sorted(name for name, _, _ in self.inputs):
            raise InputError(f"graph {self.role} takes inputs {[n for n, _, _ in self.inputs]}, got {sorted(feeds)}")
        batch = None
        for name, dtype, symbols in self.inputs:
            array = feeds[name]
            wanted = self._expected(symbols)
            if not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim != len(wanted):
                raise InputError(f"graph {self.role}: input '{name}' must be a {np.dtype(dtype).name} array of shape {list(symbols)}")
            batch = array.shape[0] if batch is None else batch
            if array.shape[0] != batch or any(have != want for have, want in zip(array.shape[1:], wanted[1:])):
                raise InputError(f"graph {self.role}: input '{name}' has shape {list(array.shape)}, expected {[batch, *wanted[1:]]}")
        where = f"bundle '{self.bundle_name}': graph {self.role}"
        try:
            results = self.session_for(batch).run(self.output_names, feeds)
        except Exception as error:  # onnxruntime raises its own untyped errors (Fail, InvalidArgument, ...)
            raise BundleError(f"{where} failed in ONNX Runtime on a batch of {batch}: {_first_line(error)}") from None
        outputs = dict(zip(self.output_names, results))
        for name, dtype, symbols in self.outputs:
            array, wanted = outputs[name], [batch, *self._expected(symbols)[1:]]
            if array.dtype != dtype or list(array.shape) != wanted:
                raise BundleError(f"{where} returned '{name}' as {array.dtype} {list(array.shape)}; the format requires"
                                  f" {np.dtype(dtype).name} {wanted}")
        return outputs

    def probe(self) -> None:
        """Run the graph on typical inputs, a batch of 1 and of 2; BundleError unless it runs, its outputs have
        the contract's shapes and its float outputs are finite (what `latent-onnx info` calls verified)."""
        for batch in (1, 2):
            feeds = {}
            for name, dtype, symbols in self.inputs:
                array = np.zeros([batch, *self._expected(symbols)[1:]], dtype=dtype)
                if name in ("weights", "mask"):  # the first class; the first token (<eos>)
                    array[:, 0] = 1
                elif name == "image":
                    array[:] = 128
                feeds[name] = array
            for name, array in self.run(**feeds).items():
                if array.dtype.kind == "f" and not np.isfinite(array).all():
                    raise BundleError(f"bundle '{self.bundle_name}': graph {self.role} returned non-finite '{name}'"
                                      " for a finite probe input")


def session_options(threads: int | None, allow_spinning: bool = False, prepack: bool = True) -> ort.SessionOptions:
    """The ONNX Runtime session options of every graph: all optimisations, sequential, errors-only logging
    (`prepack=False` only for the single-row sessions, see SINGLE_ROW_ROLES)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    # Worker threads sleep between runs instead of spinning: the sampler's NumPy work runs between
    # graph runs, and spinning workers take its core (bench: 1.3-2.2x faster steps on 2 busy cores).
    # allow_spinning=True (ONNX Runtime's own default) exists for the benchmark's comparison.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class SessionFactory:
    """Creates every session of a pipeline with one device choice and one thread setting."""

    def __init__(self, device: str = "auto", threads: int | None = None):
        if device not in DEVICES:
            raise InputError(f"device must be one of {', '.join(DEVICES)}, not '{device}'")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 1024):
            raise InputError(f"threads must be an integer from 1 to 1024, not {threads!r}")
        available = ort.get_available_providers()
        if device == "cuda" and _CUDA not in available:
            raise DeviceError(
                f"CUDA was asked for but this onnxruntime has no CUDA provider (available: {', '.join(available)});"
                " install the gpu extra (onnxruntime-gpu) or use --device cpu"
            )
        self.device = device
        self.threads = threads
        self._providers = [_CUDA, _CPU] if device in ("auto", "cuda") and _CUDA in available else [_CPU]
        self._lock = threading.Lock()

    def create(self, bundle: Bundle, role: str) -> GraphRunner:
        """A checked runner for one graph of the bundle, loaded from its verified bytes."""
        model = bundle.graph_bytes(role)
        with self._lock:  # one provider decision at a time (auto falls back to CPU once)
            session = self._open(bundle, role, model, self._providers, session_options(self.threads))
            if self._providers[0] == _CUDA and session.get_providers()[0] != _CUDA:
                if self.device == "cuda":
                    raise DeviceError(
                        f"CUDA was asked for but its provider failed to start (session providers:"
                        f" {', '.join(session.get_providers())}); check the CUDA/cuDNN install or use --device cpu"
                    )
                self._providers = [_CPU]
        open_single_row = None
        if role in SINGLE_ROW_ROLES and len(model) >= SINGLE_ROW_MIN_BYTES and session.get_providers()[0] == _CPU:
            options = session_options(self.threads, prepack=False)  # the bytes are read (and verified) again when opened
            open_single_row = lambda: self._open(bundle, role, bundle.graph_bytes(role), [_CPU], options)  # noqa: E731
        return GraphRunner(role, session, bundle_dims(bundle), bundle.name, open_single_row)

    @staticmethod
    def _open(bundle: Bundle, role: str, model: bytes, providers: list[str], options: ort.SessionOptions) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(model, sess_options=options, providers=providers)
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise BundleError(f"bundle '{bundle.name}': ONNX Runtime cannot load graph {role}: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
