"""Tiny real bundles for the runtime tests, built with onnx.helper (no torch).

Sizes: D=6 latent, 4x4 images, K=3 classes, a 6-word vocabulary, T=5 caption tokens.
The graphs compute their gradients analytically with ONNX ops:
- generator: image = round(255 * sigmoid(z @ Wg + bg)) as uint8 [B, 4, 4, 3]
- classifier / class_grad: a linear softmax head, grad = (w - softmax * sum(w)) @ Wc^T
- caption_grad: a bag-of-words softmax on z, grad = (counts - softmax * sum(mask)) @ Wv^T
- encoder: z = (image / 255) @ We
- composite_class_grad: a linear softmax classifier on sigmoid(z @ Wg + bg), differentiated through it
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

D, H, W, K, T = 6, 4, 4, 3, 5
PIXELS = H * W * 3
CLASSES = ["sneaker", "sandal", "ankle boot, boot"]
VOCABULARY = ["<eos>", "a", "red", "blue", "sneaker", "sandal"]
ALL_ROLES = ("generator", "classifier", "class_grad", "caption_grad", "encoder", "composite_class_grad")


def tiny_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "Wg": rng.normal(0, 0.5, (D, PIXELS)).astype(np.float32),
        "bg": rng.normal(0, 0.1, PIXELS).astype(np.float32),
        "Wc": rng.normal(0, 1.0, (D, K)).astype(np.float32),
        "bc": rng.normal(0, 0.1, K).astype(np.float32),
        "Wv": rng.normal(0, 1.0, (D, len(VOCABULARY))).astype(np.float32),
        "We": rng.normal(0, 0.2, (PIXELS, D)).astype(np.float32),
        "Wi": rng.normal(0, 1.0, (PIXELS, K)).astype(np.float32),
    }


def _const(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _io(name: str, elem, dims) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, dims)


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="latent-onnx-tests")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _softmax_grad_nodes(logits: str, target: str, total: str, weight_t: str, out: str) -> list:
    """grad = (target - softmax(logits) * total) @ weight_t, and logp = sum(target * log_softmax)."""
    return [
        helper.make_node("LogSoftmax", [logits], ["lsm"], axis=-1),
        helper.make_node("Mul", [target, "lsm"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axis1"], ["logp"], keepdims=0),
        helper.make_node("Softmax", [logits], ["prob"], axis=-1),
        helper.make_node("Mul", ["prob", total], ["expected"]),
        helper.make_node("Sub", [target, "expected"], ["dlogits"]),
        helper.make_node("MatMul", ["dlogits", weight_t], [out]),
    ]


def build_graphs(weights: dict[str, np.ndarray]) -> dict[str, onnx.ModelProto]:
    """Every role's graph for the tiny bundle."""
    f32, batch = TensorProto.FLOAT, "batch"
    z_in = _io("z", f32, [batch, D])
    grad_outputs = [_io("logp", f32, [batch]), _io("grad", f32, [batch, D])]
    axis1 = _const("axis1", np.array([1], dtype=np.int64))
    pre_nodes = [
        helper.make_node("MatMul", ["z", "Wg"], ["pre0"]),
        helper.make_node("Add", ["pre0", "bg"], ["pre"]),
        helper.make_node("Sigmoid", ["pre"], ["sig"]),
    ]
    generator = _model(
        pre_nodes
        + [
            helper.make_node("Mul", ["sig", "c255"], ["scaled"]),
            helper.make_node("Round", ["scaled"], ["rounded"]),
            helper.make_node("Cast", ["rounded"], ["flat"], to=TensorProto.UINT8),
            helper.make_node("Reshape", ["flat", "shape"], ["image"]),
        ],
        [z_in],
        [_io("image", TensorProto.UINT8, [batch, H, W, 3])],
        [
            _const("Wg", weights["Wg"]),
            _const("bg", weights["bg"]),
            _const("c255", np.float32(255.0)),
            _const("shape", np.array([-1, H, W, 3], dtype=np.int64)),
        ],
    )
    head = [helper.make_node("MatMul", ["z", "Wc"], ["l0"]), helper.make_node("Add", ["l0", "bc"], ["logits"])]
    head_init = [_const("Wc", weights["Wc"]), _const("bc", weights["bc"])]
    classifier = _model(head, [z_in], [_io("logits", f32, [batch, K])], head_init)
    class_grad = _model(
        head
        + [helper.make_node("ReduceSum", ["weights", "axis1"], ["wsum"], keepdims=1)]
        + _softmax_grad_nodes("logits", "weights", "wsum", "WcT", "grad"),
        [z_in, _io("weights", f32, [batch, K])],
        grad_outputs,
        head_init + [_const("WcT", weights["Wc"].T.copy()), axis1],
    )
    caption_grad = _model(
        [
            helper.make_node("MatMul", ["z", "Wv"], ["vlogits"]),
            helper.make_node("OneHot", ["tokens", "depth", "onehot_values"], ["onehot"], axis=-1),
            helper.make_node("Unsqueeze", ["mask", "axis2"], ["mask3"]),
            helper.make_node("Mul", ["onehot", "mask3"], ["masked"]),
            helper.make_node("ReduceSum", ["masked", "axis1"], ["counts"], keepdims=0),
            helper.make_node("ReduceSum", ["mask", "axis1"], ["msum"], keepdims=1),
        ]
        + _softmax_grad_nodes("vlogits", "counts", "msum", "WvT", "grad"),
        [z_in, _io("tokens", TensorProto.INT64, [batch, T]), _io("mask", f32, [batch, T])],
        grad_outputs,
        [
            _const("Wv", weights["Wv"]),
            _const("WvT", weights["Wv"].T.copy()),
            axis1,
            _const("axis2", np.array([2], dtype=np.int64)),
            _const("depth", np.array([len(VOCABULARY)], dtype=np.int64)),
            _const("onehot_values", np.array([0.0, 1.0], dtype=np.float32)),
        ],
    )
    encoder = _model(
        [
            helper.make_node("Cast", ["image"], ["fimage"], to=f32),
            helper.make_node("Reshape", ["fimage", "flat_shape"], ["flat"]),
            helper.make_node("Div", ["flat", "c255"], ["unit"]),
            helper.make_node("MatMul", ["unit", "We"], ["z"]),
        ],
        [_io("image", TensorProto.UINT8, [batch, H, W, 3])],
        [_io("z", f32, [batch, D])],
        [
            _const("We", weights["We"]),
            _const("c255", np.float32(255.0)),
            _const("flat_shape", np.array([-1, PIXELS], dtype=np.int64)),
        ],
    )
    composite = _model(
        pre_nodes
        + [
            helper.make_node("MatMul", ["sig", "Wi"], ["logits"]),
            helper.make_node("ReduceSum", ["weights", "axis1"], ["wsum"], keepdims=1),
        ]
        + _softmax_grad_nodes("logits", "weights", "wsum", "WiT", "dsig")
        + [
            helper.make_node("Sub", ["one", "sig"], ["one_minus"]),
            helper.make_node("Mul", ["sig", "one_minus"], ["dsig_dpre"]),
            helper.make_node("Mul", ["dsig", "dsig_dpre"], ["dpre"]),
            helper.make_node("MatMul", ["dpre", "WgT"], ["grad"]),
        ],
        [z_in, _io("weights", f32, [batch, K])],
        grad_outputs,
        [
            _const("Wg", weights["Wg"]),
            _const("bg", weights["bg"]),
            _const("Wi", weights["Wi"]),
            _const("WiT", weights["Wi"].T.copy()),
            _const("WgT", weights["Wg"].T.copy()),
            _const("one", np.float32(1.0)),
            axis1,
        ],
    )
    return {
        "generator": generator,
        "classifier": classifier,
        "class_grad": class_grad,
        "caption_grad": caption_grad,
        "encoder": encoder,
        "composite_class_grad": composite,
    }


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(root: Path, manifest: dict) -> None:
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def edit_manifest(root: Path, change) -> None:
    """Rewrite the bundle's manifest.json after `change(manifest)` edits the parsed dict in place."""
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    change(manifest)
    write_manifest(root, manifest)


