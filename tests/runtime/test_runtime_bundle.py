"""Bundle loading: field validation, sha256 checks, confinement, graph contracts."""

import os

import numpy as np
import onnx
import pytest
from runtime_bundles import (
    ALL_ROLES,
    D,
    build_graphs,
    edit_manifest,
    sha256_file,
    tiny_weights,
    use_mixture_prior,
    write_tiny_bundle,
)

from latent_onnx import BundleError, Pipeline, load_bundle
from latent_onnx.bundle import BUNDLE_ENV, resolve_bundle_dir
from latent_onnx.onnx_scan import uses_external_data
from latent_onnx.priors import GaussianMixturePrior


def test_loads_every_field(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    assert bundle.name == "tiny" and bundle.latent_dim == D and bundle.image_hw == (4, 4)
    assert bundle.class_names == ["sneaker", "sandal", "ankle boot"]
    assert bundle.classes[2] == ["ankle boot", "boot"]
    assert bundle.vocabulary[0] == "<eos>" and bundle.max_tokens == 5
    assert set(bundle.graphs) == set(ALL_ROLES)
    assert bundle.presets["paper"]["eps2"] == 1e-8
    assert bundle.init is bundle.prior
    assert len(bundle.manifest_sha256) == 64


def test_a_plain_name_is_a_shipped_bundle_and_its_absence_says_how_to_pass_one(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(BUNDLE_ENV, "no-such-bundle")
    with pytest.raises(BundleError, match=r"no bundle named 'no-such-bundle'.*--bundle PATH"):
        resolve_bundle_dir(None)


def test_env_variable_selects_the_default_bundle(monkeypatch, tiny_bundle):
    monkeypatch.setenv(BUNDLE_ENV, str(tiny_bundle))
    assert load_bundle(None).root == tiny_bundle.resolve()


def test_a_directory_without_manifest_is_refused(tmp_path):
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(format="other"), "'format'"),
        (lambda m: m.update(format_version=4), "'format_version'"),
        (lambda m: m.update(name="Bad Name"), "'name'"),
        (lambda m: m["latent"].update(dim=0), "'latent.dim'"),
        (lambda m: m["latent"].update(prior={"kind": "gaussian", "mean": 0, "std": 0}), "'latent.prior.std'"),
        (lambda m: m["latent"].update(prior={"kind": "laplace"}), "'latent.prior.kind'"),
        (lambda m: m["latent"].update(clip=[1, 0]), "'latent.clip'"),
        (lambda m: m["image"].update(channels=4), "'image.channels'"),
        (lambda m: m["graphs"].update(extra={"file": "x.onnx", "sha256": "0" * 64}), "'graphs.extra'"),
        (lambda m: m["graphs"].pop("generator"), "'graphs.generator'"),
        (lambda m: m["graphs"]["encoder"].update(sha256="ABC"), "'graphs.encoder.sha256'"),
        (lambda m: m["sampler"].update(eps1=-1), "'sampler.eps1'"),
        (lambda m: m["sampler"].update(steps=1.5), "'sampler.steps'"),
        (lambda m: m["sampler"].update(temperature=1), "'sampler.temperature'"),
        (lambda m: m["sampler"].update(start="middle"), "'sampler.start'"),
        (lambda m: m["presets"].update(fast={"eps2": "big"}), "'presets.fast.eps2'"),
        (lambda m: m["presets"].update(fast={"clip": [2, 1]}), "'presets.fast.clip'"),
        (lambda m: m.update(sampler_by_condition={"pose": {"steps": 3}}), "'sampler_by_condition.pose'"),
        (lambda m: m.update(sampler_by_condition={"caption": {"steps": -3}}), "'sampler_by_condition.caption.steps'"),
        (lambda m: m.update(sampler_by_condition={"class": {"start": "image"}}), "'sampler_by_condition.class.start'"),
        (lambda m: m.update(sampler_by_condition=[]), "'sampler_by_condition' must be an object"),
        (lambda m: m.update(sampler_by_condition={"class": None}), "'sampler_by_condition.class' is missing"),
        (lambda m: m.pop("classes"), "'classes'"),
        (lambda m: m["caption"].update(max_tokens=0), "'caption.max_tokens'"),
        (lambda m: m.update(colour="red"), "'colour'"),
    ],
)
def test_bad_manifest_fields_are_named(tiny_bundle, change, message):
    edit_manifest(tiny_bundle, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(tiny_bundle)


def test_invalid_json_is_reported_with_its_line(tiny_bundle):
    (tiny_bundle / "manifest.json").write_text('{\n"format": ')
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tiny_bundle)


