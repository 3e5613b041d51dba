"""Check an exported graph against its contract and against PyTorch on random inputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export_tools import ExportError, first_line
from export_tools.specs import GraphDims, GraphSpec, LatentSampler

_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)", "uint8": "tensor(uint8)"}

# Maps inputs {name: array} to the PyTorch outputs in the spec's output order, and for gradient roles
# the same outputs computed in float64 (None otherwise).
Reference = Callable[[dict[str, np.ndarray]], tuple[list[np.ndarray], list[np.ndarray] | None]]


def open_session(path: str | Path) -> ort.InferenceSession:
    """CPU ONNX Runtime session of the graph at `path`, loaded from its bytes (no external data)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(Path(path).read_bytes(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"{Path(path).name} cannot be opened by ONNX Runtime: {first_line(exc)}") from exc


def check_signature(session: ort.InferenceSession, spec: GraphSpec, dims: GraphDims) -> None:
    """Names, dtypes and static dims of the session's inputs and outputs match the spec; batch is dynamic."""
    for kind, actual, declared in (
        ("input", session.get_inputs(), spec.inputs),
        ("output", session.get_outputs(), spec.outputs),
    ):
        names = [a.name for a in actual]
        if names != [t.name for t in declared]:
            raise ExportError(f"{spec.file_name}: {kind}s are {names}, the contract says {[t.name for t in declared]}")
        for arg, tensor in zip(actual, declared):
            if arg.type != _ORT_TYPES[tensor.dtype]:
                raise ExportError(
                    f"{spec.file_name}: {kind} '{arg.name}' is {arg.type}, the contract says {tensor.dtype}"
                )
            expected = tensor.concrete_shape(dims, batch=-1)
            if len(arg.shape) != len(expected):
                raise ExportError(
                    f"{spec.file_name}: {kind} '{arg.name}' has shape {arg.shape}, the contract says {tensor.shape}"
                )
            for got, want in zip(arg.shape, expected):
                if (want == -1 and isinstance(got, int)) or (want != -1 and got != want):
                    raise ExportError(
                        f"{spec.file_name}: {kind} '{arg.name}' has shape {arg.shape}, the contract says {tensor.shape}"
                    )


def compare_output(
    spec: GraphSpec, name: str, got: np.ndarray, want: np.ndarray, batch: int, exact: np.ndarray | None = None
) -> float:
    """Largest |got - want| (want: PyTorch float32, exact: PyTorch float64 or None); raises ExportError
    when it exceeds the spec's tolerance."""
    where = f"{spec.file_name} failed validation at batch {batch}: output '{name}'"
    if got.shape != want.shape:
        raise ExportError(f"{where} has shape {got.shape}, PyTorch gives {want.shape}")
    if not (np.isfinite(want).all() and np.isfinite(got).all()):
        raise ExportError(
            f"{where} is not finite (NaN or inf) in ONNX Runtime or PyTorch: check the network on random inputs"
        )
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    largest = float(diff.max(initial=0.0))
    allowed = spec.atol + spec.rtol * float(np.abs(want).max(initial=0.0))
    if exact is not None:
        allowed += spec.noise_factor * float(np.abs(want.astype(np.float64) - exact).max(initial=0.0))
    if largest > allowed:
        raise ExportError(f"{where} differs from PyTorch by {largest:.3g} (allowed {allowed:.3g})")
    changed = float((diff > 0).mean()) if diff.size else 0.0
    if changed > spec.max_changed_fraction:
        raise ExportError(
            f"{where} differs from PyTorch in {changed:.2%} of its elements (allowed {spec.max_changed_fraction:.2%})"
        )
    return largest


def validate_graph(
    path: str | Path,
    spec: GraphSpec,
    dims: GraphDims,
    reference: Reference,
    *,
    batch_sizes: tuple[int, ...] = (1, 3),
    seed: int = 0,
    latent_sampler: LatentSampler | None = None,
) -> dict[str, float]:
    """Run the graph and `reference` (PyTorch) on random inputs at each batch size.

    Returns output name -> largest absolute difference; raises ExportError naming the graph, the
    output and the difference when the signature is wrong or an output is out of tolerance.
    """
    session = open_session(path)
    check_signature(session, spec, dims)
    rng = np.random.default_rng(seed)
    largest = {t.name: 0.0 for t in spec.outputs}
    for batch in batch_sizes:
        inputs = spec.example_inputs(dims, batch, rng, latent_sampler)
        got = session.run([t.name for t in spec.outputs], inputs)
        want, exact = reference(inputs)
        for index, (tensor, g, w) in enumerate(zip(spec.outputs, got, want)):
            if g.shape != tensor.concrete_shape(dims, batch):
                raise ExportError(
                    f"{spec.file_name}: output '{tensor.name}' has shape {g.shape} at batch {batch}, "
                    f"the contract says {tensor.concrete_shape(dims, batch)}"
                )
            diff = compare_output(spec, tensor.name, g, w, batch, None if exact is None else exact[index])
            largest[tensor.name] = max(largest[tensor.name], diff)
    return largest
