"""The latent step on a GPU: where a step's time goes when the graph runs on ONNX Runtime's CUDA provider.

Each variant runs the same SGLD chains (bench.variants.StepProblem) on one device, timed per step:
- `loop`: session.run with NumPy feeds and results and the update in NumPy: the runtime's loop, a
  host round trip (z up, logp and grad down) every step;
- `graph-bound`: the gradient graph alone with z, weights, logp and grad bound to device buffers
  (nothing copied): the floor of any loop that runs the graph once per step;
- `step-bound`: one graph per step (bench.variants.step_model: gradient and update), z kept on the
  device in two buffers used in turn, the noise of every step copied up once: a device-resident loop
  that can still hand z back between steps;
- `step-cudagraph`: `step-bound` replayed as captured CUDA graphs (two, one per z buffer; the step's
  noise copied into a fixed buffer first), which removes the kernel launches' cost;
- `fused`: every step in one run (bench.variants.fused_model: an ONNX Loop).
`time_product_capture` times the product itself (`Pipeline`, bench.steps.time_path) on CUDA with its
captured gradient graphs (latent_onnx.sessions.CAPTURED_ROLES) and without, side by side.
The device runners take `device` ("cuda" or "cpu"), so that the tests check them against `loop` on a
machine without a GPU.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from bench.steps import time_path
from bench.variants import StepProblem, _time_in_turns, fused_model, run_plain, step_model
from latent_onnx import Pipeline
from latent_onnx.bundle import Bundle
from latent_onnx.sessions import SessionFactory

CUDA = "CUDAExecutionProvider"


def providers(device: str, cuda_graph: bool = False) -> list:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    return [(CUDA, {"enable_cuda_graph": "1" if cuda_graph else "0"}), "CPUExecutionProvider"]


def open_on(model, device: str, cuda_graph: bool = False) -> ort.InferenceSession:
    session = ort.InferenceSession(model.SerializeToString(), providers=providers(device, cuda_graph))
    if session.get_providers()[0] != (CUDA if device == "cuda" else "CPUExecutionProvider"):
        raise RuntimeError(f"the session did not start on {device} (providers: {session.get_providers()})")
    return session


def _on(device: str, array: np.ndarray) -> ort.OrtValue:
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, 0)


def _empty(device: str, shape: tuple) -> ort.OrtValue:
    return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, device, 0)


def run_graph_bound(session: ort.InferenceSession, problem: StepProblem, steps: int, device: str) -> None:
    """The gradient graph `steps` times with every input and output bound to device buffers."""
    binding = session.io_binding()
    binding.bind_ortvalue_input("z", _on(device, problem.z0))
    binding.bind_ortvalue_input("weights", _on(device, problem.weights))
    binding.bind_ortvalue_output("logp", _empty(device, (problem.batch,)))
    binding.bind_ortvalue_output("grad", _empty(device, problem.z0.shape))
    for _ in range(steps):
        session.run_with_iobinding(binding)
    binding.synchronize_outputs()


def run_step_bound(session: ort.InferenceSession, problem: StepProblem, noise: np.ndarray, device: str) -> np.ndarray:
    """SGLD chains with a step graph per step and z on the device (two buffers in turn); returns the final z."""
    z = [_on(device, problem.z0), _empty(device, problem.z0.shape)]
    noises = [_on(device, n) for n in noise]
    binding = session.io_binding()
    binding.bind_ortvalue_input("weights", _on(device, problem.weights))
    for step, step_noise in enumerate(noises):
        binding.bind_ortvalue_input("z", z[step % 2])
        binding.bind_ortvalue_input("noise", step_noise)
        binding.bind_ortvalue_output("z_next_out", z[(step + 1) % 2])
        session.run_with_iobinding(binding)
    return z[len(noises) % 2].numpy()


def run_step_cudagraph(session: ort.InferenceSession, problem: StepProblem, noise: np.ndarray) -> np.ndarray:
    """run_step_bound replayed as two captured CUDA graphs (one per z buffer, gpu_graph_id 1 and 2; ONNX
    Runtime captures each on its first run); the step's noise is copied into the graph's fixed buffer."""
    z = [_on("cuda", problem.z0), _empty("cuda", problem.z0.shape)]
    step_noise = _on("cuda", noise[0])
    weights = _on("cuda", problem.weights)
    bindings, options = [], []
    for parity in range(2):
        binding = session.io_binding()
        binding.bind_ortvalue_input("weights", weights)
        binding.bind_ortvalue_input("z", z[parity])
        binding.bind_ortvalue_input("noise", step_noise)
        binding.bind_ortvalue_output("z_next_out", z[1 - parity])
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("gpu_graph_id", str(parity + 1))
        bindings.append(binding)
        options.append(run_options)
    for step, values in enumerate(noise):
        step_noise.update_inplace(np.ascontiguousarray(values))
        session.run_with_iobinding(bindings[step % 2], options[step % 2])
    return z[len(noise) % 2].numpy()


def time_cuda_variants(problem: StepProblem, steps: int, rounds: int = 5, device: str = "cuda") -> dict[str, dict]:
    """variant name -> {"step_s": best seconds per step} or {"error": why it cannot run}, taking turns."""
    model = problem.model
    graph = open_on(model, device)
    stepper = open_on(step_model(model, problem.config, problem.prior_std), device)

    def chain(runner):
        return lambda n: runner(problem.noise(n))

    candidates = {
        "loop": lambda: chain(lambda noise: run_plain(graph, problem, noise)),
        "graph-bound": lambda: lambda n: run_graph_bound(graph, problem, n, device),
        "step-bound": lambda: chain(lambda noise: run_step_bound(stepper, problem, noise, device)),
        "fused": lambda: _fused_runner(problem, device),
    }
    if device == "cuda":
        candidates["step-cudagraph"] = lambda: _cudagraph_runner(problem)
    return _time_in_turns(candidates, steps, rounds)


def _fused_runner(problem: StepProblem, device: str):
    session = open_on(fused_model(problem.model, problem.config, problem.prior_std), device)
    feeds = {"z": problem.z0, "weights": problem.weights}
    return lambda n: session.run(["z_final"], {**feeds, "noise": problem.noise(n)})[0]


def _cudagraph_runner(problem: StepProblem):
    session = open_on(step_model(problem.model, problem.config, problem.prior_std), "cuda", cuda_graph=True)
    return lambda n: run_step_cudagraph(session, problem, problem.noise(n))


def time_product_capture(bundle: Bundle, classes: str, batches, steps: int, threads: int | None = None) -> dict:
    """batch -> {"uncaptured": time_path's figures, "captured": the same, "max_pixel_difference": largest
    difference of one seed's images between the two}: the product's latent path on CUDA without and
    with captured gradient graphs, one pipeline each, measured one after the other per batch."""
    pipes = {
        name: Pipeline(bundle, SessionFactory("cuda", threads, cuda_graphs=captured))
        for name, captured in (("uncaptured", False), ("captured", True))
    }
    out = {}
    for batch in batches:
        row = {name: time_path(pipe, classes, "latent", batch, steps).to_dict() for name, pipe in pipes.items()}
        images = [pipe.generate(classes=classes, n=batch, batch_size=batch, seed=0).pixels for pipe in pipes.values()]
        row["max_pixel_difference"] = int(np.abs(images[0].astype(np.int16) - images[1]).max())
        captured = pipes["captured"].runner("class_grad")
        row["graph_ids"] = dict(captured.bound.graph_ids) if captured.bound else {}  # batch -> CUDA graph id
        out[str(batch)] = row
    return out


def missing_cuda() -> str | None:
    """Why the CUDA variants cannot run here, or None when ONNX Runtime has its CUDA provider."""
    available = ort.get_available_providers()
    return None if CUDA in available else f"this ONNX Runtime has no CUDA provider ({', '.join(available)})"
