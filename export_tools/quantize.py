"""int8 weights for a gradient graph (class_grad): same inputs, outputs and contract, faster steps on CPUs
(ImageNet-size MLP, batch 1: 2.8x on an Intel Xeon with AMX, 3.6x on an AMD EPYC without; docs/export.md).

ONNX Runtime's dynamic quantisation: every weight product becomes an integer product with int8
weights per output channel (7 of the 8 bits used: REDUCE_RANGE), its activations quantised at run
time (VNNI/AMX integer units). The activations are quantised per tensor, so each product first divides every row (sample) by its own
largest |value| and multiplies the result back (`rewrites.normalise_rows`): a chain whose gradient is
small next to the rest of its batch keeps its own resolution instead of rounding to zero.
The int8 graph is then checked against the float32 graph it came from on random contract inputs:
the typical sample's gradient must keep its direction (median cosine), no sample may lose it (min
cosine), and logp must stay close.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from export_tools import ExportError, first_line
from export_tools.rewrites import matmul_weights_model, normalise_rows
from export_tools.specs import SPECS, GraphDims, LatentSampler
from export_tools.validate import check_signature, open_session

MIN_MEDIAN_GRAD_COSINE = 0.99  # the typical sample's int8 gradient points within ~8 degrees of the float32 one
LOST_COSINE = 0.9  # every sample's int8 gradient must point within ~25 degrees of the float32 one
MAX_LOGP_RELATIVE_ERROR = 0.1  # max |logp int8 - logp float32| / max(max |logp float32|, 1) over a batch
# 7-bit weights: x86 CPUs without VNNI (AVX2 only) multiply uint8 activations by int8 weights in pairs summed
# into int16 (vpmaddubsw), which saturates with 8-bit weights. A bundle is converted on one machine and run
# on others, so it must be exact on all of them. Measured on the ImageNet-scale class_grad (random weights,
# batch 8, AMD EPYC AVX2 only): median gradient cosine 0.987 with 8 bits (under the gate), 0.996 with 7.
REDUCE_RANGE = True
_TINY = float(np.finfo(np.float64).tiny)
VALIDATION_BATCHES = (1, 8)  # samples of a batch must not disturb each other's quantisation: check two sizes


def int8_dynamic_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with int8 weights per output channel and activations quantised at run time with a scale
    per row (ONNX Runtime dynamic quantisation of row-normalised products); inputs, outputs, opset and
    IR version are kept."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder, _quiet_root_logger():
        target = Path(folder) / "int8.onnx"
        quantize_dynamic(
            normalise_rows(matmul_weights_model(model)),
            target,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=REDUCE_RANGE,
        )
        quantised = onnx.load(target)
    quantised.ir_version = model.ir_version
    return quantised


def compare_int8(
    float_path: str | Path,
    int8_path: str | Path,
    role: str,
    dims: GraphDims,
    *,
    latent_sampler: LatentSampler | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Run both graphs on the same random contract inputs at each of VALIDATION_BATCHES, and again with
    one-hot class weights (what `--class` feeds).

    Returns, over every sample: "grad_cosine_median" and "grad_cosine_min" of the per-sample cosine of
    the int8 and float32 gradients (both zero counts as 1), "grad_lost_fraction" (cosine < LOST_COSINE),
    "grad_relative_error" (largest ||difference|| / ||float32|| of a batch) and "logp_relative_error"
    (largest max |difference| / max(max |logp float32|, 1) of a batch).
    Raises ExportError naming the graph and the figures when the median cosine, the min cosine or the
    logp error is worse than MIN_MEDIAN_GRAD_COSINE / LOST_COSINE / MAX_LOGP_RELATIVE_ERROR.
    """
    spec = SPECS[role]
    reference, quantised = open_session(float_path), open_session(int8_path)
    check_signature(quantised, spec, dims)
    rng = np.random.default_rng(seed)
    cosines, grad_errors, logp_errors = [], [], []
    for batch in VALIDATION_BATCHES:
        random_inputs = spec.example_inputs(dims, batch, rng, latent_sampler)
        for inputs in (random_inputs, _with_one_hot_weights(random_inputs, rng)):
            logp32, grad32 = (a.astype(np.float64) for a in reference.run(["logp", "grad"], inputs))
            logp8, grad8 = (a.astype(np.float64) for a in quantised.run(["logp", "grad"], inputs))
            if not (np.isfinite(logp8).all() and np.isfinite(grad8).all()):
                raise ExportError(f"{spec.file_name} (int8) gives NaN or inf at batch {batch}: keep float32 precision")
            norm32, norm8 = np.linalg.norm(grad32, axis=1), np.linalg.norm(grad8, axis=1)
            both_zero = (norm32 == 0) & (norm8 == 0)
            cosines += list(
                np.where(both_zero, 1.0, np.sum(grad32 * grad8, axis=1) / np.maximum(norm32 * norm8, _TINY))
            )
            grad_errors.append(np.linalg.norm(grad8 - grad32) / max(np.linalg.norm(grad32), _TINY))
            logp_errors.append(np.abs(logp8 - logp32).max() / max(np.abs(logp32).max(), 1.0))  # near 0: nats
    cosines = np.array(cosines)
    figures = {
        "grad_cosine_median": float(np.median(cosines)),
        "grad_cosine_min": float(cosines.min()),
        "grad_lost_fraction": float(np.mean(cosines < LOST_COSINE)),
        "grad_relative_error": float(max(grad_errors)),
        "logp_relative_error": float(max(logp_errors)),
    }
    if (
        figures["grad_cosine_median"] < MIN_MEDIAN_GRAD_COSINE
        or figures["grad_cosine_min"] < LOST_COSINE
        or figures["logp_relative_error"] > MAX_LOGP_RELATIVE_ERROR
    ):
        raise ExportError(
            f"{spec.file_name} (int8) failed validation against float32 at batches {VALIDATION_BATCHES}: "
            f"median gradient cosine {figures['grad_cosine_median']:.4f} (needs >= {MIN_MEDIAN_GRAD_COSINE}), "
            f"min gradient cosine {figures['grad_cosine_min']:.3f} (needs >= {LOST_COSINE}), "
            f"logp relative error {figures['logp_relative_error']:.3g} (allowed {MAX_LOGP_RELATIVE_ERROR}), "
            f"gradient relative error {figures['grad_relative_error']:.3g}: keep float32 precision for this network"
        )
    return figures


