"""Ways to run the latent (MLP) SGLD step faster, measured side by side on one class_grad graph.

Each variant runs the same step (gradient graph, normalised gradient when the sampler says so,
Gaussian prior term, noise, clip) and is timed per step at one batch size, noise drawing included:
- `graph`, `graph-1thread`, `graph-spin`: the gradient graph alone under session options (as the
  runtime sets them; on one thread; with worker threads spinning between runs, ONNX Runtime's default);
- `graph-unpacked`: weights not pre-packed (what the runtime runs a single large class_grad chain on);
- `products-alone`: the graph's weight products and nothing else (bench.machine.products_model): what
  ONNX Runtime's GEMM kernels do at the step's shapes, the ceiling for any graph-level change;
- `loop`, `loop-spin`: session.run per step and the update in NumPy (the runtime's loop without its
  checks), without and with spinning;
- `iobinding`: that loop with the graph's inputs and outputs bound once to preallocated buffers;
- `fused`: every step in one graph (an ONNX Loop around the gradient graph and the update);
- `fp16-graph`: half-precision weights (x86 CPUs run fp16 MatMul without native support: slower);
- `int8block-*`, `int8-*`: int8 weights, as MatMulNBits blocks or as the exporter quantises them
  (export_tools.quantize: dynamic quantisation of row-normalised products).
`quality` compares each int8 gradient and chain with float32 from the same start and noise.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bench.machine import products_model
from export_tools.quantize import int8_dynamic_model
from export_tools.rewrites import matmul_weights_model
from latent_onnx import SamplerConfig
from latent_onnx.sessions import session_options

_TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class StepProblem:
    """One latent sampling problem: a class_grad graph, a start, a condition and the sampler settings."""

    model: onnx.ModelProto  # the class_grad graph (z [B, D], weights [B, K]) -> (logp [B], grad [B, D])
    config: SamplerConfig  # the sampler settings (eps1 held constant: the cost does not depend on it)
    prior_std: float  # the isotropic Gaussian prior N(0, prior_std^2 I) whose gradient is added
    z0: np.ndarray  # float32 [B, D] start
    weights: np.ndarray  # float32 [B, K] class weights

    @property
    def batch(self) -> int:
        return self.z0.shape[0]

    def noise(self, steps: int) -> np.ndarray:
        """float32 [steps, B, D]: sqrt(eps2) x standard normal, one generator per chain as the runtime draws it."""
        rngs = [np.random.default_rng([0, row]) for row in range(self.batch)]
        draws = np.stack([rng.standard_normal((steps, self.z0.shape[1]), dtype=np.float32) for rng in rngs], axis=1)
        return draws * np.float32(math.sqrt(self.config.eps2))


def open_session(
    model: onnx.ModelProto, threads: int | None, spinning: bool = False, prepack: bool = True
) -> ort.InferenceSession:
    return ort.InferenceSession(
        model.SerializeToString(),
        session_options(threads, allow_spinning=spinning, prepack=prepack),
        providers=["CPUExecutionProvider"],
    )


def update_numpy(problem: StepProblem, z: np.ndarray, grad: np.ndarray, noise: np.ndarray) -> None:
    """The SGLD update in place on z float32 [B, D] (grad may be overwritten; noise already times sqrt(eps2)):
    latent_onnx's `SGLDSampler.step` for constant eps1 and condition scale, without its allocations (tests/bench
    checks that the two agree)."""
    c = problem.config
    if c.normalize_grad:
        grad /= np.maximum(np.mean(np.abs(grad), axis=1, keepdims=True), _TINY)
    grad *= np.float32(c.condition_scale)
    if c.prior_weight:
        grad -= np.float32(c.prior_weight / problem.prior_std**2) * z
    grad *= np.float32(c.eps1)
    z += grad
    z += noise
    if c.clip is not None:
        np.clip(z, c.clip[0], c.clip[1], out=z)


def run_plain(session: ort.InferenceSession, problem: StepProblem, noise: np.ndarray) -> np.ndarray:
    """SGLD chains with session.run per step; returns the final z [B, D]."""
    z = problem.z0.copy()
    for step_noise in noise:
        _, grad = session.run(["logp", "grad"], {"z": z, "weights": problem.weights})
        update_numpy(problem, z, grad, step_noise)
    return z


def run_iobinding(session: ort.InferenceSession, problem: StepProblem, noise: np.ndarray) -> np.ndarray:
    """SGLD chains with inputs and outputs bound once to preallocated buffers; z is updated in place."""
    z = problem.z0.copy()
    grad = np.empty_like(z)
    logp = np.empty(problem.batch, np.float32)
    binding = session.io_binding()
    binding.bind_ortvalue_input("z", ort.OrtValue.ortvalue_from_numpy(z))
    binding.bind_ortvalue_input("weights", ort.OrtValue.ortvalue_from_numpy(problem.weights))
    binding.bind_output("grad", "cpu", 0, np.float32, list(grad.shape), grad.ctypes.data)
    binding.bind_output("logp", "cpu", 0, np.float32, list(logp.shape), logp.ctypes.data)
    for step_noise in noise:
        session.run_with_iobinding(binding)
        update_numpy(problem, z, grad, step_noise)
    return z


def _gradient_nodes(class_grad: onnx.ModelProto, z_name: str) -> list[onnx.NodeProto]:
    """class_grad's nodes reading `z_name` for z, every value they produce prefixed with "b/" (its grad: b/grad)."""
    nodes = []
    for original in class_grad.graph.node:  # renamed, so that nothing shadows an outer value inside a Loop
        copy = onnx.NodeProto()
        copy.CopyFrom(original)
        copy.input[:] = [
            z_name if name == "z" else (f"b/{name}" if _produced(class_grad, name) else name) for name in copy.input
        ]
        copy.output[:] = [f"b/{name}" for name in copy.output]
        nodes.append(copy)
    return nodes


