"""What every image file says about itself: the JSON generation parameters and the command that
regenerates it, made from the options and sampler settings a run actually used.

The CLI, the dataset writer and the server all write PNGs as `images.png_bytes(image, png_text(...))`,
so the same settings give byte-identical files whichever way they were made.
"""

from __future__ import annotations

import json
import shlex

from . import __version__
from .bundle import Bundle, shipped_models_dir
from .images import PNG_TEXT_KEY


def bundle_ref(bundle: Bundle) -> str:
    """How a command names this bundle: its name when it is a shipped bundle, else its absolute path."""
    if bundle.root.parent == shipped_models_dir().resolve():
        return bundle.name
    return str(bundle.root)


def reproduce_command(
    bundle: Bundle,
    options,
    config,
    index: int,
    init_image: str | None = None,
    upscale: int = 1,
    resample: str = "nearest",
) -> str:
    """The `latent-onnx generate` command that remakes sample `index` of a run of (resolved) `options`
    and sampler `config` alone."""
    words = ["latent-onnx", "generate", "--bundle", bundle_ref(bundle)]
    words += ["--class", options.classes] if options.classes is not None else ["--caption", options.caption]
    if options.then is not None:
        words += ["--then", options.then, "--switch-at", str(options.switch_at)]
    words += ["--seed", str(options.seed), "--start-index", str(index), "-n", "1", "--path", options.path]
    if options.preset is not None:
        words += ["--preset", options.preset]
    words += config.cli_words()
    if init_image is not None:
        words += ["--init-image", init_image]
    words += ["--upscale", str(upscale), "--resample", resample]
    return shlex.join(words)


def parameters(
    bundle: Bundle,
    options,
    config,
    index: int,
    *,
    init_image_sha256: str | None = None,
    upscale: int = 1,
    resample: str = "nearest",
) -> dict:
    """The generation parameters of sample `index` of a run of (resolved) `options` and `config`: everything
    that decides its pixels, known before it runs (the file's JSON chunk is this plus its logp)."""
    return {
        "software": f"latent-onnx {__version__}",
        "bundle": bundle.name,
        "bundle_manifest_sha256": bundle.manifest_sha256,
        "classes": options.classes,
        "caption": options.caption,
        "seed": options.seed,
        "index": index,
        "then": options.then,
        "switch_at": options.switch_at,
        "path": options.path,
        "preset": options.preset,
        "sampler": config.to_dict(),
        "init_image_sha256": init_image_sha256,
        "upscale": upscale,
        "resample": resample,
    }


def png_text(
    bundle: Bundle,
    result,
    row: int,
    *,
    init_image: str | None = None,
    init_image_sha256: str | None = None,
    upscale: int = 1,
    resample: str = "nearest",
) -> dict[str, str]:
    """tEXt chunks of sample `row` of `result`: the JSON parameters with logp, Software, and Comment (the command)."""
    index = result.indices[row]
    scaling = {"upscale": upscale, "resample": resample}
    chunk = {
        **parameters(bundle, result.options, result.config, index, init_image_sha256=init_image_sha256, **scaling),
        "logp": float(result.logp[row]),
    }
    return {
        PNG_TEXT_KEY: json.dumps(chunk, sort_keys=True),
        "Software": f"latent-onnx {__version__}",
        "Comment": reproduce_command(bundle, result.options, result.config, index, init_image, **scaling),
    }