def _with_one_hot_weights(inputs: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`inputs` with "weights" [B, K] (if any) replaced by one random class per row."""
    if "weights" not in inputs:
        return inputs
    batch, classes = inputs["weights"].shape
    return {**inputs, "weights": np.eye(classes, dtype=np.float32)[rng.integers(0, classes, batch)]}


def quantize_int8(
    float_path: str | Path,
    int8_path: str | Path,
    role: str,
    dims: GraphDims,
    *,
    latent_sampler: LatentSampler | None = None,
) -> dict[str, float]:
    """Write the int8 version of the gradient graph at `float_path` to `int8_path` (may be the same file)
    once it passes compare_int8; returns compare_int8's figures. Nothing is written on failure."""
    if role not in SPECS or not SPECS[role].gradient:
        raise ExportError(f"int8 quantisation is for gradient graphs, not {role!r}")
    float_path, int8_path = Path(float_path), Path(int8_path)
    try:
        quantised = int8_dynamic_model(onnx.load(float_path))
    except Exception as exc:
        raise ExportError(f"{float_path.name} cannot be quantised to int8: {first_line(exc)}") from exc
    staging = int8_path.with_name(f".{int8_path.name}.int8.partial")
    try:
        onnx.save(quantised, staging)
        figures = compare_int8(float_path, staging, role, dims, latent_sampler=latent_sampler)
        os.replace(staging, int8_path)
    finally:
        staging.unlink(missing_ok=True)
    return figures


@contextlib.contextmanager
def _quiet_root_logger():
    """The quantiser warns about pre-processing on the root logger: hold it to errors while it runs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