def _update_nodes(config: SamplerConfig, z_in: str, noise_t: str, z_out: str) -> list[onnx.NodeProto]:
    """update_numpy as nodes: z_out = clip(z_in + cond_step * g + prior term + noise_t), g = b/grad (normalised
    when the sampler says so); the constants are _step_constants'."""
    node = helper.make_node
    grad, update = "b/grad", []
    if config.normalize_grad:
        update += [
            node("Abs", [grad], ["abs_g"]),
            node("ReduceMean", ["abs_g", "axis1"], ["mean_abs"], keepdims=1),
            node("Max", ["mean_abs", "tiny"], ["safe_mean"]),
            node("Div", [grad, "safe_mean"], ["g_norm"]),
        ]
        grad = "g_norm"
    update += [node("Mul", [grad, "cond_step"], ["drift"])]
    drift = "drift"
    if config.prior_weight:
        update += [
            node("Mul", [z_in, "prior_step"], ["prior_drift"]),
            node("Sub", ["drift", "prior_drift"], ["drift_p"]),
        ]
        drift = "drift_p"
    update += [node("Add", [z_in, drift], ["moved"])]
    if config.clip is None:
        return update + [node("Add", ["moved", noise_t], [z_out])]
    return update + [node("Add", ["moved", noise_t], ["z_next"]), node("Clip", ["z_next", "lo", "hi"], [z_out])]


def _step_constants(config: SamplerConfig, prior_std: float) -> list[onnx.TensorProto]:
    scalars = {
        "axis1": np.array([1], np.int64),
        "tiny": np.float32(_TINY),
        "cond_step": np.float32(config.eps1 * config.condition_scale),
        "prior_step": np.float32(config.eps1 * config.prior_weight / prior_std**2),
        "lo": np.float32(config.clip[0] if config.clip else 0),
        "hi": np.float32(config.clip[1] if config.clip else 0),
    }
    return [numpy_helper.from_array(np.asarray(v), k) for k, v in scalars.items()]


def _model(class_grad: onnx.ModelProto, graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=class_grad.opset_import, functions=class_grad.functions)
    model.ir_version = class_grad.ir_version
    return model


def step_model(class_grad: onnx.ModelProto, config: SamplerConfig, prior_std: float) -> onnx.ModelProto:
    """One SGLD step as one graph: (z [B, D], weights [B, K], noise [B, D]) -> z_next [B, D]; `noise` is already
    scaled by sqrt(eps2). What a loop that keeps z on the device runs per step."""
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        _gradient_nodes(class_grad, "z") + _update_nodes(config, "z", "noise", "z_next_out"),
        "sgld_step",
        [*class_grad.graph.input, helper.make_tensor_value_info("noise", f32, ["batch", "D"])],
        [helper.make_tensor_value_info("z_next_out", f32, None)],
        list(class_grad.graph.initializer) + _step_constants(config, prior_std),
    )
    return _model(class_grad, graph)


