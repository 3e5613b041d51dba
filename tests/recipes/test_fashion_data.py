import numpy as np
import pytest

from export_tools import ExportError
from export_tools.recipes import fashion_data as data


def test_colourize_pads_and_tints_with_the_palette():
    gray = np.full((2, 28, 28), 255, dtype=np.uint8)
    gray[1] = 128
    images = data.colourize(gray, np.array([0, 4]))
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert (images[:, :2] == 0).all() and (images[:, :, -2:] == 0).all()
    assert tuple(images[0, 16, 16]) == data.PALETTE["red"]
    assert tuple(images[1, 16, 16]) == tuple(round(128 / 255 * c) for c in data.PALETTE["blue"])


def test_colours_are_deterministic_per_index(tiny_dataset):
    first = data.load_split("train", tiny_dataset)
    again = data.load_split("train", tiny_dataset, limit=100)
    np.testing.assert_array_equal(first.colours[:100], again.colours)
    assert set(np.unique(first.colours)) == set(range(len(data.COLOUR_NAMES)))
    assert first.images.shape == (960, 32, 32, 3)
    assert first.gray.shape == (960, 32, 32)  # the untinted items, padded like the images
    tint = data.PALETTE_RGB[first.colours][:, None, None, :] / 255.0
    np.testing.assert_array_equal(first.images, np.clip(np.rint(first.gray[..., None] * tint), 0, 255))


def test_missing_dataset_names_the_install_command(tmp_path):
    with pytest.raises(ExportError, match="apt-get install dataset-fashion-mnist"):
        data.load_split("train", tmp_path)


def test_every_simple_caption_encodes_and_class_names_are_words():
    vocab = data.vocabulary()
    assert vocab[0] == "<eos>" and "t-shirt" in vocab and "ankle" in vocab and "boot" in vocab
    for colour in data.COLOUR_NAMES:
        for label, name in enumerate(data.CLASS_NAMES):
            assert data.caption_templates(colour, label)[0] == f"a {colour} {name}"
            tokens, mask = data.encode_caption(f"A {colour} {name}.", vocab)
            words = len(name.split()) + 2
            assert mask.sum() == words + 1 and (tokens[words:] == 0).all()
            assert [vocab[t] for t in tokens[:words]] == ["a", colour, *name.split()]


def test_templates_are_varied_and_fit_max_tokens():
    captions = data.caption_templates("orange", data.CLASS_NAMES.index("sneaker"))
    assert {"an orange sneaker", "a sneaker in orange", "a pair of orange sneakers"} <= set(captions)
    assert max(len(c.split()) for c in captions) < data.MAX_TOKENS


def test_unknown_caption_word_is_refused():
    with pytest.raises(ExportError, match="not in the vocabulary"):
        data.encode_caption("a magenta sneaker", data.vocabulary())


def test_caption_table_samples_a_template_of_the_pair():
    vocab = data.vocabulary()
    table = data.CaptionTable(vocab)
    tokens, mask = table.sample(np.array([9, 0]), np.array([1, 7]), np.random.default_rng(0))
    first = " ".join(vocab[t] for t, m in zip(tokens[0], mask[0]) if m and t)
    assert first in data.caption_templates("orange", 9)
    assert tokens.shape == mask.shape == (2, data.MAX_TOKENS)
