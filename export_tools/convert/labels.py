"""ImageNet class names and the LRCN vocabulary, as the bundle's classes.txt and vocab.txt lines.

The shipped `data/synset_words.txt` is the standard ILSVRC-2012 list (BVLC caffe
data/ilsvrc12/synset_words.txt): line k = class k, "n01531178 goldfinch, Carduelis carduelis"
(class 11). The bundle keeps the names without the WordNet id, so `--class goldfinch`,
`--class "Carduelis carduelis"` and `--class 11` all name class 11.
"""

from __future__ import annotations

import re
from pathlib import Path

from export_tools import ExportError

SHIPPED_SYNSET_WORDS = Path(__file__).with_name("data") / "synset_words.txt"
_WORDNET_ID = re.compile(r"^n\d{8}\s+")
EOS = "<eos>"


def _lines(path: Path, what: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExportError(f"{what} file {path} does not exist") from None
    except UnicodeDecodeError:
        raise ExportError(f"{what} file {path} is not UTF-8 text") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ExportError(f"{what} file {path} is empty")
    empty = [i + 1 for i, line in enumerate(lines) if not line]
    if empty:
        raise ExportError(f"{what} file {path}: line {empty[0]} is empty (one entry per line)")
    return lines


def load_class_names(path: str | Path | None = None, classes: int | None = None) -> list[str]:
    """Class lines "name, synonym, ..." (WordNet ids dropped) from a labels file, the shipped list when None.

    Accepts "n01531178 goldfinch, Carduelis carduelis" or "goldfinch, Carduelis carduelis" lines;
    `classes`, when given, is the number the classifier predicts and the file must match it.
    """
    path = SHIPPED_SYNSET_WORDS if path is None else Path(path)
    names = [_WORDNET_ID.sub("", line) for line in _lines(path, "labels")]
    if classes is not None and len(names) != classes:
        raise ExportError(f"labels file {path} names {len(names)} classes, the classifier predicts {classes}")
    return names


def load_vocabulary(path: str | Path, vocabulary: int | None = None) -> list[str]:
    """Vocabulary lines with "<eos>" at id 0: LRCN's file (8800 words, "<unk>" first) gets "<eos>" put before it.

    `vocabulary`, when given, is the number of words the captioner predicts (8801 for LRCN).
    """
    words = _lines(Path(path), "vocabulary")
    if words[0].lower() == EOS:
        words = words[1:]
    words = [EOS] + words
    if vocabulary is not None and len(words) != vocabulary:
        raise ExportError(
            f"vocabulary file {path} has {len(words) - 1} words (+ {EOS}), the captioner predicts {vocabulary}: "
            "use the vocabulary that came with the LRCN weights"
        )
    return words