def test_a_missing_graph_is_refused_on_loading(tiny_bundle):
    (tiny_bundle / "class_grad.onnx").unlink()
    with pytest.raises(BundleError, match="class_grad.onnx.*graphs.class_grad.*missing"):
        load_bundle(tiny_bundle)


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_truncated_or_tampered_graph_is_never_opened(tiny_bundle, damage):
    path = tiny_bundle / "class_grad.onnx"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[:-1] + bytes([data[-1] ^ 1]))
    bundle = load_bundle(tiny_bundle)  # each graph is hashed as it is read, so only the graphs used cost a hash
    with pytest.raises(BundleError, match="class_grad.onnx.*graphs.class_grad.*sha256"):
        bundle.graph_bytes("class_grad")
    with pytest.raises(BundleError, match="class_grad.onnx.*graphs.class_grad.*sha256"):
        Pipeline.from_bundle(bundle).generate(classes="sneaker", n=1, seed=0)


def test_a_file_changed_after_loading_is_refused_when_read(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    (tiny_bundle / "encoder.onnx").write_bytes(b"changed")
    with pytest.raises(BundleError, match="sha256"):
        bundle.graph_bytes("encoder")


@pytest.mark.parametrize("name", ["../outside.onnx", "/etc/passwd", "sub/../../x.onnx", "C:/x.onnx", "a\\b.onnx", ""])
def test_file_names_that_could_leave_the_bundle_are_refused(tiny_bundle, name):
    edit_manifest(tiny_bundle, lambda m: m["graphs"]["encoder"].update(file=name))
    with pytest.raises(BundleError, match="graphs.encoder"):
        load_bundle(tiny_bundle)


def test_a_symlink_leading_out_of_the_bundle_is_refused(tiny_bundle, tmp_path):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((tiny_bundle / "encoder.onnx").read_bytes())
    (tiny_bundle / "encoder.onnx").unlink()
    os.symlink(outside, tiny_bundle / "encoder.onnx")
    with pytest.raises(BundleError, match="resolves outside the bundle"):
        load_bundle(tiny_bundle)


def test_graphs_with_external_data_are_refused(tiny_bundle):
    model = build_graphs(tiny_weights())["encoder"]
    onnx.save_model(
        model, str(tiny_bundle / "encoder.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    assert uses_external_data((tiny_bundle / "encoder.onnx").read_bytes())
    assert not uses_external_data((tiny_bundle / "generator.onnx").read_bytes())
    edit_manifest(
        tiny_bundle, lambda m: m["graphs"]["encoder"].update(sha256=sha256_file(tiny_bundle / "encoder.onnx"))
    )
    with pytest.raises(BundleError, match="external data"):
        load_bundle(tiny_bundle).graph_bytes("encoder")


def test_a_graph_that_breaks_its_contract_is_named(tmp_path):
    graphs = build_graphs(tiny_weights())
    graphs["encoder"] = graphs["classifier"]  # wrong inputs and outputs for the encoder role
    write_tiny_bundle(tmp_path / "b", graphs=graphs)
    pipe = Pipeline.from_bundle(tmp_path / "b", device="cpu")
    with pytest.raises(BundleError, match="graph encoder has inputs"):
        pipe.runner("encoder")


def test_a_graph_whose_dimension_disagrees_with_the_manifest_is_named(tiny_bundle):
    edit_manifest(tiny_bundle, lambda m: m["image"].update(height=8))
    pipe_error = pytest.raises(
        BundleError, match=r"graph generator: output 'image' axis 1 is 4, the manifest implies 8"
    )
    with pipe_error:
        Pipeline.from_bundle(tiny_bundle, device="cpu")


def test_a_gaussian_mixture_prior_is_loaded_and_checked(tiny_bundle):
    rng = np.random.default_rng(0)
    arrays = {
        "weights": np.array([0.5, 0.5]),
        "means": rng.normal(size=(2, D)),
        "scale_tril": np.stack([np.eye(D)] * 2),
    }
    use_mixture_prior(tiny_bundle, **arrays)
    bundle = load_bundle(tiny_bundle)
    assert isinstance(bundle.prior, GaussianMixturePrior) and bundle.prior.dim == D

    arrays["weights"] = np.array([0.5, 0.6])
    use_mixture_prior(tiny_bundle, **arrays)
    with pytest.raises(BundleError, match="sum to 1"):
        load_bundle(tiny_bundle)


def test_sampler_settings_by_condition_are_read_and_null_means_none(tiny_bundle):
    assert load_bundle(tiny_bundle).sampler_by_condition == {}
    edit_manifest(tiny_bundle, lambda m: m.update(sampler_by_condition={"caption": {"steps": 7, "eps1": 1}}))
    assert load_bundle(tiny_bundle).sampler_by_condition == {"caption": {"steps": 7, "eps1": 1.0}}
    edit_manifest(tiny_bundle, lambda m: m.update(sampler_by_condition=None))
    assert load_bundle(tiny_bundle).sampler_by_condition == {}
