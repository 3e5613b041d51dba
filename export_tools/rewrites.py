"""Graph rewrites of weight products (an activation times a 2-d weight initializer), on onnx.ModelProto.

- `share_transposed_weights`: MatMul(x, Transpose(W)) becomes Gemm(x, W, transB=1), so a weight that
  the gradient graph uses forwards and backwards is held once. ONNX Runtime would otherwise fold
  the Transpose into a second, transposed copy: twice the weight bytes in memory and in the caches.
- `matmul_weights_model`: every weight product a MatMul(x, W) by an initializer (what ONNX Runtime's
  quantiser recognises), transposed copies made where needed.
- `normalise_rows`: each such MatMul runs on x / max|x| per row and rescales after, so that a
  per-tensor dynamic quantisation of x gives every sample its own scale.
- `multiply_by_masks`: Where(c, 0, g), autograd's ReLU backward, becomes g * float(not c), which
  ONNX Runtime's CPU kernels run about 10x faster (Where with a broadcast scalar is single-threaded).
- `transposed_convolutions_as_convolutions`: a strided ConvTranspose becomes one small Conv per output
  phase and a DepthToSpace (sub-pixel convolution). ONNX Runtime's CPU ConvTranspose is a GEMM and a
  col2im; its Conv has the blocked (NCHWc) kernels, and no product by a zero the stride inserts is done.
- `interleaves_after_convolutions`: a DepthToSpace followed (through elementwise unary ops) by a Conv
  to fewer channels becomes one Conv of every output phase over the phase planes, then the DepthToSpace:
  ONNX Runtime's DepthToSpace copies one number at a time, so it should move the smaller tensor.

Every rewrite returns a new model and keeps inputs, outputs and results (up to float rounding); nodes
and initializers a rewrite leaves without users are dropped.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

_TINY = np.float32(np.finfo(np.float32).tiny)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _replace_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> None:
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _drop_unused(model: onnx.ModelProto) -> None:
    """Remove, in place, the nodes none of whose outputs is used (until none is left) and the initializers
    no node uses; a name used inside a subgraph (Loop, If) counts as used."""
    graph = model.graph

    def used_names(nodes) -> set[str]:
        names = set()
        for node in nodes:
            names.update(node.input)
            for attribute in node.attribute:
                for subgraph in [attribute.g, *attribute.graphs]:
                    names |= used_names(subgraph.node)
        return names

    outputs = {o.name for o in graph.output}
    nodes = list(graph.node)
    while True:
        used = used_names(nodes) | outputs
        live = [node for node in nodes if any(name in used for name in node.output)]
        if len(live) == len(nodes):
            break
        nodes = live
    _replace_nodes(model, nodes)
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _inferred_values(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Every value of `model` with the type and shape that ONNX shape inference gives it."""
    inferred = onnx.shape_inference.infer_shapes(model)
    return [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Each value's shape as shape inference gives it (None for a symbolic or unknown size)."""
    return {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in _inferred_values(model)
        if v.type.tensor_type.HasField("shape")
    }


def _matrix_inputs(model: onnx.ModelProto) -> set[str]:
    """Names of the values that shape inference proves to be 2-d (Gemm takes only matrices)."""
    return {
        v.name
        for v in _inferred_values(model)
        if v.type.tensor_type.HasField("shape") and len(v.type.tensor_type.shape.dim) == 2
    }


def share_transposed_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with MatMul(x, W') -> Gemm(x, W, transB=1) for 2-d x, where W' is Transpose(W) of a 2-d
    initializer W or an initializer equal to W.T (the exporter folds small ones itself); a Transpose
    or initializer left without users is dropped."""
    model = _copy(model)
    graph = model.graph
    weights = {init.name: init for init in graph.initializer if len(init.dims) == 2}
    transposed = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Transpose" and n.input[0] in weights and _attributes(n).get("perm", [1, 0]) == [1, 0]
    }
    by_shape: dict[tuple, list[str]] = {}
    for name, init in weights.items():
        by_shape.setdefault(tuple(init.dims), []).append(name)
    product_weights = {n.input[1] for n in graph.node if n.op_type == "MatMul"} & set(weights)
    for name in sorted(product_weights):
        folded = numpy_helper.to_array(weights[name])
        for other in by_shape.get(tuple(reversed(weights[name].dims)), []):
            if (
                other != name
                and other not in transposed
                and np.array_equal(numpy_helper.to_array(weights[other]).T, folded)
            ):
                transposed[name] = other
                break
    if not transposed:
        return model
    matrices = _matrix_inputs(model)
    nodes = []
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in transposed and node.input[0] in matrices:
            nodes.append(
                helper.make_node(
                    "Gemm", [node.input[0], transposed[node.input[1]]], list(node.output), name=node.name, transB=1
                )
            )
        else:
            nodes.append(node)
    _replace_nodes(model, nodes)
    _drop_unused(model)
    return model


def matmul_weights_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every weight product a MatMul by an initializer: Transpose(W) of a 2-d initializer
    folded into a transposed initializer, Gemm (alpha = beta = 1, no transA) split into MatMul (+ Add),
    its transB folded the same way."""
    model = _copy(model)
    graph = model.graph
    constants = {init.name: init for init in graph.initializer}

    def transposed_initializer(name: str, new_name: str) -> str:
        if new_name not in constants:
            folded = numpy_helper.from_array(numpy_helper.to_array(constants[name]).T.copy(), new_name)
            graph.initializer.append(folded)
            constants[new_name] = folded
        return new_name

    nodes = []
    for node in graph.node:
        if node.op_type == "Transpose" and node.input[0] in constants and len(constants[node.input[0]].dims) == 2:
            transposed_initializer(node.input[0], node.output[0])
            continue
        attributes = _attributes(node)
        plain_gemm = (
            node.op_type == "Gemm"
            and not attributes.get("transA")
            and attributes.get("alpha", 1.0) == 1.0
            and attributes.get("beta", 1.0) == 1.0
        )
        if plain_gemm and node.input[1] in constants:
            weight = node.input[1]
            if attributes.get("transB"):
                weight = transposed_initializer(weight, f"{weight}/transposed")
            product = f"{node.output[0]}/matmul" if len(node.input) > 2 else node.output[0]
            nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product]))
            if len(node.input) > 2:
                nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]]))
            continue
        nodes.append(node)
    _replace_nodes(model, nodes)
    _drop_unused(model)
    return model


