"""Build the ImageNet bundle: published weights -> network definitions -> validated ONNX graphs.

generator = DeePSiM fc6, encoder = CaffeNet up to relu6, head (classifier, class_grad) = CaffeNet
relu/fc7/relu/fc8, captioner (caption_grad) = LRCN on its own CaffeNet fc7/fc8, and optionally
the composite path (generator, then the full CaffeNet) for the speed comparison. The code z is
CaffeNet's 4096-d post-ReLU fc6.

Sampler settings written into the bundle:
- default: PPGN's fc6 class sampling (Nguyen et al. 2017, Evolving-AI-Lab/ppgn sampler.py and
  1_class_conditional_sampling.sh): 200 steps of size 1 on the gradient divided by its mean
  absolute value, no prior term (PPGN's is a denoiser this bundle does not have), noise negligible
  (PPGN's std is 1e-17), z clipped to [0, 30] after each step (latent.clip; `clip=None` turns it off).
- preset "paper" (Acuna & Duvenaud): eps1 = 1e-3, eps2 = 1e-8, z_0 ~ N(0, I), no prior term.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from export_tools import ExportError
from export_tools.bundle_writer import BundleReport, BundleSpec, write_bundle
from export_tools.convert.download import file_digests
from export_tools.convert.labels import load_class_names, load_vocabulary
from export_tools.convert.weights import load_caffe_weights, read_weights
from export_tools.nets.caffenet import INPUT_SIZE, CaffeNetClassifier, CaffeNetEncoder, CaffeNetHead
from export_tools.nets.deepsim import CAFFENET_CROP, DEEPSIM_CONVENTION, IMAGE_SIZE, DeePSiMGenerator
from export_tools.nets.lrcn import LRCNCaptioner
from export_tools.priors import GaussianPrior

PPGN_CLIP = (0.0, 30.0)  # PPGN clips the fc6 code to this range after every step
PPGN_SAMPLER = {
    "steps": 200,
    "eps1": 1.0,
    "eps1_final": None,
    "eps2": 0.0,
    "prior_weight": 0.0,
    "condition_scale": 1.0,
    "normalize_grad": True,
}
PAPER_PRESET = {
    "eps1": 1e-3,
    "eps2": 1e-8,
    "prior_weight": 0.0,
    "eps1_final": None,
    "normalize_grad": False,
    "clip": None,
}
LICENSE = (
    "converted on the user's machine from published weights; not redistributable: DeePSiM generator research "
    "use only (Dosovitskiy & Brox); CaffeNet BVLC unrestricted; LRCN per its release terms"
)


@dataclass(frozen=True)
class ImageNetSources:
    """The files a bundle is converted from (each a `.caffemodel` or a PyTorch state dict with Caffe layer names)."""

    generator: Path  # DeePSiM fc6: generator.caffemodel or upconvGAN_fc6.pt
    classifier: Path  # CaffeNet: bvlc_reference_caffenet.caffemodel or caffenet.pt
    captioner: Path | None = None  # LRCN: lrcn_caffenet_iter_110000.caffemodel; needs `vocabulary`
    vocabulary: Path | None = None  # LRCN's vocabulary.txt (8800 words; <eos> is added at id 0)
    labels: Path | None = None  # class names, one line per class; None = the shipped ILSVRC-2012 list


@dataclass(frozen=True)
class ImageNetOptions:
    """How the bundle is laid out."""

    name: str = "imagenet-deepsim"  # bundle name
    crop: bool = False  # True: 227 x 227 images (CaffeNet's centre crop); False: the full 256 x 256
    clip: tuple[float, float] | None = PPGN_CLIP  # z range after every step; None = no clipping
    encoder: bool = True  # export the encoder graph (CaffeNet to fc6), for --init-image
    composite: bool = False  # export composite_class_grad (generator + full CaffeNet; slow, large)
    max_tokens: int = 20  # T: caption words + final <eos> (LRCN's deploy net unrolls 20 steps)
    class_grad_precision: str = (
        "auto"  # BundleSpec's: int8 class_grad weights (faster latent steps on CPUs) when they pass their check
    )
    width: int = 1  # network width divisor: 1 for the published weights, >1 only for tests


@dataclass
class ImageNetNetworks:
    """The networks with the published weights loaded."""

    generator: DeePSiMGenerator
    encoder: CaffeNetEncoder
    head: CaffeNetHead
    captioner: LRCNCaptioner | None
    vocabulary: list[str] | None  # the captioner's words, "<eos>" at 0


def load_networks(sources: ImageNetSources, width: int = 1) -> ImageNetNetworks:
    """Build the definitions and load every weights file into them (ExportError names a bad layer)."""
    if (sources.captioner is None) != (sources.vocabulary is None):
        raise ExportError("captions need both the LRCN weights (--captioner) and its vocabulary (--vocabulary)")
    generator = DeePSiMGenerator(width)
    load_caffe_weights(generator, read_weights(sources.generator), str(sources.generator))
    classifier_blobs = read_weights(sources.classifier)
    encoder, head = CaffeNetEncoder(width), CaffeNetHead(width)
    load_caffe_weights(encoder, classifier_blobs, str(sources.classifier))
    load_caffe_weights(head, classifier_blobs, str(sources.classifier))
    captioner = vocabulary = None
    if sources.captioner is not None:
        captioner_blobs = read_weights(sources.captioner)
        predict = captioner_blobs.get("predict")
        vocabulary = load_vocabulary(sources.vocabulary, predict[0].shape[-2] if predict else None)
        captioner = LRCNCaptioner(CaffeNetHead(width), len(vocabulary), width)
        load_caffe_weights(captioner, captioner_blobs, str(sources.captioner))
    return ImageNetNetworks(generator, encoder, head, captioner, vocabulary)


def imagenet_spec(sources: ImageNetSources, options: ImageNetOptions) -> BundleSpec:
    """The BundleSpec of the ImageNet bundle, with every weights file loaded and checked."""
    nets = load_networks(sources, options.width)
    vocabulary = nets.vocabulary
    classes = load_class_names(sources.labels, nets.head.fc8.out_features)
    side = INPUT_SIZE if options.crop else IMAGE_SIZE
    convention = dataclasses.replace(DEEPSIM_CONVENTION, crop=CAFFENET_CROP if options.crop else None)
    return BundleSpec(
        name=options.name,
        description=f"ImageNet: DeePSiM fc6 generator, CaffeNet classifier{', LRCN captioner' if vocabulary else ''} "
        f"(converted from published weights), {side}x{side}",
        license=LICENSE,
        latent_dim=nets.generator.code_dim,
        image_hw=(side, side),
        generator=nets.generator,
        generator_convention=convention,
        prior=GaussianPrior(0.0, 1.0),
        clip=options.clip,
        classes=classes,
        vocabulary=vocabulary,
        max_tokens=options.max_tokens if vocabulary else None,
        head=nets.head,
        captioner=nets.captioner,
        encoder=nets.encoder if options.encoder else None,
        image_classifier=CaffeNetClassifier(nets.encoder, nets.head) if options.composite else None,
        sampler=dict(PPGN_SAMPLER),
        presets={"paper": dict(PAPER_PRESET)},
        class_grad_precision=options.class_grad_precision,
        provenance={
            "recipe": "export_tools.convert.imagenet_bundle",
            "sources": {
                role: {"file": Path(path).name, "sha256": file_digests(Path(path), ["sha256"])["sha256"]}
                for role, path in (
                    ("generator", sources.generator),
                    ("classifier", sources.classifier),
                    ("captioner", sources.captioner),
                    ("vocabulary", sources.vocabulary),
                    ("labels", sources.labels),
                )
                if path is not None
            },
            "width": options.width,
        },
    )


def write_imagenet_bundle(
    out_dir: str | Path,
    sources: ImageNetSources,
    options: ImageNetOptions = ImageNetOptions(),
    *,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> BundleReport:
    """Convert, export, validate and write the ImageNet bundle to `out_dir` (nothing is left behind on failure)."""
    say = progress or (lambda line: None)
    if Path(out_dir).exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists: pass --overwrite or choose another directory")
    say("loading and checking the weights ...")
    spec = imagenet_spec(sources, options)
    return write_bundle(out_dir, spec, overwrite=overwrite, progress=say)