def use_prior_file(root: Path, data: bytes, components: int) -> None:
    """Write `data` as the bundle's prior.npz and point latent.prior at it (a mixture of `components`)."""
    (root / "prior.npz").write_bytes(data)
    prior = {
        "kind": "gaussian_mixture",
        "file": "prior.npz",
        "sha256": sha256_file(root / "prior.npz"),
        "components": components,
    }
    edit_manifest(root, lambda m: m["latent"].update(prior=prior))


def use_mixture_prior(root: Path, weights, means, scale_tril) -> None:
    """Give the bundle the Gaussian-mixture prior weights [M], means [M, D], scale_tril [M, D, D]."""
    buffer = io.BytesIO()
    np.savez(buffer, weights=weights, means=means, scale_tril=scale_tril)
    use_prior_file(root, buffer.getvalue(), len(weights))


def write_tiny_bundle(root: Path, roles=ALL_ROLES, seed: int = 0, graphs: dict | None = None) -> dict:
    """Write a tiny bundle directory at `root` and return its manifest."""
    root.mkdir(parents=True, exist_ok=True)
    models = graphs or build_graphs(tiny_weights(seed))
    manifest_graphs = {}
    for role in roles:
        onnx.save_model(models[role], str(root / f"{role}.onnx"))
        manifest_graphs[role] = {"file": f"{role}.onnx", "sha256": sha256_file(root / f"{role}.onnx")}
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    (root / "vocab.txt").write_text("\n".join(VOCABULARY) + "\n", encoding="utf-8")
    manifest = {
        "format": "latent-onnx-bundle",
        "format_version": 1,
        "name": "tiny",
        "description": "tiny test bundle",
        "license": "MIT",
        "latent": {"dim": D, "prior": {"kind": "gaussian", "mean": 0.0, "std": 1.0}, "clip": None},
        "image": {"height": H, "width": W, "channels": 3},
        "classes": {"file": "classes.txt", "sha256": sha256_file(root / "classes.txt")},
        "caption": {"vocabulary": {"file": "vocab.txt", "sha256": sha256_file(root / "vocab.txt")}, "max_tokens": T},
        "graphs": manifest_graphs,
        "sampler": {"steps": 20, "eps1": 0.05, "eps2": 0.01, "prior_weight": 1.0},
        "presets": {"paper": {"eps1": 0.001, "eps2": 1e-8, "prior_weight": 0.0}},
        "provenance": {"recipe": "tests/runtime/conftest.py"},
    }
    write_manifest(root, manifest)
    return manifest
