"""The ImageNet-scale benchmark bundle: DeePSiM fc6 and CaffeNet with random weights of the real shapes.

Timing does not depend on the weights, so none are needed: the networks come from
`export_tools.nets` with PyTorch's default initialisation under a fixed seed, and the bundle is
written once with `export_tools.bundle_writer.write_bundle` (every graph validated against
PyTorch) into a cache folder, then reused. The same seed rebuilds the same PyTorch modules for
the eager baseline.

Graphs: generator (DeePSiM, 256 x 256), class_grad (CaffeNet relu/fc7/relu/fc8 on the fc6 code:
the latent path), composite_class_grad (CaffeNet on DeePSiM's image: the composite path).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SEED = 0  # torch.manual_seed for the random weights
BUNDLE_NAME = "bench-imagenet-random"


@dataclass
class ImageNetNets:
    """The random-weight PyTorch networks the bundle is exported from."""

    generator: object  # DeePSiMGenerator: z [B, D] -> x [B, 3, 256, 256]
    head: object  # CaffeNetHead: z [B, D] -> logits [B, 1000]
    classifier: object  # CaffeNetClassifier: x [B, 3, 256, 256] -> logits [B, 1000] (crops to 227 inside)


def build_nets(width: int = 1) -> ImageNetNets:
    """The networks at `width` (1: the published shapes; 16: a miniature for tests), seeded weights, eval mode."""
    import torch

    from export_tools.nets.caffenet import CaffeNetClassifier, CaffeNetEncoder, CaffeNetHead
    from export_tools.nets.deepsim import DeePSiMGenerator

    torch.manual_seed(SEED)
    generator, encoder, head = DeePSiMGenerator(width), CaffeNetEncoder(width), CaffeNetHead(width)
    return ImageNetNets(generator.eval(), head.eval(), CaffeNetClassifier(encoder, head).eval())


def bundle_dir(cache: Path, width: int) -> Path:
    return Path(cache) / f"{BUNDLE_NAME}-w{width}"


def bundle_spec(width: int = 1):
    """The BundleSpec of the benchmark bundle at `width` (export_tools.bundle_writer.BundleSpec)."""
    from export_tools.bundle_writer import BundleSpec
    from export_tools.convert.imagenet_bundle import PAPER_PRESET, PPGN_CLIP, PPGN_SAMPLER
    from export_tools.convert.labels import load_class_names
    from export_tools.nets.deepsim import DEEPSIM_CONVENTION, IMAGE_SIZE
    from export_tools.priors import GaussianPrior

    nets = build_nets(width)
    return BundleSpec(
        name=BUNDLE_NAME,
        description=f"benchmark only: DeePSiM fc6 + CaffeNet shapes (width 1/{width}), random weights",
        license="none (random weights)",
        latent_dim=nets.generator.code_dim,
        image_hw=(IMAGE_SIZE, IMAGE_SIZE),
        generator=nets.generator,
        generator_convention=DEEPSIM_CONVENTION,
        prior=GaussianPrior(0.0, 1.0),
        clip=PPGN_CLIP,
        classes=load_class_names(None, nets.head.fc8.out_features),
        head=nets.head,
        image_classifier=nets.classifier,
        sampler=dict(PPGN_SAMPLER),
        presets={"paper": dict(PAPER_PRESET)},
        provenance={"recipe": "bench.imagenet", "seed": SEED, "width": width},
    )


def ensure_bundle(cache: Path, width: int = 1, say: Callable[[str], None] = print, refresh: bool = False) -> Path:
    """The cached bundle for `width`, exported (and validated) first when it is not there yet, was written by
    another version of the exporter (the manifest's provenance.exporter), or `refresh` is set."""
    from export_tools import EXPORTER

    out = bundle_dir(cache, width)
    manifest = out / "manifest.json"
    if manifest.is_file() and not refresh:
        made_by = json.loads(manifest.read_text()).get("provenance", {}).get("exporter")
        if made_by == EXPORTER:
            return out
        say(f"{out} was written by {made_by or 'an older exporter'}, not {EXPORTER}: exporting it again")
    from export_tools.bundle_writer import write_bundle

    say(f"exporting the ImageNet-scale bundle (width 1/{width}) to {out} (once) ...")
    report = write_bundle(out, bundle_spec(width), overwrite=True, progress=say)
    say(json.dumps(report.max_diff()))
    return out
