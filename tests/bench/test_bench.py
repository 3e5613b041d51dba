"""Smoke tests of the benchmark on the ImageNet networks in miniature (width 1/16); no timing assertions."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from bench.__main__ import main
from bench.cuda import run_graph_bound, run_step_bound, time_cuda_variants
from bench.imagenet import ensure_bundle
from bench.machine import graph_cost, products_model
from bench.precision import int8_bundle
from bench.variants import (
    StepProblem,
    fused_model,
    int8_block_model,
    int8_dynamic_model,
    open_session,
    run_fused,
    run_iobinding,
    run_plain,
    step_model,
    update_numpy,
)
from export_tools.quantize import MIN_MEDIAN_GRAD_COSINE
from latent_onnx import Pipeline, SGLDSampler, load_bundle
from latent_onnx.onnx_scan import op_types
from latent_onnx.priors import GaussianPrior
from latent_onnx.sampler import ChainState
from latent_onnx.sessions import QUANTISED_OPS, SessionFactory

WIDTH = 16
D, K = 4096 // WIDTH, 1000


@pytest.fixture(scope="session")
def bench_cache(tmp_path_factory):
    """A cache folder holding the width-1/16 ImageNet benchmark bundle (exported once per session)."""
    cache = tmp_path_factory.mktemp("bench-cache")
    ensure_bundle(cache, WIDTH, say=lambda line: None)
    return cache


@pytest.fixture(scope="session")
def problem(bench_cache):
    pipe = Pipeline.from_bundle(bench_cache / f"bench-imagenet-random-w{WIDTH}", device="cpu", threads=1)
    model = onnx.load_from_string(pipe.bundle.graph_bytes("class_grad"))
    config = dataclasses.replace(pipe.sampler_config(), eps1_final=None, eps1=0.5, prior_weight=0.3)
    z0 = np.clip(np.random.default_rng(1).standard_normal((3, D), dtype=np.float32), *config.clip)
    weights = np.zeros((3, K), np.float32)
    weights[:, 11] = 1.0
    return StepProblem(model, config, 1.0, z0, weights)


def test_graph_cost_counts_each_weight_use(problem):
    cost = graph_cost(problem.model)
    weights = D * D + D * K  # fc7 and fc8, read in the forward and again in the backward pass
    assert cost.weight_bytes == 2 * 4 * weights
    assert cost.flops_per_sample == 2 * 2 * weights


def test_weight_products_alone_are_the_graphs_products_on_its_weights(problem):
    products = products_model(problem.model)
    onnx.checker.check_model(products)
    assert graph_cost(products) == graph_cost(problem.model)  # the same weights, read as often, same FLOPs
    assert len(products.graph.initializer) == 2  # fc7 and fc8, each held once
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in products.graph.initializer}
    session = open_session(products, 1)
    feeds = {
        i.name: np.random.default_rng(0).standard_normal(
            (2, i.type.tensor_type.shape.dim[1].dim_value), dtype=np.float32
        )
        for i in products.graph.input
    }
    for node, got in zip(products.graph.node, session.run(None, feeds)):
        weight = weights[node.input[1]]
        transposed = any(a.name == "transB" and a.i for a in node.attribute)
        np.testing.assert_allclose(
            got, feeds[node.input[0]] @ (weight.T if transposed else weight), rtol=1e-4, atol=1e-4
        )


def test_the_variants_update_is_the_runtimes_sgld_step(problem):
    session = open_session(problem.model, 1)

    def target(z):
        return tuple(session.run(["logp", "grad"], {"z": z, "weights": problem.weights}))

    assert problem.config.normalize_grad and problem.config.clip and problem.config.prior_weight  # every term runs
    noise = np.random.default_rng(2).standard_normal(problem.z0.shape, dtype=np.float32)
    sampler = SGLDSampler(problem.config, GaussianPrior(dim=D, mean=0.0, std=problem.prior_std))
    want = sampler.step(ChainState.at(problem.z0, target), target, noise, None, 0).z
    z = problem.z0.copy()
    update_numpy(problem, z, target(z)[1], noise * np.float32(np.sqrt(problem.config.eps2)))
    assert np.abs(z - problem.z0).max() > 1e-3  # the chains moved
    np.testing.assert_allclose(z, want, rtol=1e-5, atol=1e-6)


def test_fused_loop_and_io_binding_match_the_step_loop(problem):
    noise = problem.noise(4)
    session = open_session(problem.model, 1)
    plain = run_plain(session, problem, noise)
    assert np.abs(plain - problem.z0).max() > 1e-3  # the chains moved
    np.testing.assert_allclose(run_iobinding(session, problem, noise), plain, atol=1e-5)
    fused = run_fused(open_session(fused_model(problem.model, problem.config, problem.prior_std), 1), problem, noise)
    np.testing.assert_allclose(fused, plain, atol=1e-5)


def test_device_resident_step_loop_matches_the_step_loop(problem):
    # bench/cuda.py's runners, on the CPU's device buffers: the same chains as session.run per step
    noise = problem.noise(4)
    plain = run_plain(open_session(problem.model, 1), problem, noise)
    stepper = open_session(step_model(problem.model, problem.config, problem.prior_std), 1)
    np.testing.assert_allclose(run_step_bound(stepper, problem, noise, "cpu"), plain, atol=1e-5)
    run_graph_bound(open_session(problem.model, 1), problem, 2, "cpu")  # binds and runs


def test_cuda_variants_run_on_any_device(problem):
    results = time_cuda_variants(problem, steps=2, rounds=1, device="cpu")
    assert set(results) == {"loop", "graph-bound", "step-bound", "fused"}
    assert all(result["step_s"] > 0 for result in results.values())


@pytest.mark.parametrize("quantise", [int8_block_model, int8_dynamic_model])
def test_int8_gradients_point_the_same_way(problem, quantise):
    # the converter's median gate, and every sample within 0.99, on any CPU (AVX2-only ones saturated 8-bit weights)
    z = np.clip(np.random.default_rng(3).standard_normal((16, D), dtype=np.float32), *problem.config.clip)
    feeds = {"z": z, "weights": np.repeat(problem.weights[:1], 16, axis=0)}
    _, want = open_session(problem.model, 1).run(["logp", "grad"], feeds)
    _, got = open_session(quantise(problem.model), 1).run(["logp", "grad"], feeds)
    cosine = np.sum(want * got, axis=1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1))
    assert np.median(cosine) >= MIN_MEDIAN_GRAD_COSINE and cosine.min() > 0.99, cosine


@pytest.mark.slow
def test_bench_command_writes_every_section(bench_cache, tmp_path):
    out = tmp_path / "results"
    bundle = bench_cache / f"bench-imagenet-random-w{WIDTH}"
    args = [
        "--width",
        str(WIDTH),
        "--batches",
        "1,2",
        "--latent-steps",
        "2",
        "--composite-steps",
        "1",
        "--threads",
        "1",
        "--cache",
        str(bench_cache),
        "--default-bundle",
        str(bundle),
        "--evaluator",
        str(tmp_path / "none.pt"),
        "--dataset-per-class",
        "1",  # the test bundle has 1,000 classes
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"meta", "machine", "imagenet", "default", "eager", "variants", "precision", "coldstart"}
    assert results["dataset"]["per_class"] == 1 and results["dataset"]["runs"]
    assert f"{os.cpu_count()} cores" in results["meta"]["machine"]  # every figure names its machine
    assert "skipped" in results["precision"]  # no evaluator checkpoint given
    ratios = results["imagenet"]["ratios"]
    assert [r["batch"] for r in ratios] == [1, 2] and all(r["step_ratio"] > 0 for r in ratios)
    assert {row["path"] for row in results["eager"]} == {"latent", "composite"}
    assert (
        results["coldstart"]["peak_rss_mb"] > 0
        and results["coldstart"]["first_image_s"] <= results["coldstart"]["exit_s"]
    )
    assert "fused" in results["variants"]["batches"]["2"]["variants"]
    text = (out / "results.md").read_text()
    assert "Latent path against composite path" in text and "PyTorch eager" in text and "Cold start" in text
    if importlib.util.find_spec("matplotlib") is not None:  # the plot needs the bench extra
        assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_section_is_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["--sections", "imagenet,speed", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown sections ['speed']" in result.output


def test_int8_bundle_is_a_verified_bundle_that_the_pipeline_opens(bench_cache, tmp_path):
    source = load_bundle(bench_cache / f"bench-imagenet-random-w{WIDTH}")
    bundle = load_bundle(int8_bundle(source, int8_dynamic_model, tmp_path))  # every sha256 checked
    assert op_types(bundle.graph_bytes("class_grad")) & QUANTISED_OPS
    assert bundle.graph_bytes("generator") == source.graph_bytes("generator")
    result = Pipeline(bundle, SessionFactory("cpu", 1)).generate(classes="11", n=2, seed=0, steps=2)
    assert result.z.shape == (2, D) and np.isfinite(result.z).all()
