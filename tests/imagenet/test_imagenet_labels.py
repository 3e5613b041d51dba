"""Class names (shipped ILSVRC-2012 list or a user's file) and the LRCN vocabulary."""

from __future__ import annotations

import pytest

from export_tools import ExportError
from export_tools.convert.labels import load_class_names, load_vocabulary


def test_shipped_list_has_1000_classes_without_wordnet_ids():
    names = load_class_names(classes=1000)
    assert names[11] == "goldfinch, Carduelis carduelis"
    assert names[0] == "tench, Tinca tinca" and names[999] == "toilet tissue, toilet paper, bathroom tissue"
    assert not any(name.startswith("n0") or name.startswith("n1") for name in names)


def test_user_labels_with_or_without_ids_must_match_the_classifier(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("n01531178 goldfinch, Carduelis carduelis\nhouse finch, linnet\n\n")
    assert load_class_names(labels, classes=2) == ["goldfinch, Carduelis carduelis", "house finch, linnet"]
    with pytest.raises(ExportError, match="names 2 classes, the classifier predicts 1000"):
        load_class_names(labels, classes=1000)
    labels.write_text("goldfinch\n\nhouse finch\n")
    with pytest.raises(ExportError, match="line 2 is empty"):
        load_class_names(labels)


def test_vocabulary_gets_eos_at_id_0(tmp_path):
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("<unk>\na\nbird\n")  # LRCN's file: words only, id 0 (<EOS>) implied
    assert load_vocabulary(vocabulary, 4) == ["<eos>", "<unk>", "a", "bird"]
    vocabulary.write_text("<EOS>\n<unk>\na\nbird\n")
    assert load_vocabulary(vocabulary, 4) == ["<eos>", "<unk>", "a", "bird"]
    with pytest.raises(ExportError, match="has 3 words .* the captioner predicts 8801"):
        load_vocabulary(vocabulary, 8801)
    with pytest.raises(ExportError, match="does not exist"):
        load_vocabulary(tmp_path / "absent.txt")