def fused_model(class_grad: onnx.ModelProto, config: SamplerConfig, prior_std: float) -> onnx.ModelProto:
    """One graph running every SGLD step: (z [B, D], weights [B, K], noise [S, B, D]) -> z_final [B, D].

    An ONNX Loop over S = noise.shape[0] whose body is the class_grad graph (its weights stay in the
    outer graph) followed by the update; `noise` is already scaled by sqrt(eps2).
    """
    node, f32 = helper.make_node, TensorProto.FLOAT
    body = helper.make_graph(
        _gradient_nodes(class_grad, "z_in")
        + [node("Gather", ["noise", "iter"], ["noise_t"], axis=0)]
        + _update_nodes(config, "z_in", "noise_t", "z_stepped")
        + [node("Identity", ["cond_in"], ["cond_out"]), node("Identity", ["z_stepped"], ["z_out"])],
        "sgld_step",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("z_in", f32, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("z_out", f32, None),
        ],
    )
    loop_constants = {"zero_index": np.array([0], np.int64), "true": np.array(True)}
    outer = [
        node("Shape", ["noise"], ["noise_shape"]),
        node("Gather", ["noise_shape", "zero_index"], ["steps_1d"]),
        node("Squeeze", ["steps_1d"], ["steps"]),
        node("Loop", ["steps", "true", "z"], ["z_final"], body=body),
    ]
    graph = helper.make_graph(
        outer,
        "fused_sgld",
        [*class_grad.graph.input, helper.make_tensor_value_info("noise", f32, ["steps", "batch", "D"])],
        [helper.make_tensor_value_info("z_final", f32, None)],
        list(class_grad.graph.initializer)
        + _step_constants(config, prior_std)
        + [numpy_helper.from_array(v, k) for k, v in loop_constants.items()],
    )
    return _model(class_grad, graph)


def _produced(model: onnx.ModelProto, name: str) -> bool:
    return any(name in n.output for n in model.graph.node)


def run_fused(session: ort.InferenceSession, problem: StepProblem, noise: np.ndarray) -> np.ndarray:
    return session.run(["z_final"], {"z": problem.z0, "weights": problem.weights, "noise": noise})[0]


