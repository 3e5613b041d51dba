"""The committed default bundle, through the runtime exactly as users get it."""

import numpy as np
import pytest

from export_tools.recipes.fashion_bundle import SAMPLER_DEFAULTS
from export_tools.recipes.fashion_data import CLASS_NAMES, COLOUR_NAMES, PALETTE
from latent_onnx import Pipeline


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_bundle(None, device="cpu", threads=1)


def test_default_bundle_is_fashion_colors_with_tuned_defaults(pipe):
    assert pipe.bundle.name == "fashion-colors"
    assert {key: pipe.bundle.sampler[key] for key in SAMPLER_DEFAULTS} == SAMPLER_DEFAULTS
    assert pipe.sampler_config().start == "conditioned" and pipe.sampler_config("paper").start == "init"
    assert set(pipe.bundle.graphs) == {"generator", "classifier", "class_grad", "caption_grad", "encoder",
                                       "composite_class_grad"}


def test_class_names_and_simple_captions_are_understood(pipe):
    for index, name in enumerate(CLASS_NAMES):
        assert pipe.class_weights(name).argmax() == index
    for colour in COLOUR_NAMES:
        for name in CLASS_NAMES:
            tokens, mask = pipe.caption_tokens(f"a {colour} {name}")
            assert mask.sum() == len(name.split()) + 3


def test_default_generate_runs_on_the_shipped_bundle(pipe):
    result = pipe.generate(classes="ankle boot", n=2, seed=1, steps=5)
    assert result.pixels.shape == (2, 32, 32, 3) and result.z.shape == (2, pipe.bundle.latent_dim)


def test_class_samples_are_that_class_for_the_bundle_classifier(pipe):
    result = pipe.generate(classes="ankle boot", n=8, seed=1, batch_size=8)
    logits = pipe.runner("classifier").run(z=result.z)["logits"]
    assert (logits.argmax(1) == CLASS_NAMES.index("ankle boot")).mean() >= 0.75


@pytest.mark.parametrize("colour", ["red", "blue", "green"])
def test_caption_colour_shows_in_the_pixels(pipe, colour):
    pixels = pipe.generate(caption=f"a {colour} sneaker", n=4, seed=2, batch_size=4).pixels.astype(float)
    bright = pixels.sum(-1) > 120  # the item, not the black background
    mean_rgb = pixels[bright].mean(0)
    target = np.array(PALETTE[colour], dtype=float)
    cosine = mean_rgb @ target / np.linalg.norm(mean_rgb) / np.linalg.norm(target)
    assert cosine > 0.95
