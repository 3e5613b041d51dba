"""latent-onnx: conditional image generation by Langevin sampling of a generator's latent code on ONNX Runtime.

The runtime needs NumPy and ONNX Runtime only (never torch). Typical use:

    from latent_onnx import Pipeline
    pipe = Pipeline.from_bundle()            # the default shipped bundle
    result = pipe.generate(classes="sneaker", n=4, seed=0)
    result.images[0].save("sneaker.png")
"""

import importlib
from importlib import metadata

from .errors import BundleError, DeviceError, InputError, LatentOnnxError, OutputError

try:
    __version__ = metadata.version("latent-onnx")
except metadata.PackageNotFoundError:  # running from a source checkout
    __version__ = "0+source"

# Loaded on first use (PEP 562), so that `import latent_onnx` and the CLI's entry point work without
# ONNX Runtime installed and the CLI can say what to install in one line.
_LAZY = {
    "Bundle": ".bundle",
    "load_bundle": ".bundle",
    "GenerateOptions": ".pipeline",
    "GenerationResult": ".pipeline",
    "Pipeline": ".pipeline",
    "SamplerConfig": ".sampler",
    "SGLDSampler": ".sampler",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'latent_onnx' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)


__all__ = [
    "Bundle",
    "BundleError",
    "DeviceError",
    "GenerateOptions",
    "GenerationResult",
    "InputError",
    "LatentOnnxError",
    "OutputError",
    "Pipeline",
    "SGLDSampler",
    "SamplerConfig",
    "load_bundle",
]
