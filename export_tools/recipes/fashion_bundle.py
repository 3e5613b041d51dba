"""The fashion-colors bundle: trained networks in the flow's N(0, I) space + tuned sampler defaults -> bundle directory."""

from __future__ import annotations

import copy
from pathlib import Path

from export_tools.bundle_writer import BundleReport, BundleSpec, write_bundle
from export_tools.conventions import PixelConvention
from export_tools.nets.fashion import ImageClassifier
from export_tools.nets.flow import FlowEncoder, FlowGenerator
from export_tools.priors import GaussianPrior
from export_tools.recipes.fashion_data import MAX_TOKENS, class_file_lines
from export_tools.recipes.fashion_train import load_checkpoint, trained_networks

# Sampler defaults chosen with `evaluate` (see docs/fashion-bundle.md for the measurements): the paper's
# SGLD from z_0 ~ N(0, I) in the flow's space, true Langevin (eps2 = 2 eps1), the class / caption term
# sharpened by the condition scale. Halving the step from 0.01 to 0.005 trades a little class agreement
# for diversity and a closer Frechet distance (one head, 100 per class: eps1 0.01 scale 10: class 0.937,
# diversity 0.92, Frechet 45.7; eps1 0.005 scale 10 / 15 / 20: 0.906 / 0.940 / 0.950, 0.95 / 0.94 / 0.93,
# 29 / 35 / 42). With the ensembles of four, scale 10 / 15 / 20 / 25 give class 0.926 / 0.946 / 0.958 /
# 0.954, caption class 0.930 / 0.943 / 0.954 / 0.950, caption colour 0.878 / 0.912 / 0.921 / 0.926,
# diversity 0.93 / 0.92 / 0.90 / 0.90 and Frechet 33 / 41 / 48 / 55: 20 is the smallest scale that meets
# the class targets.
SAMPLER_DEFAULTS = {
    "method": "sgld",
    "steps": 200,
    "eps1": 0.005,
    "eps2": 0.01,
    "prior_weight": 1.0,
    "condition_scale": 20.0,
    "anneal": 0.0,
    "eps1_final": None,
    "normalize_grad": False,
    "start": "init",
}
PRESETS = {
    # the paper's CaffeNet settings: tiny steps, almost no noise, no prior term
    "paper": {"method": "sgld", "eps1": 0.001, "eps2": 1e-8, "prior_weight": 0.0, "condition_scale": 1.0},
    # class samples closer to real images' spread, for a little class agreement: a wider prior term and the
    # condition ramped up over the whole run (100 per class, seeds 0 / 1: class 0.964 / 0.945, diversity
    # 0.92 / 0.95, Frechet 32 / 27, crossing 0.97 / 0.94, against the defaults' 0.970 / 0.969, 0.88 / 0.90,
    # 38 / 33, 0.975 / 0.965); captions lose colour with it (0.915 against 0.93), so it is not the default
    "diverse": {"prior_weight": 0.75, "anneal": 1.0, "condition_scale": 25.0},
}


def write_fashion_bundle(run_dir: Path, out_dir: Path, *, overwrite: bool = False, log=print) -> BundleReport:
    """Export the finished run in run_dir as the bundle out_dir (every graph validated against PyTorch)."""
    config, nets, vocab = trained_networks(run_dir)
    # the encoder side gets its own copy of the flow: the composite graph holds both sides, and weights tied
    # between them do not survive the gradient tracing (torch.func.functional_call)
    encoder = FlowEncoder(copy.deepcopy(nets.flow), nets.encoder)
    progress = load_checkpoint(Path(run_dir) / "checkpoint.pt")["progress"]
    spec = BundleSpec(
        name=Path(out_dir).name,
        description="Coloured Fashion-MNIST items (10 classes x 8 colours), class- and caption-conditional, 32x32",
        license="MIT (networks trained by latent-onnx on Fashion-MNIST, MIT, Zalando SE)",
        latent_dim=config.latent_dim,
        image_hw=(32, 32),
        generator=FlowGenerator(nets.flow, nets.generator),
        generator_convention=PixelConvention(scale=255.0),
        prior=GaussianPrior(0.0, 1.0),  # exact: the flow maps N(0, I) onto the encoder's codes
        init=None,  # chains start from the prior, as in the paper
        classes=class_file_lines(),
        vocabulary=vocab,
        max_tokens=MAX_TOKENS,
        head=nets.head,
        captioner=nets.captioner,
        encoder=encoder,
        image_classifier=ImageClassifier(encoder, nets.head),
        sampler=SAMPLER_DEFAULTS,
        presets=PRESETS,
        provenance={
            "recipe": "python -m export_tools.recipes.fashion train && python -m export_tools.recipes.fashion export",
            "data": "Fashion-MNIST (Debian dataset-fashion-mnist), tinted with 8 palette colours, padded to 32x32",
            "config_digest": config.digest(),
            "train_seconds": {stage: round(seconds) for stage, seconds in progress["seconds"].items()},
        },
    )
    return write_bundle(out_dir, spec, overwrite=overwrite, progress=log)
