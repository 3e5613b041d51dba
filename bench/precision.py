"""Does int8 change the samples? The default bundle sampled with float32 and with int8 class_grad weights.

The same requests, seeds and sampler run through the runtime twice: once as shipped, once as an int8
bundle (`int8_bundle`: the class_grad graph's weights quantised by export_tools.quantize); the fashion recipe's independent evaluator
(export_tools.recipes.evaluator) judges both sets of images.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from latent_onnx import Bundle, Pipeline


def int8_bundle(bundle: Bundle, quantise: Callable[[onnx.ModelProto], onnx.ModelProto], folder: Path) -> Path:
    """A copy of `bundle` in `folder` (replaced if there) whose class_grad weights are converted by `quantise`
    (ModelProto -> ModelProto), its manifest's sha256 updated: an int8 bundle as `imagenet convert` writes one,
    which `Pipeline.from_bundle` opens as users do (its session choice included). Other files are hard links
    where the file system allows, else copies."""
    out = Path(folder) / f"{bundle.name}-int8"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    class_grad = bundle.graphs["class_grad"].file
    for source in bundle.root.iterdir():
        if source.is_file() and source.name not in ("manifest.json", class_grad):
            try:
                os.link(source, out / source.name)
            except OSError:
                shutil.copyfile(source, out / source.name)
    data = quantise(onnx.load_from_string(bundle.graph_bytes("class_grad"))).SerializeToString()
    (out / class_grad).write_bytes(data)
    manifest = json.loads(json.dumps(bundle.manifest))
    manifest["graphs"]["class_grad"]["sha256"] = hashlib.sha256(data).hexdigest()
    manifest.setdefault("provenance", {})["precision"] = {
        "class_grad": {"weights": "int8", "written_by": "bench.precision"}
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def int8_sample_quality(
    bundle: Path, evaluator: Path, quantise, per_class: int, threads: int | None, seed: int = 0
) -> dict:
    """Evaluator class agreement of float32 and int8 samples of every class (same seeds), and how often they agree."""
    from export_tools.recipes.evaluator import Judge

    judge = Judge.load(evaluator)
    reference = Pipeline.from_bundle(bundle, device="cpu", threads=threads)
    pixels = {"float32": [], "int8": []}
    with tempfile.TemporaryDirectory() as folder:
        quantised = Pipeline.from_bundle(
            int8_bundle(reference.bundle, quantise, Path(folder)), device="cpu", threads=threads
        )
        for name, pipe in (("float32", reference), ("int8", quantised)):
            for label in range(len(reference.bundle.classes)):
                pixels[name].append(
                    pipe.generate(classes=str(label), n=per_class, seed=seed, batch_size=per_class).pixels
                )
    wanted = np.repeat(np.arange(len(reference.bundle.classes)), per_class)
    seen = {name: judge.judge(np.concatenate(images)).classes for name, images in pixels.items()}
    difference = np.abs(
        np.concatenate(pixels["float32"]).astype(np.int16) - np.concatenate(pixels["int8"]).astype(np.int16)
    )
    return {
        "samples": int(len(wanted)),
        "class_agreement_float32": float(np.mean(seen["float32"] == wanted)),
        "class_agreement_int8": float(np.mean(seen["int8"] == wanted)),
        "same_judged_class": float(np.mean(seen["float32"] == seen["int8"])),
        "mean_abs_pixel_difference": float(difference.mean()),
    }
