"""int8 class_grad weights (export_tools.quantize, BundleSpec.class_grad_precision): same contract, the
runtime loads and samples with it, gradients agree with PyTorch; a network int8 cannot represent is refused."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
import torch
from tiny_networks import CLASSES, D, K, generator_only_spec
from torch import nn

from export_tools import ExportError
from export_tools.bundle_writer import write_bundle
from export_tools.export import ClassLogp, export_class_grad
from export_tools.quantize import LOST_COSINE, MAX_LOGP_RELATIVE_ERROR, MIN_MEDIAN_GRAD_COSINE, quantize_int8
from export_tools.specs import SPECS, GraphDims
from export_tools.validate import check_signature, open_session
from latent_onnx import Pipeline

DIMS = GraphDims(latent_dim=D, num_classes=K)


class CancellingHead(nn.Module):
    """z [B, D] -> logits [B, K] = (A + 0.001 B) z - A z: nearly equal products cancel, so what is left
    (0.001 B, the gradient) is far below int8's resolution of A."""

    def __init__(self):
        super().__init__()
        a, b = torch.randn(K, D), torch.randn(K, D)
        self.products = nn.Linear(D, 2 * K, bias=False)
        self.products.weight.data = torch.cat([a, a + 1e-3 * b])
        self.difference = nn.Linear(2 * K, K, bias=False)
        self.difference.weight.data = torch.cat([-torch.eye(K), torch.eye(K)], dim=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.difference(self.products(z))


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    """(PyTorch head, report) of a bundle with a class_grad of int8 weights."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, K))
    spec = generator_only_spec(name="tiny-int8", head=net, classes=CLASSES, class_grad_precision="int8")
    return net, write_bundle(tmp_path_factory.mktemp("bundles") / "tiny-int8", spec)


def test_int8_class_grad_keeps_the_contract_and_records_its_figures(int8_bundle):
    _, report = int8_bundle
    path = report.path / "class_grad.onnx"
    model = onnx.load(path)
    assert "MatMulInteger" in {node.op_type for node in model.graph.node}
    assert not any(node.op_type == "MatMul" for node in model.graph.node)  # every weight product is int8
    onnx.checker.check_model(model)
    assert model.ir_version == 9 and [o.version for o in model.opset_import if o.domain == ""] == [
        SPECS["class_grad"].opset
    ]
    check_signature(open_session(path), SPECS["class_grad"], DIMS)
    figures = report.manifest["provenance"]["precision"]["class_grad"]
    assert figures == report.precision["class_grad"] and figures["weights"] == "int8"
    assert (
        figures["grad_cosine_median"] >= MIN_MEDIAN_GRAD_COSINE
        and figures["logp_relative_error"] <= MAX_LOGP_RELATIVE_ERROR
    )
    assert figures["grad_cosine_min"] >= LOST_COSINE and figures["grad_lost_fraction"] == 0.0
    assert 0 < figures["grad_relative_error"] < 0.1  # quantised: not the float32 graph, but close to it
    assert report.manifest["graphs"]["class_grad"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_runtime_samples_with_the_int8_graph_and_its_gradients_follow_pytorch(int8_bundle):
    net, report = int8_bundle
    pipe = Pipeline.from_bundle(report.path, device="cpu", threads=1)
    rng = np.random.default_rng(3)
    z = rng.standard_normal((5, D), dtype=np.float32)
    weights = np.eye(K, dtype=np.float32)[rng.integers(0, K, 5)]
    got = pipe.runner("class_grad").run(z=z, weights=weights)
    z_torch = torch.from_numpy(z).requires_grad_(True)
    logp = ClassLogp(net)(z_torch, torch.from_numpy(weights))
    (want,) = torch.autograd.grad(logp.sum(), z_torch)
    want = want.numpy()
    cosine = np.sum(got["grad"] * want, axis=1) / (np.linalg.norm(got["grad"], axis=1) * np.linalg.norm(want, axis=1))
    assert np.median(cosine) >= MIN_MEDIAN_GRAD_COSINE and cosine.min() >= LOST_COSINE
    np.testing.assert_allclose(got["logp"], logp.detach().numpy(), rtol=0.05, atol=0.01)
    result = pipe.generate(classes="sneaker", n=2, seed=0)
    assert result.pixels.shape == (2, 8, 8, 3) and result.pixels.dtype == np.uint8


def test_a_network_int8_cannot_represent_is_refused_with_the_figures(tmp_path):
    torch.manual_seed(0)
    export_class_grad(CancellingHead(), DIMS, tmp_path / "class_grad.onnx")
    before = (tmp_path / "class_grad.onnx").read_bytes()
    with pytest.raises(
        ExportError,
        match=r"class_grad\.onnx \(int8\) failed validation against float32 at batches "
        r"\(1, 8\): median gradient cosine -?[0-9.]+ \(needs >= 0\.99\), min gradient cosine -?[0-9.]+ \(needs >= 0\.9\), "
        r"logp relative error [0-9.]+ \(allowed 0\.1\), gradient relative error ",
    ):
        quantize_int8(tmp_path / "class_grad.onnx", tmp_path / "class_grad.onnx", "class_grad", DIMS)
    assert (tmp_path / "class_grad.onnx").read_bytes() == before  # the float32 graph is left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class_grad.onnx"]


def test_a_bundle_asking_for_int8_of_such_a_network_is_not_written(tmp_path):
    torch.manual_seed(0)
    spec = generator_only_spec(head=CancellingHead(), classes=CLASSES, class_grad_precision="int8")
    with pytest.raises(ExportError, match=r"class_grad\.onnx \(int8\) failed validation.*median gradient cosine"):
        write_bundle(tmp_path / "bundle", spec)
    assert list(tmp_path.iterdir()) == []


def test_auto_precision_keeps_float32_when_int8_fails_and_records_why(tmp_path):
    torch.manual_seed(0)
    lines = []
    spec = generator_only_spec(head=CancellingHead(), classes=CLASSES, class_grad_precision="auto")
    report = write_bundle(tmp_path / "bundle", spec, progress=lines.append)
    assert not any(n.op_type == "MatMulInteger" for n in onnx.load(report.path / "class_grad.onnx").graph.node)
    recorded = report.manifest["provenance"]["precision"]["class_grad"]
    assert recorded["weights"] == "float32" and "median gradient cosine" in recorded["int8_refused"]
    assert any(line.startswith("class_grad: kept float32 weights, int8 did not pass its check") for line in lines)
    assert Pipeline.from_bundle(report.path, device="cpu").generate(
        classes="sneaker", n=1, seed=0, steps=2
    ).z.shape == (1, D)


def test_auto_precision_takes_int8_when_it_passes(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, K))
    report = write_bundle(
        tmp_path / "bundle", generator_only_spec(head=net, classes=CLASSES, class_grad_precision="auto")
    )
    assert report.manifest["provenance"]["precision"]["class_grad"]["weights"] == "int8"


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(class_grad_precision="int4"), r"class_grad_precision must be one of \('float32', 'int8', 'auto'\)"),
        (dict(class_grad_precision="int8"), "needs a head"),
    ],
)
def test_bad_precision_options_are_refused(tmp_path, changes, message):
    with pytest.raises(ExportError, match=message):
        write_bundle(tmp_path / "bundle", generator_only_spec(**changes))


def test_only_gradient_graphs_are_quantised(tmp_path):
    with pytest.raises(ExportError, match="for gradient graphs, not 'classifier'"):
        quantize_int8(tmp_path / "classifier.onnx", tmp_path / "out.onnx", "classifier", DIMS)
