"""latent-onnx: conditional image generation by Langevin sampling of a generator's latent code on ONNX Runtime.

The runtime needs NumPy and ONNX Runtime only (never torch). Typical use:

    from latent_onnx import Pipeline
    pipe = Pipeline.from_bundle()            # the default shipped bundle
    result = pipe.generate(classes="sneaker", n=4, seed=0)
    result.images[0].save("sneaker.png")
"""

from importlib import metadata

from .bundle import Bundle, load_bundle
from .errors import BundleError, DeviceError, InputError, LatentOnnxError, OutputError
from .pipeline import GenerateOptions, GenerationResult, Pipeline
from .sampler import SamplerConfig, SGLDSampler

try:
    __version__ = metadata.version("latent-onnx")
except metadata.PackageNotFoundError:  # running from a source checkout
    __version__ = "0+source"

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
