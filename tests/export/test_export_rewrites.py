"""Graph rewrites (export_tools.rewrites): same results, each weight held once, ReLU backward as a
mask product, int8 activations scaled per row so a small sample next to large ones keeps its resolution,
transposed convolutions as sub-pixel convolutions, and interleaves moved past convolutions to fewer channels."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny_networks
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from tiny_networks import D, K
from torch import nn

from export_tools.export import export_class_grad, export_composite_class_grad, export_generator
from export_tools.quantize import int8_dynamic_model
from export_tools.rewrites import (
    interleaves_after_convolutions,
    matmul_weights_model,
    multiply_by_masks,
    normalise_rows,
    share_transposed_weights,
    transposed_convolutions_as_convolutions,
)
from export_tools.specs import GraphDims

RNG = np.random.default_rng(0)
W = RNG.standard_normal((6, 5)).astype(np.float32)  # [N, K]: used as x @ W.T
W_BACK = RNG.standard_normal((5, 7)).astype(np.float32)


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, **feeds) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _products_model(x_rank: int = 2) -> onnx.ModelProto:
    """x [B, 5] (or [B, 3, 5]) -> (x @ W.T through Transpose, Gemm(x, W_back.T) + bias)."""
    dims = ["B", 5] if x_rank == 2 else ["B", 3, 5]
    nodes = [
        helper.make_node("Transpose", ["W"], ["W_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "W_t"], ["forward"]),
    ]
    outputs = [helper.make_tensor_value_info("forward", TensorProto.FLOAT, [*dims[:-1], 6])]
    initializers = [numpy_helper.from_array(W, "W")]
    if x_rank == 2:
        nodes.append(helper.make_node("Gemm", ["x", "W_back_t", "bias"], ["back"], transB=1))
        outputs.append(helper.make_tensor_value_info("back", TensorProto.FLOAT, ["B", 7]))
        initializers += [
            numpy_helper.from_array(W_BACK.T.copy(), "W_back_t"),
            numpy_helper.from_array(np.arange(7, dtype=np.float32), "bias"),
        ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)], outputs, initializers)


def test_share_transposed_weights_uses_gemm_trans_b_and_keeps_the_results():
    model = _products_model()
    shared = share_transposed_weights(model)
    ops = [node.op_type for node in shared.graph.node]
    assert "Transpose" not in ops and ops.count("Gemm") == 2
    assert [i.name for i in shared.graph.initializer] == ["W", "W_back_t", "bias"]
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    for want, got in zip(_run(model, x=x), _run(shared, x=x)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_share_transposed_weights_leaves_batched_products_alone():
    model = _products_model(x_rank=3)  # Gemm takes matrices only
    assert [n.op_type for n in share_transposed_weights(model).graph.node] == ["Transpose", "MatMul"]


def test_exported_gradient_graph_holds_each_weight_once(tmp_path):
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, K))
    export_class_grad(head, GraphDims(latent_dim=D, num_classes=K), tmp_path / "class_grad.onnx")  # validated
    model = onnx.load(tmp_path / "class_grad.onnx")
    matrices = [numpy_helper.to_array(i) for i in model.graph.initializer if len(i.dims) == 2]
    assert sum(m.size for m in matrices) == sum(p.numel() for p in head.parameters() if p.ndim == 2)
    assert not any(n.op_type in ("Transpose", "Where") for n in model.graph.node)


def test_multiply_by_masks_replaces_where_with_the_same_results():
    """Where(a <= 0, 0, g) (autograd's ReLU backward) and Where(c, 0, g) of any other condition."""
    nodes = [
        helper.make_node("LessOrEqual", ["a", "zero"], ["le"]),
        helper.make_node("Where", ["le", "zero", "g"], ["y"]),
        helper.make_node("Where", ["c", "zero", "g"], ["y2"]),
    ]
    matrix = lambda name, kind=TensorProto.FLOAT: helper.make_tensor_value_info(name, kind, ["B", 5])  # noqa: E731
    model = _model(
        nodes,
        [matrix("a"), matrix("g"), matrix("c", TensorProto.BOOL)],
        [matrix("y"), matrix("y2")],
        [numpy_helper.from_array(np.float32(0), "zero")],
    )
    masked = multiply_by_masks(model)
    assert sorted(n.op_type for n in masked.graph.node) == ["Cast", "Cast", "Greater", "Mul", "Mul", "Not"]
    a = np.maximum(RNG.standard_normal((4, 5)), 0).astype(np.float32)  # a ReLU output: many exact zeros
    feeds = dict(a=a, g=RNG.standard_normal((4, 5)).astype(np.float32), c=RNG.random((4, 5)) < 0.5)
    for want, got in zip(_run(model, **feeds), _run(masked, **feeds)):
        np.testing.assert_array_equal(got, want)


def test_matmul_weights_model_turns_every_weight_product_into_a_matmul():
    model = share_transposed_weights(_products_model())
    plain = matmul_weights_model(model)
    constants = {i.name for i in plain.graph.initializer}
    assert {n.op_type for n in plain.graph.node} == {"MatMul", "Add"}
    assert all(n.input[1] in constants for n in plain.graph.node if n.op_type == "MatMul")
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    for want, got in zip(_run(model, x=x), _run(plain, x=x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_int8_gives_each_row_its_own_scale(tmp_path):
    """Rows 1000x apart in size: per-tensor int8 rounds the small row to (nearly) nothing; per-row keeps it."""
    model = matmul_weights_model(_products_model())
    x = RNG.standard_normal((4, 5)).astype(np.float32) * np.array([[1.0], [1e-3], [1.0], [1e-4]], np.float32)
    want = _run(model, x=x)[0]
    np.testing.assert_allclose(_run(normalise_rows(model), x=x)[0], want, rtol=1e-4, atol=0)
    int8 = _run(int8_dynamic_model(model), x=x)[0]
    assert (np.linalg.norm(int8 - want, axis=1) / np.linalg.norm(want, axis=1)).max() < 0.05
    quantize_dynamic(model, tmp_path / "per_tensor.onnx", weight_type=QuantType.QInt8, per_channel=True)
    per_tensor = _run(onnx.load(tmp_path / "per_tensor.onnx"), x=x)[0]  # the scheme without normalise_rows
    assert np.linalg.norm(per_tensor[3] - want[3]) / np.linalg.norm(want[3]) > 0.5


def _transposed_convolution_model(deconv: nn.ConvTranspose2d, in_hw: tuple[int, int]) -> onnx.ModelProto:
    """x [B, C_in, h, w] -> deconv(x) as one ONNX ConvTranspose with the module's weights and attributes."""
    attributes = dict(
        strides=list(deconv.stride),
        pads=[*deconv.padding, *deconv.padding],
        group=deconv.groups,
        dilations=list(deconv.dilation),
        output_padding=list(deconv.output_padding),
    )
    inputs, initializers = ["x", "weight"], [numpy_helper.from_array(deconv.weight.detach().numpy(), "weight")]
    if deconv.bias is not None:
        inputs.append("bias")
        initializers.append(numpy_helper.from_array(deconv.bias.detach().numpy(), "bias"))
    node = helper.make_node("ConvTranspose", inputs, ["y"], **attributes)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", deconv.in_channels, *in_hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", deconv.out_channels, "h", "w"])
    return _model([node], [x], [y], initializers)


@pytest.mark.parametrize(
    "stride, kernel, padding, bias",
    [(2, 4, 1, True), (2, 4, 1, False), (1, 3, 1, True), (2, 2, 0, True), (3, 5, 1, True), (4, 8, 2, True)],
)
def test_transposed_convolution_becomes_sub_pixel_convolutions_with_the_same_results(stride, kernel, padding, bias):
    """Against PyTorch's ConvTranspose2d: output phases fed by 1 to 3 taps per axis, stride 1 (one Conv)."""
    torch.manual_seed(stride * 10 + kernel)
    deconv = nn.ConvTranspose2d(3, 5, kernel, stride, padding, bias=bias)
    model = _transposed_convolution_model(deconv, (5, 6))
    rewritten = transposed_convolutions_as_convolutions(model)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "ConvTranspose" not in ops and ops.count("Conv") == stride * stride
    assert ops.count("DepthToSpace") == (stride > 1)
    x = RNG.standard_normal((2, 3, 5, 6)).astype(np.float32)
    with torch.no_grad():
        want = deconv(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(rewritten, x=x)[0], want, rtol=1e-5, atol=1e-5)


def test_transposed_convolution_with_asymmetric_pads_is_rewritten_exactly():
    torch.manual_seed(1)
    deconv = nn.ConvTranspose2d(3, 4, 4, 2, 1)
    model = _transposed_convolution_model(deconv, (5, 6))
    for attribute in model.graph.node[0].attribute:
        if attribute.name == "pads":
            attribute.ints[:] = [2, 1, 0, 1]  # top, left, bottom, right: still 2 h x 2 w
    x = RNG.standard_normal((2, 3, 5, 6)).astype(np.float32)
    want = _run(model, x=x)[0]
    rewritten = transposed_convolutions_as_convolutions(model)
    assert "ConvTranspose" not in [n.op_type for n in rewritten.graph.node]
    np.testing.assert_allclose(_run(rewritten, x=x)[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "changes",
    [dict(groups=3, in_channels=3, out_channels=6), dict(output_padding=1), dict(dilation=2), dict(kernel_size=3)],
)
def test_transposed_convolutions_the_rewrite_does_not_handle_are_kept(changes):
    """Groups, output padding, dilation, and an output of odd size (phases of unequal length) stay ConvTranspose."""
    torch.manual_seed(2)
    deconv = nn.ConvTranspose2d(
        **{**dict(in_channels=3, out_channels=4, kernel_size=4, stride=2, padding=1), **changes}
    )
    model = _transposed_convolution_model(deconv, (5, 6))
    rewritten = transposed_convolutions_as_convolutions(model)
    assert [n.op_type for n in rewritten.graph.node] == ["ConvTranspose"]
    x = RNG.standard_normal((2, 3, 5, 6)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(_run(rewritten, x=x)[0], deconv(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)


def test_exported_generator_and_composite_graphs_have_no_2d_transposed_convolution(tmp_path):
    """The export rewrites the image ones (and validates the rewritten graph against PyTorch)."""
    torch.manual_seed(0)
    spec = tiny_networks.tiny_spec()
    dims = GraphDims(latent_dim=D, num_classes=K, image_hw=spec.image_hw)
    export_generator(spec.generator, spec.generator_convention, dims, tmp_path / "generator.onnx")
    export_composite_class_grad(spec.generator, spec.image_classifier, dims, tmp_path / "composite.onnx")
    for name in ("generator.onnx", "composite.onnx"):
        nodes = onnx.load(tmp_path / name).graph.node
        assert "DepthToSpace" in {n.op_type for n in nodes}
        left = [n for n in nodes if n.op_type == "ConvTranspose"]  # the composite's 3-d LRN backward stays
        assert all(len(helper.get_attribute_value(a)) == 3 for n in left for a in n.attribute if a.name == "strides")


def _interleave_then_convolution_model(
    conv: nn.Conv2d, stride: int, in_hw: tuple[int, int], mode: str = "DCR", chain: tuple[str, ...] = ("LeakyRelu",)
) -> onnx.ModelProto:
    """x [B, s * s * C, h, w] -> conv(unary ops(DepthToSpace(x))) as ONNX nodes, the module's weights."""
    nodes = [helper.make_node("DepthToSpace", ["x"], ["interleaved"], blocksize=stride, mode=mode)]
    source = "interleaved"
    for index, op in enumerate(chain):
        nodes.append(helper.make_node(op, [source], [f"u{index}"]))
        source = f"u{index}"
    inputs, initializers = [source, "weight"], [numpy_helper.from_array(conv.weight.detach().numpy(), "weight")]
    if conv.bias is not None:
        inputs.append("bias")
        initializers.append(numpy_helper.from_array(conv.bias.detach().numpy(), "bias"))
    nodes.append(
        helper.make_node(
            "Conv", inputs, ["y"], pads=[*conv.padding, *conv.padding], strides=list(conv.stride), group=conv.groups
        )
    )
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", stride * stride * conv.in_channels, *in_hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", conv.out_channels, "h", "w"])
    return _model(nodes, [x], [y], initializers)


@pytest.mark.parametrize(
    "stride, kernel, padding, bias, chain",
    [
        (2, 3, 1, True, ("LeakyRelu",)),
        (2, 3, 1, False, ()),
        (2, 1, 0, True, ("Relu", "Sigmoid")),
        (2, 5, 2, True, ("LeakyRelu",)),
        (3, 3, 1, True, ("Tanh",)),
    ],
)
def test_interleave_moves_past_a_convolution_to_fewer_channels_with_the_same_results(
    stride, kernel, padding, bias, chain
):
    torch.manual_seed(kernel * 10 + stride)
    conv = nn.Conv2d(6, 2, kernel, 1, padding, bias=bias)
    model = _interleave_then_convolution_model(conv, stride, (4, 5), chain=chain)
    moved = interleaves_after_convolutions(model)
    ops = [n.op_type for n in moved.graph.node]
    assert ops == [*chain, "Conv", "DepthToSpace"]  # the interleave now moves the 2 channels, not the 6
    x = RNG.standard_normal((3, stride * stride * 6, 4, 5)).astype(np.float32)
    with torch.no_grad():
        want = conv(_torch_unary(chain, _depth_to_space_dcr(torch.from_numpy(x), stride))).numpy()
    np.testing.assert_allclose(_run(moved, x=x)[0], want, rtol=1e-5, atol=1e-5)


def _depth_to_space_dcr(x: torch.Tensor, s: int) -> torch.Tensor:
    """ONNX DepthToSpace in DCR mode (PyTorch's pixel_shuffle is the CRD order)."""
    batch, depth, height, width = x.shape
    blocks = x.reshape(batch, s, s, depth // (s * s), height, width).permute(0, 3, 4, 1, 5, 2)
    return blocks.reshape(batch, depth // (s * s), height * s, width * s)


def _torch_unary(chain: tuple[str, ...], x: torch.Tensor) -> torch.Tensor:
    ops = {"LeakyRelu": lambda t: nn.functional.leaky_relu(t, 0.01), "Relu": torch.relu}
    ops.update(Sigmoid=torch.sigmoid, Tanh=torch.tanh)
    for op in chain:
        x = ops[op](x)
    return x


@pytest.mark.parametrize(
    "change",
    ["as many output channels", "strided", "grouped", "CRD interleave", "output size changes", "interleave used twice"],
)
def test_interleaves_the_rewrite_does_not_handle_are_kept(change):
    torch.manual_seed(3)
    out_channels = 6 if change == "as many output channels" else 2
    groups, stride = (2, 1) if change == "grouped" else (1, 2 if change == "strided" else 1)
    padding = 0 if change == "output size changes" else 1
    conv = nn.Conv2d(6, out_channels, 3, stride, padding, groups=groups)
    mode = "CRD" if change == "CRD interleave" else "DCR"
    model = _interleave_then_convolution_model(conv, 2, (4, 5), mode=mode)
    if change == "interleave used twice":
        model.graph.output.append(helper.make_tensor_value_info("interleaved", TensorProto.FLOAT, None))
    kept = interleaves_after_convolutions(model)
    assert [n.op_type for n in kept.graph.node] == ["DepthToSpace", "LeakyRelu", "Conv"]
    x = RNG.standard_normal((2, 24, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(_run(kept, x=x)[0], _run(model, x=x)[0])


class _ConvAfterDeconvGenerator(nn.Module):
    """z [B, D] -> x [B, 3, 10, 10]: a stride-2 transposed convolution, then a 3x3 convolution to 3 channels."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(D, 8 * 5 * 5)
        self.deconv = nn.ConvTranspose2d(8, 8, 4, 2, 1)
        self.to_rgb = nn.Conv2d(8, 3, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = nn.functional.leaky_relu(self.deconv(self.fc(z).view(-1, 8, 5, 5)), 0.2)
        return torch.tanh(self.to_rgb(h))


def test_an_exported_generator_interleaves_its_three_channels_not_the_eight_before_them(tmp_path):
    torch.manual_seed(0)
    spec = tiny_networks.tiny_spec()
    dims = GraphDims(latent_dim=D, num_classes=K, image_hw=spec.image_hw)
    export_generator(_ConvAfterDeconvGenerator(), spec.generator_convention, dims, tmp_path / "g.onnx")  # validated
    model = onnx.load(tmp_path / "g.onnx")
    producers = {out: node for node in model.graph.node for out in node.output}
    (interleave,) = [n for n in model.graph.node if n.op_type == "DepthToSpace"]
    convolution = producers[interleave.input[0]]
    assert convolution.op_type == "Conv"
    weight = next(i for i in model.graph.initializer if i.name == convolution.input[1])
    assert list(weight.dims[:2]) == [4 * 3, 4 * 8]  # every output phase of the 3 channels, from the 4 phases of 8
