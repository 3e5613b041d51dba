"""Time one SGLD step per sample through the runtime, for the paper-sized MLP gradient graph.

The graph is CaffeNet's head as the paper samples it: z [B, 4096] -> fc7 4096 -> ReLU -> fc8 1000,
with its analytic gradient written as ONNX ops (random weights: the timing does not depend on them).
A step is what `Pipeline.generate` does per step: the gradient graph, the prior gradient, the noise
draw and the update. It is measured as the difference of two runs with different step counts, so
starting, decoding and the final evaluation cancel out. `ms_graph_only` is the gradient graph alone.

    PYTHONPATH=. python bench/sgld_step.py [--threads N] [--batches 1 64]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from latent_onnx import Pipeline

D, HIDDEN, K = 4096, 4096, 1000


def mlp_class_grad(rng: np.random.Generator) -> onnx.ModelProto:
    """class_grad for logits = relu(z @ W7 + b7) @ W8 + b8; grad via Gemm(transB) so weights are stored once."""
    w7 = rng.normal(0, 0.01, (D, HIDDEN)).astype(np.float32)
    w8 = rng.normal(0, 0.01, (HIDDEN, K)).astype(np.float32)
    node = helper.make_node
    nodes = [
        node("MatMul", ["z", "W7"], ["a7"]), node("Add", ["a7", "b7"], ["p7"]), node("Relu", ["p7"], ["h7"]),
        node("MatMul", ["h7", "W8"], ["a8"]), node("Add", ["a8", "b8"], ["logits"]),
        node("LogSoftmax", ["logits"], ["lsm"], axis=-1), node("Mul", ["weights", "lsm"], ["wl"]),
        node("ReduceSum", ["wl", "axis1"], ["logp"], keepdims=0),
        node("Softmax", ["logits"], ["prob"], axis=-1), node("ReduceSum", ["weights", "axis1"], ["wsum"], keepdims=1),
        node("Mul", ["prob", "wsum"], ["expected"]), node("Sub", ["weights", "expected"], ["dlogits"]),
        node("Gemm", ["dlogits", "W8"], ["dh7"], transB=1),
        node("Greater", ["p7", "zero"], ["active"]), node("Cast", ["active"], ["activef"], to=TensorProto.FLOAT),
        node("Mul", ["dh7", "activef"], ["dp7"]), node("Gemm", ["dp7", "W7"], ["grad"], transB=1),
    ]
    inits = [
        numpy_helper.from_array(w7, "W7"), numpy_helper.from_array(np.zeros(HIDDEN, np.float32), "b7"),
        numpy_helper.from_array(w8, "W8"), numpy_helper.from_array(np.zeros(K, np.float32), "b8"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"), numpy_helper.from_array(np.float32(0), "zero"),
    ]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "mlp_class_grad",
        [helper.make_tensor_value_info("z", f32, ["batch", D]), helper.make_tensor_value_info("weights", f32, ["batch", K])],
        [helper.make_tensor_value_info("logp", f32, ["batch"]), helper.make_tensor_value_info("grad", f32, ["batch", D])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def small_generator(rng: np.random.Generator) -> onnx.ModelProto:
    """A 4x4 linear generator: only there because every bundle needs one."""
    node = helper.make_node
    graph = helper.make_graph(
        [node("MatMul", ["z", "Wg"], ["a"]), node("Sigmoid", ["a"], ["s"]), node("Mul", ["s", "c255"], ["m"]),
         node("Cast", ["m"], ["u"], to=TensorProto.UINT8), node("Reshape", ["u", "shape"], ["image"])],
        "generator",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", D])],
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 4, 4, 3])],
        [numpy_helper.from_array(rng.normal(0, 0.01, (D, 48)).astype(np.float32), "Wg"),
         numpy_helper.from_array(np.float32(255), "c255"), numpy_helper.from_array(np.array([-1, 4, 4, 3], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def write_bundle(root: Path) -> None:
    rng = np.random.default_rng(0)
    graphs = {}
    for role, model in (("generator", small_generator(rng)), ("class_grad", mlp_class_grad(rng))):
        data = model.SerializeToString()
        (root / f"{role}.onnx").write_bytes(data)
        graphs[role] = {"file": f"{role}.onnx", "sha256": hashlib.sha256(data).hexdigest()}
    classes = "".join(f"class{k}\n" for k in range(K)).encode()
    (root / "classes.txt").write_bytes(classes)
    manifest = {
        "format": "latent-onnx-bundle", "format_version": 1, "name": "bench-mlp", "description": "timing only",
        "license": "none", "latent": {"dim": D, "prior": {"kind": "gaussian", "mean": 0.0, "std": 1.0}, "clip": [0.0, 30.0]},
        "image": {"height": 4, "width": 4, "channels": 3},
        "classes": {"file": "classes.txt", "sha256": hashlib.sha256(classes).hexdigest()},
        "graphs": graphs, "sampler": {"steps": 10, "eps1": 0.001, "eps2": 1e-8, "prior_weight": 1.0},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))


def seconds_per_step(pipe: Pipeline, batch: int, repeats: int) -> float:
    """Best-of-`repeats` time of (20-step run - 10-step run) / 10, at one batch of `batch` chains."""

    def run(steps: int) -> float:
        start = time.perf_counter()
        pipe.generate(classes="class11", n=batch, batch_size=batch, seed=0, steps=steps)
        return time.perf_counter() - start

    run(2)  # warm-up
    return min(run(20) - run(10) for _ in range(repeats)) / 10


def seconds_per_graph_run(pipe: Pipeline, batch: int, repeats: int) -> float:
    """Best time of the class_grad graph alone at `batch`: the part of a step spent in ONNX Runtime."""
    runner = pipe.runner("class_grad")
    z = np.random.default_rng(0).standard_normal((batch, D)).astype(np.float32)
    weights = np.zeros((batch, K), np.float32)
    weights[:, 11] = 1
    times = []
    for _ in range(repeats * 10):
        start = time.perf_counter()
        runner.run(z=z, weights=weights)
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        write_bundle(Path(folder))
        pipe = Pipeline.from_bundle(Path(folder), device="auto", threads=args.threads)
        provider = pipe.runner("class_grad").provider
        for batch in args.batches:
            step = seconds_per_step(pipe, batch, args.repeats)
            graph = seconds_per_graph_run(pipe, batch, args.repeats)
            print(json.dumps({"batch": batch, "provider": provider, "threads": args.threads,
                              "ms_per_step": round(step * 1e3, 3), "ms_per_step_per_sample": round(step * 1e3 / batch, 4),
                              "ms_graph_only": round(graph * 1e3, 3)}))


if __name__ == "__main__":
    main()
