"""latent-onnx: conditional image generation by Langevin sampling of a generator's latent code on ONNX Runtime.

The runtime needs NumPy and ONNX Runtime only (never torch). Typical use:

    from latent_onnx import Pipeline
    pipe = Pipeline.from_bundle()            # the default shipped bundle
    result = pipe.generate(classes="sneaker", n=4, seed=0)
    result.images[0].save("sneaker.png")
"""

import importlib

from .errors import BundleError, DeviceError, InputError, LatentOnnxError, OutputError

# The one place the version is kept (pyproject.toml reads it from here). A literal rather than the installed
# metadata: importing importlib.metadata costs a start about 13 ms.
__version__ = "0.2.0"

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
