"""Offline tools (PyTorch): export networks to validated ONNX graphs and write latent-onnx bundles.

Public entry points:
- `export_tools.bundle_writer.write_bundle(out_dir, BundleSpec(...))`: export, validate, write a bundle.
- `export_tools.export.export_<role>(...)`: export and validate one graph.
- `export_tools.quantize.quantize_int8(...)`: int8 weights for a gradient graph, checked against float32.
- `export_tools.conventions.PixelConvention`, `export_tools.priors.GaussianPrior` / `GaussianMixturePrior`.
- CLI: `latent-onnx-export` / `python -m export_tools`.

Importing this package does not import torch, so a missing torch is reported by `require_torch`.
"""

from __future__ import annotations

import importlib.util

from latent_onnx import __version__
from latent_onnx.errors import LatentOnnxError
from latent_onnx.images import write_atomically  # the runtime's, for the recipes' checkpoints and reports

EXPORTER = f"latent-onnx-export {__version__}"  # recorded in every bundle's provenance ("exporter")
TORCH_INSTALL_HINT = (
    "install the CPU build of torch with "
    "`pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu`, "
    "then `pip install 'latent-onnx[export]'`"
)


class ExportError(LatentOnnxError):
    """Export, validation or bundle writing failed; the message says what to do."""

    exit_code = 6


def first_line(error: BaseException) -> str:
    """The first line of an exception's message ("" when it has none), for one-line ExportError messages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def require_torch() -> None:
    """Raise ExportError with install instructions when torch, onnx or onnxscript is missing."""
    missing = [name for name in ("torch", "onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"export_tools needs {', '.join(missing)}: {TORCH_INSTALL_HINT}")


__all__ = [
    "EXPORTER",
    "ExportError",
    "TORCH_INSTALL_HINT",
    "__version__",
    "first_line",
    "require_torch",
    "write_atomically",
]