def int8_block_model(class_grad: onnx.ModelProto, block_size: int = 32) -> onnx.ModelProto:
    """8-bit symmetric block-quantised weights (MatMulNBits, blocks of `block_size` along K); the kernel
    quantises each activation block to int8 too (accuracy_level 4), which is what makes it fast on CPUs."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(
        matmul_weights_model(class_grad), bits=8, block_size=block_size, is_symmetric=True, accuracy_level=4
    )
    quantizer.process()
    return quantizer.model.model


def fp16_model(class_grad: onnx.ModelProto) -> onnx.ModelProto:
    """Half-precision weights feeding the MatMuls (float32 inputs and outputs)."""
    model = matmul_weights_model(class_grad)
    graph = model.graph
    weights = {n.input[1] for n in graph.node if n.op_type == "MatMul"}
    for init in graph.initializer:
        if init.name in weights:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    nodes = []
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights:
            half = f"{node.input[0]}/fp16"
            nodes += [
                helper.make_node("Cast", [node.input[0]], [half], to=TensorProto.FLOAT16),
                helper.make_node("MatMul", [half, node.input[1]], [f"{node.output[0]}/fp16"]),
                helper.make_node("Cast", [f"{node.output[0]}/fp16"], [node.output[0]], to=TensorProto.FLOAT),
            ]
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def time_variants(problem: StepProblem, steps: int, threads: int, rounds: int = 5) -> dict[str, dict]:
    """variant name -> {"step_s": best seconds per step, or "error": why it cannot run}; noise drawing included.

    The variants take turns (`rounds` rounds of `steps` steps each, after a one-step warm-up), so
    a change in the machine's load falls on all of them alike; the two with spinning workers are
    timed after the rest, one at a time.
    """
    model = problem.model
    fp32 = open_session(model, threads)
    graph_feeds = {"z": problem.z0, "weights": problem.weights}

    def graph_only(session):
        return lambda n: [session.run(["grad"], graph_feeds) for _ in range(n)]

    products = products_model(model)
    rng = np.random.default_rng(0)
    products_feeds = {
        i.name: rng.standard_normal((problem.batch, i.type.tensor_type.shape.dim[1].dim_value), dtype=np.float32)
        for i in products.graph.input
    }

    def products_only(session):
        return lambda n: [session.run(None, products_feeds) for _ in range(n)]

    def chain(session, runner):
        return lambda n: runner(session, problem, problem.noise(n))

    candidates = {
        "graph": lambda: graph_only(fp32),
        "graph-1thread": lambda: graph_only(open_session(model, 1)),
        "loop": lambda: chain(fp32, run_plain),
        "iobinding": lambda: chain(fp32, run_iobinding),
        "fused": lambda: chain(open_session(fused_model(model, problem.config, problem.prior_std), threads), run_fused),
        "graph-unpacked": lambda: graph_only(open_session(model, threads, prepack=False)),
        "products-alone": lambda: products_only(open_session(products, threads)),
        "fp16-graph": lambda: graph_only(open_session(fp16_model(model), threads)),
    }
    for label, quantise in (("int8block", int8_block_model), ("int8", int8_dynamic_model)):
        quantised = quantise(model)
        candidates[f"{label}-graph"] = lambda q=quantised: graph_only(open_session(q, threads))
        candidates[f"{label}-loop"] = lambda q=quantised: chain(open_session(q, threads), run_plain)
        candidates[f"{label}-fused"] = lambda q=quantised: chain(
            open_session(fused_model(q, problem.config, problem.prior_std), threads), run_fused
        )
    spinning = {  # timed after the others, one at a time: workers that spin after a run take the cores of whatever runs next
        "graph-spin": lambda: graph_only(open_session(model, threads, spinning=True)),
        "loop-spin": lambda: chain(open_session(model, threads, spinning=True), run_plain),
    }
    results = _time_in_turns(candidates, steps, rounds)
    for name, make in spinning.items():
        results.update(_time_in_turns({name: make}, steps, rounds))
    return results


def _time_in_turns(candidates: dict, steps: int, rounds: int) -> dict[str, dict]:
    """name -> {"step_s"} or {"error"}: each candidate made and warmed up, then `rounds` rounds in turn."""
    results, runs = {}, {}
    for name, make in candidates.items():
        try:
            runs[name] = make()
            runs[name](1)  # warm-up
        except Exception as error:  # ONNX Runtime refuses a graph it has no kernel for: report, keep going
            runs.pop(name, None)
            results[name] = {"error": str(error).strip().splitlines()[0][:200]}
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run(steps)
            best[name] = min(best[name], (time.perf_counter() - start) / steps)
    return {name: results[name] if name in results else {"step_s": best[name]} for name in candidates}


def quality(problem: StepProblem, steps: int, threads: int | None) -> dict[str, dict[str, float]]:
    """For each int8 scheme, how far it moves the gradient and a chain from float32 (same start and noise)."""
    fp32 = open_session(problem.model, threads)
    feeds = {"z": problem.z0, "weights": problem.weights}
    logp32, grad32 = fp32.run(["logp", "grad"], feeds)
    noise = problem.noise(steps)
    z32 = run_plain(fp32, problem, noise)
    moved = np.linalg.norm(z32 - problem.z0, axis=1)
    end32 = fp32.run(["logp"], {"z": z32, "weights": problem.weights})[0]
    report = {}
    for label, quantise in (("int8block", int8_block_model), ("int8", int8_dynamic_model)):
        session = open_session(quantise(problem.model), threads)
        logp8, grad8 = session.run(["logp", "grad"], feeds)
        cosine = np.sum(grad32 * grad8, axis=1) / (
            np.linalg.norm(grad32, axis=1) * np.linalg.norm(grad8, axis=1) + _TINY
        )
        z8 = run_plain(session, problem, noise)
        end8 = fp32.run(["logp"], {"z": z8, "weights": problem.weights})[0]
        report[label] = {
            "grad_cosine_min": float(cosine.min()),
            "grad_relative_error": float(np.linalg.norm(grad8 - grad32) / np.linalg.norm(grad32)),
            "logp_abs_diff_max": float(np.abs(logp8 - logp32).max()),
            "chain_steps": steps,
            "chain_z_diff_over_path": float(np.median(np.linalg.norm(z8 - z32, axis=1) / np.maximum(moved, _TINY))),
            "chain_final_logp_fp32": float(end32.mean()),
            "chain_final_logp_int8": float(end8.mean()),
        }
    return report
