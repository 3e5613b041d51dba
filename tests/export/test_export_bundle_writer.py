"""write_bundle: the manifest the runtime loads, atomic replacement, and one-line errors for bad specs."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from tiny_networks import CLASSES, VOCABULARY, Generator, generator_only_spec, head

import latent_onnx
from export_tools import EXPORTER, ExportError
from export_tools.bundle_writer import write_bundle
from export_tools.conventions import PixelConvention
from export_tools.export import load_weights
from latent_onnx import load_bundle


def test_manifest_lists_every_file_with_its_hash_and_the_runtime_loads_it(tiny_bundle):
    spec, report = tiny_bundle
    manifest = json.loads((report.path / "manifest.json").read_text())
    assert manifest == report.manifest
    entries = [
        *manifest["graphs"].values(),
        manifest["classes"],
        manifest["caption"]["vocabulary"],
        manifest["latent"]["prior"],
    ]
    for entry in entries:
        assert entry["sha256"] == hashlib.sha256((report.path / entry["file"]).read_bytes()).hexdigest()
    listed = {entry["file"] for entry in entries} | {"manifest.json"}
    assert {p.name for p in report.path.iterdir()} == listed
    assert (report.path / "classes.txt").read_text().splitlines() == CLASSES
    assert (report.path / "vocab.txt").read_text().splitlines() == VOCABULARY
    assert manifest["latent"]["init"] == {"kind": "gaussian", "mean": 0.0, "std": 0.8}
    assert manifest["latent"]["clip"] == [-3.0, 3.0]
    assert manifest["sampler"]["steps"] == 12 and manifest["sampler"]["normalize_grad"] is False
    assert manifest["sampler_by_condition"] == {"caption": {"steps": 20}}
    assert manifest["presets"]["paper"]["clip"] is None and manifest["presets"]["wide"] == {"clip": [-5.0, 5.0]}
    bundle = load_bundle(report.path)
    assert bundle.name == "tiny" and bundle.latent_dim == 6


def test_existing_bundle_is_kept_without_overwrite_and_on_failure(tmp_path):
    out = tmp_path / "bundle"
    write_bundle(out, generator_only_spec())
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(ExportError, match="already exists: pass overwrite=True"):
        write_bundle(out, generator_only_spec())
    uncropped = generator_only_spec(generator_convention=PixelConvention(127.5, (1.0, 1.0, 1.0)))  # 10x10, not 8x8
    with pytest.raises(ExportError, match=r"generator\.onnx: output 'image' has shape \['batch', 10, 10, 3\]"):
        write_bundle(out, uncropped, overwrite=True)
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging directory left behind
    lines = []
    report = write_bundle(out, generator_only_spec(description="new"), overwrite=True, progress=lines.append)
    assert json.loads((out / "manifest.json").read_text())["description"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert lines[0] == "exporting generator ..." and lines[-1] == f"wrote {out}"
    assert list(report.max_diff()) == ["generator"]


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(name="Tiny"), "bundle name"),
        (dict(head=torch.nn.Linear(6, 3)), "needs the class names"),
        (dict(captioner=torch.nn.Linear(6, 3)), "needs BundleSpec.vocabulary"),
        (dict(vocabulary=["a", "<eos>"], max_tokens=4), "must start with '<eos>'"),
        (dict(vocabulary=["<eos>", "a red"], max_tokens=4), "hold single words"),
        (dict(classes=["a", ""], head=torch.nn.Linear(6, 2)), "classes must be a non-empty list"),
        (dict(sampler={"step": 10}), "step=10 is not a sampler setting"),
        (dict(sampler={"eps1": 0}), "eps1=0 is out of range"),
        (dict(presets={"fast": {"normalize_grad": 1}}), "preset 'fast': normalize_grad=1"),
        (dict(sampler_by_condition={"pose": {"steps": 3}}), "sampler_by_condition must map a condition"),
        (dict(sampler_by_condition={"caption": {"steps": 0.5}}), "sampler_by_condition 'caption': steps=0.5"),
        (dict(clip=(1.0, -1.0)), "clip must be"),
        (dict(presets={"paper": {"clip": (0.0,)}}), "preset 'paper': clip must be"),
        (dict(provenance={"data": object()}), "cannot be written as JSON"),
    ],
)
def test_bad_specs_are_refused_with_one_line(tmp_path, changes, message):
    with pytest.raises(ExportError, match=message) as error:
        write_bundle(tmp_path / "bundle", generator_only_spec(**changes))
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


class NanAtZero(torch.nn.Module):
    """Logits z / sum |z|: finite on the random codes export validates with, NaN at the runtime's probe input (z = 0)."""

    def forward(self, z):
        return z[:, : len(CLASSES)] / z.abs().sum(dim=1, keepdim=True)


def test_the_runtime_decides_what_a_valid_bundle_is(tmp_path):
    spec = generator_only_spec(head=NanAtZero(), classes=CLASSES)
    with pytest.raises(
        ExportError, match=r"the runtime refuses the bundle just written: .*non-finite 'logits'"
    ) as error:
        write_bundle(tmp_path / "bundle", spec)
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_the_exporter_version_is_in_the_provenance(tiny_bundle):
    _, report = tiny_bundle
    assert report.manifest["provenance"]["exporter"] == EXPORTER == f"latent-onnx-export {latent_onnx.__version__}"
    assert load_bundle(report.path).provenance["exporter"] == EXPORTER


def test_load_weights_reports_missing_and_mismatched_files(tmp_path):
    with pytest.raises(ExportError, match="not found"):
        load_weights(Generator(), tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="cannot be read"):
        load_weights(Generator(), tmp_path / "garbage.pt")
    torch.save(head().state_dict(), tmp_path / "head.pt")
    with pytest.raises(ExportError, match=r"does not match Generator: missing \['deconv.bias'"):
        load_weights(Generator(), tmp_path / "head.pt")
    torch.save({"state_dict": head().state_dict()}, tmp_path / "nested.pt")
    with pytest.raises(ExportError, match="wrong shape"):
        load_weights(
            torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)),
            tmp_path / "nested.pt",
            key="state_dict",
        )
    saved = head()
    torch.save({"state_dict": saved.state_dict()}, tmp_path / "nested.pt")
    loaded = load_weights(head(), tmp_path / "nested.pt", key="state_dict")
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), loaded.state_dict().values()))
