"""The machine's bounds: memory read bandwidth and float32 matrix-multiply throughput.

Both are measured, not looked up, so that a step's time can be expressed as a fraction of what this
machine can do: at batch 1 an MLP step is bound by reading its weights, at large batches by FLOPs.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


@dataclass
class MachineBounds:
    read_bandwidth_gbs: float  # best sustained rate of reading a buffer of `buffer_mb` again and again, GB/s
    matmul_gflops: float  # best float32 GEMM rate (ONNX Runtime or NumPy's BLAS), GFLOP/s
    threads: int  # the most threads the measurements used (1 is tried too)
    buffer_mb: float  # size of the buffer read: the step's weights, so caches help it as they help the step

    def seconds_to_read(self, nbytes: float) -> float:
        return nbytes / (self.read_bandwidth_gbs * 1e9)

    def seconds_to_compute(self, flops: float) -> float:
        return flops / (self.matmul_gflops * 1e9)


def best_seconds(fn, repeats: int) -> float:
    """Best wall time of `fn()` over `repeats` calls, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_read_bandwidth(threads: int, nbytes: int = 512 << 20, repeats: int = 10) -> float:
    """Best GB/s of reading a float32 buffer of `nbytes`, by two readers on 1 and on `threads` threads.

    The readers: NumPy summing the buffer split across threads (NumPy releases the GIL), and ONNX
    Runtime multiplying a vector by the buffer as a matrix (a GEMV, the latent step's own operation).
    A shared machine only ever slows a reader down, so the best reading is the bound.
    """
    columns = 1024
    rows = max(nbytes // (4 * columns), 1)
    matrix = np.ones((rows, columns), dtype=np.float32)
    vector = np.ones((1, rows), dtype=np.float32)
    best = float("inf")
    for count in sorted({1, threads}):
        parts = np.array_split(matrix.reshape(-1), count)
        with ThreadPoolExecutor(count) as pool:
            best = min(best, best_seconds(lambda parts=parts: list(pool.map(np.sum, parts)), repeats))
        session = _onnx_matmul_session((1, rows), (rows, columns), count)
        best = min(best, best_seconds(lambda session=session: session.run(None, {"a": vector, "b": matrix}), repeats))
    return matrix.nbytes / best / 1e9


def _onnx_matmul_session(a_shape: tuple[int, int], b_shape: tuple[int, int], threads: int) -> ort.InferenceSession:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a_shape)),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, list(b_shape)),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [a_shape[0], b_shape[1]])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # onnx's default IR can be newer than an older ONNX Runtime reads (1.31: at most 13)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def measure_matmul_gflops(threads: int, n: int = 2048, repeats: int = 10) -> float:
    """Best GFLOP/s of an n x n x n float32 GEMM, by ONNX Runtime on 1 and on `threads` threads or by NumPy's BLAS."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    best = best_seconds(lambda: a @ b, repeats)
    for count in sorted({1, threads}):
        session = _onnx_matmul_session((n, n), (n, n), count)
        best = min(best, best_seconds(lambda session=session: session.run(None, {"a": a, "b": b}), repeats))
    return 2.0 * n**3 / best / 1e9


@dataclass
class GraphCost:
    """What one run of a gradient graph must at least do: read its matrix weights, multiply by them."""

    weight_bytes: int  # bytes of MatMul/Gemm weight operands read per run (a weight used twice counts twice)
    flops_per_sample: int  # 2 x multiply-adds of those products per batch row

    def bound_seconds(self, bounds: MachineBounds, batch: int) -> float:
        """The roofline: the slower of reading the weights once per use and doing the FLOPs at peak."""
        return max(bounds.seconds_to_read(self.weight_bytes), bounds.seconds_to_compute(batch * self.flops_per_sample))


def graph_cost(model: onnx.ModelProto) -> GraphCost:
    """Weight bytes and FLOPs of the MatMul/Gemm nodes whose second operand is a constant (through Transpose/Cast).

    That is the cost of an MLP (gradient) graph; convolutions are not counted.
    """
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:  # follow Transpose / Cast of a constant: still the same weights in memory
        if node.op_type in ("Transpose", "Cast", "Identity") and node.input[0] in constants:
            constants[node.output[0]] = constants[node.input[0]]
    weight_bytes = flops = 0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and node.input[1] in constants and constants[node.input[1]].ndim == 2:
            weight = constants[node.input[1]]
            weight_bytes += weight.nbytes
            flops += 2 * weight.size
    return GraphCost(weight_bytes, flops)


def products_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The weight products of `model` alone: for each MatMul/Gemm by a 2-d initializer (as graph_cost
    counts them), an input x_i [B, K_i] and an output y_i, through the same node type, weight and transB.

    Run once, it does the products one after another, with the same weights in the same layout (a
    weight used forwards and backwards is still one initializer), and nothing else.
    """
    constants = {init.name: init for init in model.graph.initializer if len(init.dims) == 2}
    nodes, inputs, outputs, used = [], [], [], {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.input[1] not in constants:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        rows, columns = constants[node.input[1]].dims
        k, n = (columns, rows) if attributes.get("transB") else (rows, columns)
        x, y = f"x{len(nodes)}", f"y{len(nodes)}"
        nodes.append(
            helper.make_node(
                node.op_type,
                [x, node.input[1]],
                [y],
                **{key: value for key, value in attributes.items() if key == "transB"},
            )
        )
        inputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, ["B", k]))
        outputs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, ["B", n]))
        used[node.input[1]] = constants[node.input[1]]
    products = helper.make_model(
        helper.make_graph(nodes, "weight_products", inputs, outputs, list(used.values())),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    products.ir_version = 9
    return products


def best_bounds(first: MachineBounds, second: MachineBounds) -> MachineBounds:
    """The higher of two measurements of each bound (a shared machine only ever slows a measurement down)."""
    return MachineBounds(
        max(first.read_bandwidth_gbs, second.read_bandwidth_gbs),
        max(first.matmul_gflops, second.matmul_gflops),
        first.threads,
        first.buffer_mb,
    )


def measure_machine(threads: int | None = None, buffer_bytes: int = 512 << 20) -> MachineBounds:
    """Read bandwidth over a buffer of `buffer_bytes` and GEMM throughput, on `threads` threads (default: all cores)."""
    threads = threads or os.cpu_count() or 1
    return MachineBounds(
        read_bandwidth_gbs=measure_read_bandwidth(threads, buffer_bytes),
        matmul_gflops=measure_matmul_gflops(threads),
        threads=threads,
        buffer_mb=buffer_bytes / 1e6,
    )


if __name__ == "__main__":
    print(measure_machine())
