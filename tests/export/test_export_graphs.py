"""Every graph role exports, matches its contract and agrees with PyTorch; validation catches mismatches."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tiny_networks import IMAGE_HW, D, K, head

from export_tools import ExportError
from export_tools.export import ClassLogp, eager_reference, export_class_grad, export_classifier
from export_tools.specs import IR_VERSION, OPSET, SPECS, GraphDims
from export_tools.validate import validate_graph
from latent_onnx.contracts import ROLES

DIMS = GraphDims(latent_dim=D, num_classes=K, image_hw=IMAGE_HW)


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_every_role_is_exported_and_validated(tiny_bundle):
    spec, report = tiny_bundle
    assert list(report.graphs) == list(ROLES)
    for role, graph in report.graphs.items():
        contract = SPECS[role]
        assert set(graph.max_diff) == {t.name for t in contract.outputs}
        for output, diff in graph.max_diff.items():
            assert 0.0 <= diff <= (1.0 if role == "generator" else 1e-4), (role, output, diff)
        entry = report.manifest["graphs"][role]
        assert entry["sha256"] == hashlib.sha256(graph.path.read_bytes()).hexdigest()
    assert report.manifest["provenance"]["validation"] == report.max_diff()


def test_graphs_pass_the_onnx_checker_at_the_declared_versions(tiny_bundle):
    _, report = tiny_bundle
    for graph in report.graphs.values():
        model = onnx.load(graph.path)
        onnx.checker.check_model(model, full_check=True)
        assert model.ir_version == IR_VERSION
        assert [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] == [("", OPSET)]
        assert all(not t.external_data for t in model.graph.initializer)  # weights embedded


def test_an_export_is_the_same_bytes_again_and_names_no_source_file(tmp_path):
    """The exporter's per-node notes (source paths and line numbers) are dropped: a network exports to the
    same file from any checkout."""
    torch.manual_seed(0)
    network = head()
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    export_class_grad(network, DIMS, first)
    export_class_grad(network, DIMS, second)
    assert first.read_bytes() == second.read_bytes()
    assert not any(node.metadata_props for node in onnx.load(first).graph.node)
    assert b".py" not in first.read_bytes()


def test_graphs_keep_contract_names_and_a_dynamic_batch(tiny_bundle):
    _, report = tiny_bundle
    rng = np.random.default_rng(1)
    dims = GraphDims(D, K, max_tokens=4, vocab_size=6, image_hw=IMAGE_HW)
    for role, graph in report.graphs.items():
        contract = SPECS[role]
        sess = session(graph.path)
        assert [i.name for i in sess.get_inputs()] == [t.name for t in contract.inputs]
        assert [o.name for o in sess.get_outputs()] == [t.name for t in contract.outputs]
        outputs = sess.run(None, contract.example_inputs(dims, batch=5, rng=rng))
        for tensor, value in zip(contract.outputs, outputs):
            assert value.shape == tensor.concrete_shape(dims, 5)
            assert value.dtype == np.dtype(tensor.dtype)


def test_generator_graph_applies_the_pixel_convention(tiny_bundle):
    spec, report = tiny_bundle
    z = np.random.default_rng(2).standard_normal((4, D)).astype(np.float32)
    (image,) = session(report.graphs["generator"].path).run(None, {"z": z})
    with torch.no_grad():
        x = spec.generator(torch.from_numpy(z)).numpy()  # [4, 3, 10, 10] BGR in [-1, 1]
    expected = np.clip(np.round((x + 1.0) * 127.5), 0, 255)[:, ::-1, 1:9, 1:9].transpose(0, 2, 3, 1)
    assert image.dtype == np.uint8 and image.shape == (4, 8, 8, 3)
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1
    assert (image == expected).mean() > 0.99


def test_encoder_graph_inverts_the_pixel_convention(tiny_bundle):
    spec, report = tiny_bundle
    image = np.random.default_rng(3).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    (z,) = session(report.graphs["encoder"].path).run(None, {"image": image})
    x = image[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0  # RGB -> BGR, NCHW, [-1, 1]
    with torch.no_grad():
        expected = spec.encoder(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    np.testing.assert_allclose(z, expected, atol=1e-5)


def test_validation_names_graph_output_and_difference(tmp_path):
    torch.manual_seed(0)
    exported, other = head(), head()
    report = export_classifier(exported, DIMS, tmp_path / "classifier.onnx")
    assert report.max_diff["logits"] < 1e-5
    with pytest.raises(
        ExportError,
        match=r"classifier\.onnx failed validation at batch 1: output 'logits' differs from PyTorch by [0-9.e-]+ \(allowed",
    ):
        validate_graph(report.path, SPECS["classifier"], DIMS, eager_reference(other.eval(), SPECS["classifier"]))


def test_validation_rejects_a_graph_of_another_role(tiny_bundle):
    spec, report = tiny_bundle
    reference = eager_reference(ClassLogp(spec.head).eval(), SPECS["class_grad"])
    with pytest.raises(ExportError, match=r"classifier\.onnx: inputs are \['z', 'weights'\]"):
        validate_graph(report.graphs["class_grad"].path, SPECS["classifier"], DIMS, reference)


def test_a_network_breaking_the_contract_is_refused(tmp_path):
    too_many_classes = torch.nn.Linear(D, K + 1)
    with pytest.raises(
        ExportError, match=r"classifier\.onnx: output 'logits' has shape \['batch', 4\], the contract says"
    ):
        export_classifier(too_many_classes, DIMS, tmp_path / "classifier.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_network_that_fails_on_contract_shapes_is_named(tmp_path):
    wrong_input_size = torch.nn.Linear(D + 1, K)
    with pytest.raises(
        ExportError,
        match=r"classifier: the network fails on inputs of the contract's shapes \(z \[2, 6\] float32\): RuntimeError",
    ):
        export_classifier(wrong_input_size, DIMS, tmp_path / "classifier.onnx")


def tiny_gradient_head(seed: int) -> torch.nn.Module:
    """A head whose gradients are about 1e-8: far below any fixed absolute tolerance."""
    torch.manual_seed(seed)
    net = head()
    with torch.no_grad():
        net[0].weight.mul_(1e-8)
    return net


def test_gradient_validation_scales_with_the_gradients(tmp_path):
    report = export_class_grad(tiny_gradient_head(0), DIMS, tmp_path / "class_grad.onnx")
    assert report.max_diff["grad"] < 1e-12
    wrong = eager_reference(ClassLogp(tiny_gradient_head(1)).eval(), SPECS["class_grad"])
    with pytest.raises(ExportError, match=r"class_grad\.onnx failed validation at batch 1: output 'logp'"):
        validate_graph(report.path, SPECS["class_grad"], DIMS, wrong)
    perturbed = tiny_gradient_head(0)
    with torch.no_grad():
        perturbed[0].weight.mul_(1.01)  # gradients 1% off, logp unchanged to float32 precision
    with pytest.raises(ExportError, match=r"output 'grad' differs from PyTorch by"):
        validate_graph(
            report.path, SPECS["class_grad"], DIMS, eager_reference(ClassLogp(perturbed).eval(), SPECS["class_grad"])
        )


class Float32Only(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(D, K)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z.float())


def test_gradient_networks_must_also_run_in_float64(tmp_path):
    with pytest.raises(ExportError, match="class_grad: the network fails in float64"):
        export_class_grad(Float32Only(), DIMS, tmp_path / "class_grad.onnx")