def normalise_rows(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` (weight products already MatMuls, see matmul_weights_model) with each MatMul(x, W) of a
    2-d x and an initializer W computed as MatMul(x / s, W) * s, s = max(max_k |x[b, k]|, tiny) [B, 1]."""
    model = _copy(model)
    constants = {init.name for init in model.graph.initializer}
    matrices = _matrix_inputs(model)
    model.graph.initializer.extend(
        [numpy_helper.from_array(np.array([1], np.int64), "rows/axis"), numpy_helper.from_array(_TINY, "rows/tiny")]
    )
    make, nodes = helper.make_node, []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in constants and node.input[0] in matrices:
            x, out = node.input[0], node.output[0]
            nodes += [
                make("Abs", [x], [f"{out}/abs"]),
                make("ReduceMax", [f"{out}/abs", "rows/axis"], [f"{out}/row_max"], keepdims=1),
                make("Max", [f"{out}/row_max", "rows/tiny"], [f"{out}/row_scale"]),
                make("Div", [x, f"{out}/row_scale"], [f"{out}/normalised"]),
                make("MatMul", [f"{out}/normalised", node.input[1]], [f"{out}/normalised_product"]),
                make("Mul", [f"{out}/normalised_product", f"{out}/row_scale"], [out]),
            ]
        else:
            nodes.append(node)
    _replace_nodes(model, nodes)
    return model


def multiply_by_masks(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with Where(c, 0, g) of a float32 g and a zero scalar constant computed as Mul(g, Cast(keep)),
    keep = Greater(a, b) when c is LessOrEqual(a, b), else Not(c); a comparison left unused is dropped.

    Equal results for finite g (0 * g = 0 up to the sign of zero)."""
    model = _copy(model)
    graph = model.graph
    zeros = {
        init.name
        for init in graph.initializer
        if int(np.prod(init.dims)) == 1 and not numpy_helper.to_array(init).any()
    }
    floats = {v.name for v in _inferred_values(model) if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    comparisons = {n.output[0]: n for n in graph.node if n.op_type == "LessOrEqual"}
    make, nodes = helper.make_node, []
    for node in graph.node:
        if node.op_type == "Where" and node.input[1] in zeros and node.input[2] in floats:
            (condition, _, gradient), out = node.input, node.output[0]
            keep = f"{out}/keep"
            if condition in comparisons:
                nodes.append(make("Greater", list(comparisons[condition].input), [keep]))
            else:
                nodes.append(make("Not", [condition], [keep]))
            nodes += [
                make("Cast", [keep], [f"{out}/mask"], to=onnx.TensorProto.FLOAT),
                make("Mul", [gradient, f"{out}/mask"], [out]),
            ]
        else:
            nodes.append(node)
    _replace_nodes(model, nodes)
    _drop_unused(model)
    return model


def _phase_taps(stride: int, kernel: int, pad_begin: int) -> list[list[tuple[int, int]]]:
    """For one axis of a ConvTranspose: per output phase a (output index s * m + a), the (input offset d,
    kernel tap k) pairs it sums, input index m + d, in increasing d (k = a + pad_begin - s * d)."""
    return [
        [
            (d, a + pad_begin - stride * d)
            for d in range(-kernel, kernel + 1)
            if 0 <= a + pad_begin - stride * d < kernel
        ]
        for a in range(stride)
    ]


def _phase_convolutions(node: onnx.NodeProto, weight: np.ndarray, in_hw: tuple[int, int]):
    """The per-phase Conv (weight [C_out, C_in, kh, kw], pads [top, left, bottom, right]) of a plain 2-d
    ConvTranspose (weight [C_in, C_out, k_h, k_w]) on inputs of size in_hw, in phase order (a, b), or
    None when the node is not one this rewrite handles."""
    attributes = _attributes(node)
    kernel = list(weight.shape[2:])
    strides = list(attributes.get("strides", [1, 1]))
    pads = list(attributes.get("pads", [0, 0, 0, 0]))
    plain = (
        attributes.get("group", 1) == 1
        and list(attributes.get("dilations", [1, 1])) == [1, 1]
        and not any(attributes.get("output_padding", [0, 0]))
        and attributes.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
        and "output_shape" not in attributes
        and len(kernel) == 2
        and strides[0] == strides[1]
    )
    if not plain:
        return None
    stride = strides[0]
    axes = []  # per axis: per phase (taps, pad_begin, pad_end)
    for axis in range(2):
        size, k = in_hw[axis], kernel[axis]
        out = stride * (size - 1) + k - pads[axis] - pads[axis + 2]
        if out % stride:
            return None
        phases = []
        for taps in _phase_taps(stride, k, pads[axis]):
            if not taps:
                return None
            begin, end = -taps[0][0], (out // stride - 1 + taps[-1][0]) - (size - 1)
            if begin < 0 or end < 0:
                return None
            phases.append((taps, begin, end))
        axes.append(phases)
    convolutions = []
    for rows, row_begin, row_end in axes[0]:
        for cols, col_begin, col_end in axes[1]:
            taps = weight[:, :, [k for _, k in rows]][:, :, :, [k for _, k in cols]]  # [C_in, C_out, kh, kw]
            convolutions.append((taps.transpose(1, 0, 2, 3).copy(), [row_begin, col_begin, row_end, col_end]))
    return stride, convolutions


def transposed_convolutions_as_convolutions(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each 2-d ConvTranspose of an initializer weight (group 1, no dilation or output padding,
    equal strides, every output phase fed) on an input of known height and width as Conv per output phase
    (stride 1: one Conv of the flipped kernel), then Concat and DepthToSpace (DCR): the same results up to
    float rounding. Other ConvTranspose nodes are left as they are."""
    model = _copy(model)
    graph = model.graph
    if not any(node.op_type == "ConvTranspose" for node in graph.node):
        return model  # nothing to rewrite: no shape inference
    constants = {init.name: init for init in graph.initializer}
    shapes = _inferred_shapes(model)
    make, nodes = helper.make_node, []
    for node in graph.node:
        shape = shapes.get(node.input[0], [])
        plan = None
        if node.op_type == "ConvTranspose" and node.input[1] in constants and len(shape) == 4 and all(shape[2:]):
            plan = _phase_convolutions(node, numpy_helper.to_array(constants[node.input[1]]), tuple(shape[2:]))
        if plan is None:
            nodes.append(node)
            continue
        stride, convolutions = plan
        out = node.output[0]
        bias = list(node.input[2:3])
        phases = [out] if stride == 1 else [f"{out}/phase{i}" for i in range(len(convolutions))]
        for i, ((weight, pads), phase) in enumerate(zip(convolutions, phases)):
            name = f"{out}/phase{i}/weight"
            graph.initializer.append(numpy_helper.from_array(weight, name))
            nodes.append(
                make("Conv", [node.input[0], name, *bias], [phase], kernel_shape=list(weight.shape[2:]), pads=pads)
            )
        if stride > 1:
            nodes.append(make("Concat", phases, [f"{out}/phases"], axis=1))
            nodes.append(make("DepthToSpace", [f"{out}/phases"], [out], blocksize=stride, mode="DCR"))
    _replace_nodes(model, nodes)
    _drop_unused(model)
    return model


# Elementwise ops of one input that commute with DepthToSpace (they act on each number alone).
_UNARY = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Softplus", "HardSigmoid", "Neg", "Abs"}


def _interleave_phases(kernel: int, pad_begin: int, stride: int) -> list[list[tuple[int, int, int]]] | None:
    """For one axis of a stride-1 Conv of an image interleaved from `stride` phases: per output phase, the
    (tap, input phase, plane offset) triples it reads (output index stride * m + phase, input plane index
    m + offset), or None when some output phase would need negative padding."""
    phases = []
    for phase in range(stride):
        taps = [(tap, *reversed(divmod(phase - pad_begin + tap, stride))) for tap in range(kernel)]
        offsets = [offset for _, _, offset in taps]
        if min(offsets) > 0 or max(offsets) < 0:
            return None
        phases.append(taps)
    return phases


def interleaves_after_convolutions(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with DepthToSpace(DCR, s) -> unary elementwise ops -> Conv (constant weight, group 1, stride and
    dilation 1, output the size of its input, fewer output than input channels), each value used only by the
    next, as the unary ops on the phases, one Conv of every output phase over all s * s phase planes, and a
    DepthToSpace of its output: the same results up to float rounding."""
    model = _copy(model)
    graph = model.graph
    if not any(node.op_type == "DepthToSpace" for node in graph.node):
        return model  # nothing to rewrite: no shape inference
    constants = {init.name: init for init in graph.initializer}
    shapes = _inferred_shapes(model)
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def only_user(name: str) -> onnx.NodeProto | None:
        found = users.get(name, [])
        return found[0] if len(found) == 1 and name not in outputs else None

    replaced: dict[int, list[onnx.NodeProto]] = {}  # id of the DepthToSpace -> the nodes replacing the pattern
    dropped: set[int] = set()
    for node in graph.node:
        attributes = _attributes(node)
        if node.op_type != "DepthToSpace" or attributes.get("mode", b"DCR") not in (b"DCR", "DCR"):
            continue
        chain, user = [], only_user(node.output[0])
        while user is not None and user.op_type in _UNARY and len(user.input) == 1:
            chain.append(user)
            user = only_user(user.output[0])
        if user is None or user.op_type != "Conv" or user.input[1] not in constants:
            continue
        conv, conv_attributes = user, _attributes(user)
        weight = numpy_helper.to_array(constants[conv.input[1]])  # [C_out, C, k_h, k_w]
        stride, shape = attributes["blocksize"], shapes.get(node.input[0], [])
        pads = list(conv_attributes.get("pads", [0, 0, 0, 0]))
        plain = (
            weight.ndim == 4
            and len(shape) == 4
            and shape[1] == stride * stride * weight.shape[1]
            and weight.shape[0] < weight.shape[1]
            and (len(conv.input) < 3 or not conv.input[2] or conv.input[2] in constants)
            and conv_attributes.get("group", 1) == 1
            and list(conv_attributes.get("strides", [1, 1])) == [1, 1]
            and list(conv_attributes.get("dilations", [1, 1])) == [1, 1]
            and conv_attributes.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
            and pads[0] + pads[2] == weight.shape[2] - 1  # the output keeps the input's size
            and pads[1] + pads[3] == weight.shape[3] - 1
        )
        rows = _interleave_phases(weight.shape[2], pads[0], stride) if plain else None
        cols = _interleave_phases(weight.shape[3], pads[1], stride) if plain else None
        if rows is None or cols is None:
            continue
        out, channels = conv.output[0], weight.shape[1]
        nodes, source = [], node.input[0]
        for index, op in enumerate(chain):  # the unary ops, on the phases
            copy = onnx.NodeProto()
            copy.CopyFrom(op)
            copy.input[0], copy.output[0] = source, f"{out}/phases/{index}"
            nodes.append(copy)
            source = copy.output[0]
        # one Conv for all output phases (output channel (row phase * s + col phase) * C_out + o, the order
        # DepthToSpace DCR reads), over the offsets any phase reads: one pass over the s * s * C planes
        row_first = min(offset for taps in rows for _, _, offset in taps)
        col_first = min(offset for taps in cols for _, _, offset in taps)
        height = max(offset for taps in rows for _, _, offset in taps) - row_first + 1
        width = max(offset for taps in cols for _, _, offset in taps) - col_first + 1
        count = weight.shape[0]
        phase_weight = np.zeros((stride * stride * count, stride * stride * channels, height, width), weight.dtype)
        for row_phase, row_taps in enumerate(rows):
            for col_phase, col_taps in enumerate(cols):
                first = (row_phase * stride + col_phase) * count
                for i, a, row_offset in row_taps:
                    for j, b, col_offset in col_taps:
                        block = (a * stride + b) * channels
                        phase_weight[
                            first : first + count,
                            block : block + channels,
                            row_offset - row_first,
                            col_offset - col_first,
                        ] = weight[:, :, i, j]
        graph.initializer.append(numpy_helper.from_array(phase_weight, f"{out}/phases/weight"))
        bias = []
        if len(conv.input) > 2 and conv.input[2]:
            bias_values = np.tile(numpy_helper.to_array(constants[conv.input[2]]), stride * stride)
            graph.initializer.append(numpy_helper.from_array(bias_values, f"{out}/phases/bias"))
            bias = [f"{out}/phases/bias"]
        phase_pads = [-row_first, -col_first, height - 1 + row_first, width - 1 + col_first]
        nodes.append(
            helper.make_node(
                "Conv",
                [source, f"{out}/phases/weight", *bias],
                [f"{out}/phases"],
                kernel_shape=[height, width],
                pads=phase_pads,
            )
        )
        nodes.append(helper.make_node("DepthToSpace", [f"{out}/phases"], [out], blocksize=stride, mode="DCR"))
        replaced[id(node)] = nodes
        dropped.update(id(op) for op in [*chain, conv])
    if replaced:
        rebuilt = []
        for node in graph.node:
            if id(node) in replaced:
                rebuilt.extend(replaced[id(node)])
            elif id(node) not in dropped:
                rebuilt.append(node)
        _replace_nodes(model, rebuilt)
        _drop_unused(model)
    return model
