"""Session choices: single chains of a large class_grad (float32 unpacked, quantised by measurement), a small
gradient graph on one thread per batch size where measured faster, and spinning workers for the graphs run once
per batch."""

import numpy as np
import onnx
import pytest
from runtime_bundles import D, K, build_graphs, tiny_weights, write_tiny_bundle

import latent_onnx.sessions as sessions
from latent_onnx import Pipeline


@pytest.fixture
def quantised_bundle(tmp_path, monkeypatch):
    """A tiny bundle whose class_grad has int8 weights (ONNX Runtime dynamic quantisation), counted as large."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    monkeypatch.setattr(sessions, "SINGLE_ROW_MIN_BYTES", 0)
    monkeypatch.setattr(sessions, "_UNPACKED_FASTER", {})
    float_path, int8_path = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    graphs = build_graphs(tiny_weights())
    onnx.save(graphs["class_grad"], float_path)
    quantize_dynamic(float_path, int8_path, weight_type=QuantType.QInt8)
    graphs["class_grad"] = onnx.load(int8_path)
    assert {node.op_type for node in graphs["class_grad"].graph.node} & sessions.QUANTISED_OPS
    write_tiny_bundle(tmp_path / "bundle", graphs=graphs)
    return tmp_path / "bundle"


def _prepacking_off(session) -> bool:
    try:
        return session.get_session_options().get_session_config_entry("session.disable_prepacking") == "1"
    except RuntimeError:  # not set: prepacking is on
        return False


def test_a_quantised_class_grad_runs_single_chains_unpacked_only_when_measured_faster(quantised_bundle, monkeypatch):
    timed = []
    monkeypatch.setattr(sessions, "_first_is_faster", lambda first, second, names, feeds: timed.append(feeds) or False)
    runner = Pipeline.from_bundle(quantised_bundle, device="cpu", threads=1).runner("class_grad")
    assert runner.session_for(1) is runner.session and runner.session_for(1) is runner.session  # measured slower
    assert timed[0]["z"].shape == (1, D) and timed[0]["weights"].shape == (1, K)
    again = Pipeline.from_bundle(quantised_bundle, device="cpu", threads=1).runner("class_grad")
    assert again.session_for(1) is again.session and len(timed) == 1  # decided once per graph and thread count

    monkeypatch.setattr(sessions, "_UNPACKED_FASTER", {})
    monkeypatch.setattr(sessions, "_first_is_faster", lambda first, second, names, feeds: True)
    faster = Pipeline.from_bundle(quantised_bundle, device="cpu", threads=1).runner("class_grad")
    single = faster.session_for(1)
    assert single is not faster.session and _prepacking_off(single) and faster.session_for(2) is faster.session


def test_the_measurement_times_both_sessions_and_keeps_the_same_numbers(quantised_bundle):
    pipe = Pipeline.from_bundle(quantised_bundle, device="cpu", threads=1)
    z = np.random.default_rng(0).standard_normal((2, D)).astype(np.float32)
    weights = np.eye(K, dtype=np.float32)[[0, 1]]
    alone = pipe.runner("class_grad").run(z=z[1:], weights=weights[1:])  # times both sessions, then runs on one
    assert list(sessions._UNPACKED_FASTER.values()) in ([True], [False])
    together = pipe.runner("class_grad").run(z=z, weights=weights)
    np.testing.assert_allclose(alone["grad"], together["grad"][1:], rtol=1e-2, atol=1e-2)


def test_a_cuda_provider_that_does_not_start_is_named_in_one_line(monkeypatch):
    if "CUDAExecutionProvider" in sessions.ort.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA build")
    problem = sessions._cuda_problem()  # the CPU build ships no CUDA provider library
    assert problem.startswith("libonnxruntime_providers_cuda.so is missing from") or "missing" in problem
    monkeypatch.setattr(sessions, "_ort_builds", lambda: ["onnxruntime", "onnxruntime-gpu"])
    assert "both onnxruntime and onnxruntime-gpu are installed" in sessions._cuda_problem()
    with pytest.raises(sessions.DeviceError) as error:
        sessions.SessionFactory(device="cuda")
    message = str(error.value)
    assert "\n" not in message and sessions.GPU_INSTALL in message and "--device cpu" in message


def test_without_onnx_runtime_using_the_pipeline_says_which_extra_to_install(tmp_path):
    import subprocess
    import sys

    (tmp_path / "onnxruntime.py").write_text(
        "raise ImportError('No module named onnxruntime')\n"
    )  # as if not installed
    done = subprocess.run(
        [sys.executable, "-c", "from latent_onnx import Pipeline"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": f"{tmp_path}:{sessions.__file__.rsplit('/latent_onnx/', 1)[0]}", "PATH": ""},
    )
    assert done.returncode == 1
    assert (
        "pip install 'latent-onnx[cpu]' (CPU), or pip install 'latent-onnx[gpu]' (NVIDIA CUDA); not both" in done.stderr
    )


def _bound_twin(runner) -> sessions.GraphRunner:
    """The same session and contract as `runner`, every run through IO binding on CPU buffers (the path that
    CUDA runs take, without the capture)."""
    return sessions.GraphRunner(runner.role, runner.session, runner.dims, runner.bundle_name, bound_device="cpu")


@pytest.mark.parametrize("role", sessions.CAPTURED_ROLES)
def test_bound_runs_give_the_plain_runs_results_for_every_batch_size(tiny_pipeline, role):
    plain = tiny_pipeline.runner(role)
    bound = _bound_twin(plain)
    rng = np.random.default_rng(0)
    sizes = [1, 3, 1, *range(2, sessions.CAPTURED_BATCHES + 3), 3]  # sizes seen again reuse their buffers
    for batch in sizes:
        feeds = plain.typical_feeds(batch)
        feeds["z"] = rng.standard_normal(feeds["z"].shape).astype(np.float32)
        want, got = plain.run(**feeds), bound.run(**feeds)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)
    assert set(bound.bound._slots) == set(sizes) and bound.bound.graph_ids == {}  # no capture on the CPU


def test_a_bound_runs_results_are_not_overwritten_by_the_next_run(tiny_pipeline):
    bound = _bound_twin(tiny_pipeline.runner("class_grad"))
    feeds = bound.typical_feeds(2)
    first = bound.run(**feeds)
    kept = {name: array.copy() for name, array in first.items()}
    bound.run(**{**feeds, "z": np.ones_like(feeds["z"])})
    for name in kept:
        np.testing.assert_array_equal(first[name], kept[name])


def test_bound_runs_check_their_feeds_like_plain_runs(tiny_pipeline):
    bound = _bound_twin(tiny_pipeline.runner("class_grad"))
    feeds = bound.typical_feeds(2)
    with pytest.raises(sessions.InputError, match="input 'z'"):
        bound.run(**{**feeds, "z": feeds["z"].astype(np.float64)})
    with pytest.raises(sessions.InputError, match="input 'weights' has shape"):
        bound.run(**{**feeds, "weights": feeds["weights"][:1]})


def test_on_the_cpu_no_graph_is_bound(tiny_pipeline):
    assert all(tiny_pipeline.runner(role).bound is None for role in sessions.CAPTURED_ROLES)


cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" not in sessions.ort.get_available_providers(), reason="needs ONNX Runtime's CUDA provider"
)


@cuda
@pytest.mark.parametrize("classes, caption", [("0", None), (None, "a red sneaker")])
def test_on_cuda_the_gradient_graphs_replay_captured_cuda_graphs_with_the_uncaptured_results(
    tiny_bundle_template, classes, caption
):
    from latent_onnx.bundle import load_bundle
    from latent_onnx.pipeline import Pipeline as Pipe

    bundle = load_bundle(tiny_bundle_template)
    pipes = [Pipe(bundle, sessions.SessionFactory("cuda", cuda_graphs=flag)) for flag in (False, True)]
    request = dict(classes=classes, caption=caption, seed=3, steps=30)
    results = [[pipe.generate(n=n, batch_size=4, **request) for n in (4, 6)] for pipe in pipes]
    role = "class_grad" if classes else "caption_grad"
    assert pipes[0].runner(role).bound is None
    assert pipes[1].runner(role).bound.graph_ids == {4: 1, 2: 2}  # a full batch of 4 and a last one of 2
    for plain, captured in zip(*results):
        np.testing.assert_allclose(captured.z, plain.z, rtol=1e-4, atol=1e-4)


@pytest.fixture
def small_bundle(tmp_path, monkeypatch):
    monkeypatch.setattr(sessions, "_SERIAL_FASTER", {})
    write_tiny_bundle(tmp_path / "bundle")
    return tmp_path / "bundle"


def _threads(session) -> int:
    return session.get_session_options().intra_op_num_threads


def test_a_small_gradient_graph_runs_each_batch_size_on_one_thread_only_where_measured_faster(
    small_bundle, monkeypatch
):
    timed = []
    monkeypatch.setattr(
        sessions, "_first_is_faster", lambda first, second, names, feeds: timed.append(feeds) or len(feeds["z"]) == 8
    )
    runner = Pipeline.from_bundle(small_bundle, device="cpu", threads=2).runner("class_grad")
    assert _threads(runner.session) == 2
    serial = runner.session_for(8)
    assert serial is not runner.session and _threads(serial) == 1 and timed[0]["z"].shape == (8, D)
    assert runner.session_for(64) is runner.session  # measured slower at this batch size
    assert runner.session_for(8) is serial and runner.session_for(64) is runner.session and len(timed) == 2
    again = Pipeline.from_bundle(small_bundle, device="cpu", threads=2).runner("class_grad")
    assert _threads(again.session_for(8)) == 1 and again.session_for(64) is again.session
    assert len(timed) == 2  # decided once per graph, thread setting and batch size


def test_one_thread_pipelines_open_no_second_session(small_bundle, monkeypatch):
    monkeypatch.setattr(sessions, "_first_is_faster", lambda *args: pytest.fail("nothing to time on one thread"))
    runner = Pipeline.from_bundle(small_bundle, device="cpu", threads=1).runner("class_grad")
    assert runner.session_for(8) is runner.session


def test_either_session_gives_the_same_gradients(small_bundle):
    z = np.random.default_rng(0).standard_normal((8, D)).astype(np.float32)
    weights = np.eye(K, dtype=np.float32)[np.arange(8) % K]
    runner = Pipeline.from_bundle(small_bundle, device="cpu", threads=2).runner("class_grad")
    chosen = runner.run(z=z, weights=weights)  # times both sessions at batch 8, then runs on the faster
    assert list(sessions._SERIAL_FASTER) == [(runner._serial_key[0], 2, 8)]
    other = runner.session if runner.session_for(8) is not runner.session else runner._serial
    np.testing.assert_allclose(
        chosen["grad"], other.run(["grad"], {"z": z, "weights": weights})[0], rtol=1e-5, atol=1e-6
    )


def _spinning(session) -> bool:
    return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_only_graphs_run_once_per_batch_keep_spinning_workers(small_bundle):
    """The decode and the encoder spin between nodes (nothing else runs then); the gradient graphs, which the
    sampler's NumPy work alternates with, let their workers sleep."""
    pipe = Pipeline.from_bundle(small_bundle, device="cpu", threads=2)
    spinning = {role: _spinning(runner.session) for role, runner in pipe.open_all().items()}
    assert spinning == {role: role in sessions.SPINNING_ROLES for role in spinning}
    assert spinning["generator"] and not spinning["class_grad"]
