"""What the sampler is steered towards: class weights from a spec string, caption tokens, and the
gradient target that binds them to a gradient graph.
"""

from __future__ import annotations

import difflib
import re
import string

import numpy as np

from .errors import InputError
from .sessions import GraphRunner

_INDEX = re.compile(r"[0-9]+", re.ASCII)  # a class index: ASCII digits only ('²'.isdigit() is True)
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)  # a weight, ASCII decimal
_WEIGHT_MAX = 1e6  # weights are float32 inputs of the gradient graph; far beyond this the chains only diverge


def _normal_form(name: str) -> str:
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip().lower()


def _suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class ClassIndex:
    """Class names by index (display name first, then synonyms) and their lookup."""

    def __init__(self, classes: list[list[str]]):
        self.classes = classes
        self._display: dict[str, list[int]] = {}
        self._synonym: dict[str, list[int]] = {}
        for index, names in enumerate(classes):
            self._display.setdefault(_normal_form(names[0]), []).append(index)
            for name in names[1:]:
                self._synonym.setdefault(_normal_form(name), []).append(index)

    def lookup(self, name: str) -> int:
        """The class index of a display name, a synonym, or a decimal index; InputError otherwise."""
        key = _normal_form(name)
        if _INDEX.fullmatch(key):
            index = int(key)
            if index >= len(self.classes):
                raise InputError(
                    f"class index {index} is out of range (the bundle has {len(self.classes)} classes, 0..{len(self.classes) - 1})"
                )
            return index
        matches = self._display.get(key) or self._synonym.get(key) or []
        if len(matches) == 1:
            return matches[0]
        if matches:
            options = ", ".join(f"{i} ({self.classes[i][0]})" for i in matches)
            raise InputError(f"class '{name}' is ambiguous: it names classes {options}; give the index instead")
        hint = _suggest(key, sorted(self._display) + sorted(self._synonym))
        raise InputError(
            f"unknown class '{name}'{hint} (list them with `latent-onnx classes`; another bundle, such as the"
            " ImageNet one of docs/imagenet.md, is chosen with --bundle)"
        )

    def search(self, text: str) -> list[int]:
        """Indices of classes any of whose names contain `text` (case-insensitive)."""
        key = _normal_form(text)
        return [i for i, names in enumerate(self.classes) if any(key in _normal_form(n) for n in names)]

    def weights(self, spec: str) -> np.ndarray:
        """Class weights float32 [K] from "sneaker", "11", "sneaker:0.7,sandal:0.3" or "dress:1,red dress:-0.5"."""
        if not isinstance(spec, str) or not spec.strip():
            raise InputError(
                "the class spec is empty; give a class name, an index, or name:weight pairs separated by commas"
            )
        weights = np.zeros(len(self.classes), dtype=np.float64)
        for item in spec.split(","):
            name, _, weight_text = item.rpartition(":") if ":" in item else (item, "", "1")
            if not name.strip():
                raise InputError(f"class spec '{spec}' has an empty entry; write name[:weight] separated by commas")
            if not _NUMBER.fullmatch(weight_text.strip()):
                if weight_text.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
                    raise InputError(f"class weight in '{item.strip()}' must be finite")
                raise InputError(f"class weight '{weight_text.strip()}' in '{item.strip()}' is not a number")
            weights[self.lookup(name)] += float(weight_text)
        if not np.all(np.abs(weights) <= _WEIGHT_MAX):
            raise InputError(
                f"class spec '{spec}': a class weight is beyond {_WEIGHT_MAX:g} in size; give weights such as 0.7"
            )
        if not np.any(weights):
            raise InputError(f"class spec '{spec}' has all weights zero")
        return weights.astype(np.float32)


def caption_tokens(caption: str, vocabulary: list[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int64 [T], mask float32 [T]) for a caption: word ids, <eos> (0), zero padding."""
    words = [word.strip(string.punctuation) for word in caption.lower().split()]
    words = [word for word in words if word]
    if not words:
        raise InputError("the caption has no words")
    ids = {word: index for index, word in enumerate(vocabulary) if index > 0}
    unknown = [word for word in dict.fromkeys(words) if word not in ids]
    if unknown:
        hints = "".join(_suggest(word, list(ids)) for word in unknown[:1])
        raise InputError(f"caption words not in the bundle's vocabulary: {', '.join(unknown)}{hints}")
    if len(words) + 1 > max_tokens:
        raise InputError(f"the caption has {len(words)} words; this bundle takes at most {max_tokens - 1}")
    tokens = np.zeros(max_tokens, dtype=np.int64)
    tokens[: len(words)] = [ids[word] for word in words]
    mask = np.zeros(max_tokens, dtype=np.float32)
    mask[: len(words) + 1] = 1.0
    return tokens, mask


class GradientTarget:
    """log p(y | z) and its gradient for a fixed condition y, through one gradient graph.

    `extra` holds the condition's per-sample inputs (e.g. weights [K] or tokens [T]), tiled to the batch
    (once per batch size: the sampler calls the target with the same batch every step).
    """

    def __init__(self, runner: GraphRunner, extra: dict[str, np.ndarray]):
        self.runner = runner
        self.extra = extra
        self._tiled: dict[int, dict[str, np.ndarray]] = {}  # batch size -> extra tiled to [batch, ...]

    def __call__(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logp float32 [B], grad float32 [B, D]) at z float32 [B, D]."""
        batch = z.shape[0]
        feeds = self._tiled.get(batch)
        if feeds is None:
            feeds = {name: np.broadcast_to(value, (batch, *value.shape)).copy() for name, value in self.extra.items()}
            self._tiled[batch] = feeds
        out = self.runner.run(z=z, **feeds)
        return out["logp"], out["grad"]
