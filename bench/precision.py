"""Does int8 change the samples? The default bundle sampled with float32 and with int8 class_grad weights.

The same requests, seeds and sampler run through the runtime twice: once as shipped, once with the
class_grad graph's weights quantised (export_tools.quantize); the fashion recipe's independent evaluator
(export_tools.recipes.evaluator) judges both sets of images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from bench.variants import open_session
from latent_onnx import Pipeline
from latent_onnx.sessions import GraphRunner, SessionFactory, bundle_dims


class QuantisedPipeline(Pipeline):
    """A Pipeline whose class_grad graph runs with its weights converted by `quantise` (ModelProto -> ModelProto)."""

    def __init__(self, bundle, factory: SessionFactory, quantise: Callable[[onnx.ModelProto], onnx.ModelProto]):
        self.quantise = quantise
        self._quantised: GraphRunner | None = None
        super().__init__(bundle, factory)

    def runner(self, role: str) -> GraphRunner:
        if role != "class_grad":
            return super().runner(role)
        if self._quantised is None:
            model = self.quantise(onnx.load_from_string(self.bundle.graph_bytes(role)))
            session = open_session(model, self.factory.threads)  # the runtime's session options, on the CPU
            self._quantised = GraphRunner(role, session, bundle_dims(self.bundle), self.bundle.name)
        return self._quantised


def int8_sample_quality(bundle: Path, evaluator: Path, quantise, per_class: int, threads: int | None,
                        seed: int = 0) -> dict:
    """Evaluator class agreement of float32 and int8 samples of every class (same seeds), and how often they agree."""
    from export_tools.recipes.evaluator import Judge

    judge = Judge.load(evaluator)
    reference = Pipeline.from_bundle(bundle, device="cpu", threads=threads)
    quantised = QuantisedPipeline(reference.bundle, SessionFactory("cpu", threads), quantise)
    pixels = {"float32": [], "int8": []}
    for name, pipe in (("float32", reference), ("int8", quantised)):
        for label in range(len(reference.bundle.classes)):
            pixels[name].append(pipe.generate(classes=str(label), n=per_class, seed=seed, batch_size=per_class).pixels)
    wanted = np.repeat(np.arange(len(reference.bundle.classes)), per_class)
    seen = {name: judge.judge(np.concatenate(images)).classes for name, images in pixels.items()}
    difference = np.abs(np.concatenate(pixels["float32"]).astype(np.int16) - np.concatenate(pixels["int8"]).astype(np.int16))
    return {
        "samples": int(len(wanted)),
        "class_agreement_float32": float(np.mean(seen["float32"] == wanted)),
        "class_agreement_int8": float(np.mean(seen["int8"] == wanted)),
        "same_judged_class": float(np.mean(seen["float32"] == seen["int8"])),
        "mean_abs_pixel_difference": float(difference.mean()),
    }
