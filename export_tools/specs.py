"""Every graph role's export spec: the runtime's contract (latent_onnx.contracts: tensor names, dtypes, symbolic
dims) plus what export needs (tolerances, opset, example inputs).

Shapes use the contract's symbols: "B" (the dynamic axis), "D" latent dim, "K" classes, "T" max tokens,
"H" / "W" image size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from export_tools import ExportError
from latent_onnx.contracts import BATCH, CONTRACTS

OPSET = 18  # ONNX opset of every exported graph (onnxruntime >= 1.14 runs it)
IR_VERSION = 9  # ONNX IR version written (the exporter's default 10 needs onnxruntime >= 1.18; pyproject allows 1.17)

# Draws example latent codes: (n, rng) -> z [n, D] float32.
LatentSampler = Callable[[int, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class GraphDims:
    """Sizes that resolve the symbolic dims of a bundle's graphs."""

    latent_dim: int  # D
    num_classes: int | None = None  # K (classifier, class_grad, composite_class_grad)
    max_tokens: int | None = None  # T (caption_grad)
    vocab_size: int | None = None  # token ids are < vocab_size (caption_grad example inputs)
    image_hw: tuple[int, int] | None = None  # (H, W) (generator, encoder)

    def resolve(self, name: str) -> int:
        """Size of the symbolic dim `name` ("D", "K", "T", "H", "W")."""
        sizes = {
            "D": self.latent_dim,
            "K": self.num_classes,
            "T": self.max_tokens,
            "H": self.image_hw[0] if self.image_hw else None,
            "W": self.image_hw[1] if self.image_hw else None,
        }
        if sizes.get(name) is None:
            raise ExportError(f"graph dimension {name} is unknown: give it in GraphDims / BundleSpec")
        return int(sizes[name])


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output."""

    name: str  # exact ONNX name
    dtype: str  # numpy dtype name: "float32", "int64" or "uint8"
    shape: tuple[str | int, ...]  # BATCH ("B") is the dynamic axis; other strings are GraphDims names; ints are fixed
    sample: str = ""  # inputs only, how examples are drawn: "latent", "weights", "tokens", "mask" or "pixels"

    def concrete_shape(self, dims: GraphDims, batch: int) -> tuple[int, ...]:
        """Shape with BATCH set to `batch` and every other symbolic dim resolved."""
        return tuple(batch if d == BATCH else dims.resolve(d) if isinstance(d, str) else d for d in self.shape)

    def example(
        self, dims: GraphDims, batch: int, rng: np.random.Generator, latent_sampler: LatentSampler | None
    ) -> np.ndarray:
        """Random example input of this tensor's shape and dtype."""
        shape = self.concrete_shape(dims, batch)
        if self.sample == "latent":
            z = latent_sampler(batch, rng) if latent_sampler else rng.standard_normal(shape)
            return np.asarray(z, dtype=np.float32).reshape(shape)
        if self.sample == "weights":
            return rng.standard_normal(shape).astype(np.float32)
        if self.sample == "tokens":
            if dims.vocab_size is None:
                raise ExportError("caption_grad needs the vocabulary size (GraphDims.vocab_size)")
            return rng.integers(0, dims.vocab_size, size=shape, dtype=np.int64)
        if self.sample == "mask":
            lengths = rng.integers(1, shape[1] + 1, size=(shape[0], 1))
            return (np.arange(shape[1])[None, :] < lengths).astype(np.float32)
        if self.sample == "pixels":
            return rng.integers(0, 256, size=shape, dtype=np.uint8)
        raise ValueError(f"tensor {self.name} has no example rule (sample={self.sample!r})")


@dataclass(frozen=True)
class GraphSpec:
    """Contract of one graph role and how it is checked against PyTorch."""

    role: str  # manifest key and file stem
    inputs: tuple[TensorSpec, ...]  # in the order the exported module takes them
    outputs: tuple[TensorSpec, ...]  # in the order the exported module returns them
    gradient: bool  # True: outputs are (logp, grad) and grad comes from PyTorch autograd
    atol: float  # validation passes when max|onnx - torch| <= atol + rtol * max|torch| + noise_factor * noise,
    rtol: float  # per output, where noise = max|torch float32 - torch float64| (gradient roles only)
    noise_factor: float = 0.0  # > 0 for gradient roles: gradients summed with cancellation carry float32 noise
    max_changed_fraction: float = 1.0  # at most this fraction of output elements may differ at all
    opset: int = OPSET

    @property
    def file_name(self) -> str:
        return f"{self.role}.onnx"

    def example_inputs(
        self, dims: GraphDims, batch: int, rng: np.random.Generator, latent_sampler: LatentSampler | None = None
    ) -> dict[str, np.ndarray]:
        """Random inputs {name: array} at batch size `batch`."""
        return {t.name: t.example(dims, batch, rng, latent_sampler) for t in self.inputs}


# how examples of each input are drawn (TensorSpec.sample)
_SAMPLES = {"z": "latent", "weights": "weights", "tokens": "tokens", "mask": "mask", "image": "pixels"}
# role -> GraphSpec fields beyond the contract: validation tolerances
_TOLERANCES = {
    # rounding may flip a few pixels by one level
    "generator": dict(gradient=False, atol=1.0, rtol=0.0, max_changed_fraction=1e-3),
    "classifier": dict(gradient=False, atol=1e-5, rtol=1e-4),
    "class_grad": dict(gradient=True, atol=0.0, rtol=1e-4, noise_factor=10.0),
    "caption_grad": dict(gradient=True, atol=0.0, rtol=1e-3, noise_factor=10.0),
    "encoder": dict(gradient=False, atol=1e-5, rtol=1e-3),
    "composite_class_grad": dict(gradient=True, atol=0.0, rtol=1e-3, noise_factor=10.0),
}

SPECS: dict[str, GraphSpec] = {
    role: GraphSpec(
        role,
        tuple(TensorSpec(t.name, t.dtype, t.dims, _SAMPLES[t.name]) for t in contract.inputs),
        tuple(TensorSpec(t.name, t.dtype, t.dims) for t in contract.outputs),
        **_TOLERANCES[role],
    )
    for role, contract in CONTRACTS.items()
}
