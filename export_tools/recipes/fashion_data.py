"""Coloured Fashion-MNIST: the idx files of Debian's `dataset-fashion-mnist`, tinted and captioned.

Each 28x28 item is padded to 32x32 and tinted with one palette colour, chosen per index by a
seeded generator: rgb = gray / 255 * colour on black. Captions come from several English
templates per (colour, class); "a <colour> <class name>" is always one of them.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export_tools.recipes.errors import RecipeError

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "sudo apt-get install dataset-fashion-mnist"

# Display names in label order; the class file adds synonyms after ", ".
CLASS_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
CLASS_SYNONYMS = {"t-shirt": ["top"], "trouser": ["trousers", "pants"], "pullover": ["sweater"], "ankle boot": ["boot"]}
# How captions name a pair of the item ("a pair of red trousers"); classes without an entry are not pairs.
PAIR_NAMES = {"trouser": "trousers", "sandal": "sandals", "sneaker": "sneakers", "ankle boot": "ankle boots"}

PALETTE = {
    "red": (230, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (235, 215, 35),
    "green": (40, 180, 60),
    "blue": (40, 90, 230),
    "purple": (150, 60, 210),
    "pink": (245, 110, 190),
    "white": (240, 240, 240),
}
COLOUR_NAMES = list(PALETTE)
PALETTE_RGB = np.array([PALETTE[name] for name in COLOUR_NAMES], dtype=np.float32)  # [8, 3]

SPLIT_FILES = {"train": "train", "test": "t10k"}
SPLIT_SEEDS = {"train": 1234, "test": 5678}  # colour draws; fixed so every run sees the same data


@dataclass
class ColouredSplit:
    """One split: images uint8 [N, 32, 32, 3] RGB, labels int64 [N], colours int64 [N] (index into COLOUR_NAMES),
    and the untinted items, gray uint8 [N, 32, 32] (padded like the images)."""

    images: np.ndarray
    labels: np.ndarray
    colours: np.ndarray
    gray: np.ndarray


def _read_idx(path: Path, offset: int) -> np.ndarray:
    if not path.is_file():
        raise RecipeError(f"Fashion-MNIST file {path} is missing; install the dataset with: {INSTALL_HINT}")
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=offset)


def pad(gray: np.ndarray) -> np.ndarray:
    """gray uint8 [N, 28, 28] -> uint8 [N, 32, 32], 2 black pixels on every side."""
    return np.pad(gray, ((0, 0), (2, 2), (2, 2)))


def colourize(gray: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """gray uint8 [N, 28, 28], colours int [N] -> uint8 [N, 32, 32, 3], padded by 2 pixels, tinted."""
    rgb = pad(gray).astype(np.float32)[..., None] / 255.0 * PALETTE_RGB[colours][:, None, None, :]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def load_split(split: str, data_dir: Path = DATA_DIR, limit: int | None = None) -> ColouredSplit:
    """Read, colour and pad one split ("train" or "test"); `limit` keeps the first items only."""
    prefix = SPLIT_FILES[split]
    gray = _read_idx(Path(data_dir) / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = _read_idx(Path(data_dir) / f"{prefix}-labels-idx1-ubyte.gz", 8).astype(np.int64)
    colours = np.random.default_rng(SPLIT_SEEDS[split]).integers(0, len(COLOUR_NAMES), len(labels))
    if limit is not None:
        gray, labels, colours = gray[:limit], labels[:limit], colours[:limit]
    return ColouredSplit(colourize(gray, colours), labels, colours.astype(np.int64), pad(gray))


def class_file_lines() -> list[str]:
    """Lines of classes.txt: display name first, then synonyms."""
    return [", ".join([name] + CLASS_SYNONYMS.get(name, [])) for name in CLASS_NAMES]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_templates(colour: str, label: int) -> list[str]:
    """Every caption the recipe trains on for one (colour, class); the first is "a <colour> <class name>"."""
    name = CLASS_NAMES[label]
    captions = [
        f"a {colour} {name}",
        f"{_article(colour)} {colour} {name}",
        f"{_article(name)} {name} in {colour}",
        f"the {colour} {name}",
        f"{colour} {name}",
    ]
    for synonym in CLASS_SYNONYMS.get(name, []):
        captions.append(f"{_article(colour)} {colour} {synonym}")
    if name in PAIR_NAMES:
        captions.append(f"a pair of {colour} {PAIR_NAMES[name]}")
        captions.append(f"{PAIR_NAMES[name]} in {colour}")
    return list(dict.fromkeys(captions))  # "a" and the article coincide for consonant colours


def _every_caption() -> list[str]:
    """The templates of every (colour, class) pair."""
    return [
        caption
        for colour in COLOUR_NAMES
        for label in range(len(CLASS_NAMES))
        for caption in caption_templates(colour, label)
    ]


def vocabulary() -> list[str]:
    """Every word of every caption, `<eos>` first (id 0), then sorted."""
    return ["<eos>"] + sorted({word for caption in _every_caption() for word in caption.split()})


MAX_TOKENS = 1 + max(len(caption.split()) for caption in _every_caption())


def encode_caption(caption: str, vocab: list[str], max_tokens: int = MAX_TOKENS) -> tuple[np.ndarray, np.ndarray]:
    """caption -> (tokens int64 [T], mask float32 [T]) per docs/bundle-format.md (words, `<eos>`, 0 padding)."""
    index = {word: i for i, word in enumerate(vocab)}
    words = [word.strip(".,;:!?\"'") for word in caption.lower().split()]
    unknown = [word for word in words if word not in index]
    if unknown:
        raise RecipeError(f"caption word(s) {unknown} are not in the vocabulary")
    if len(words) + 1 > max_tokens:
        raise RecipeError(f"caption has {len(words)} words; at most {max_tokens - 1} fit")
    tokens = np.zeros(max_tokens, dtype=np.int64)
    mask = np.zeros(max_tokens, dtype=np.float32)
    tokens[: len(words)] = [index[word] for word in words]
    mask[: len(words) + 1] = 1.0
    return tokens, mask


class CaptionTable:
    """All training captions per (class, colour), encoded once: sample tokens/mask for a batch of pairs."""

    def __init__(self, vocab: list[str]):
        self.encoded = [
            [[encode_caption(c, vocab) for c in caption_templates(colour, label)] for colour in COLOUR_NAMES]
            for label in range(len(CLASS_NAMES))
        ]

    def sample(
        self, labels: np.ndarray, colours: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """labels, colours int [B] -> tokens int64 [B, T], mask float32 [B, T], one random template each."""
        chosen = [
            self.encoded[label][colour][rng.integers(len(self.encoded[label][colour]))]
            for label, colour in zip(labels, colours)
        ]
        return np.stack([t for t, _ in chosen]), np.stack([m for _, m in chosen])
