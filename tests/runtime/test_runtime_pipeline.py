"""The pipeline on a tiny bundle: conditions, reproducibility, batching, paths, threads."""

import threading

import numpy as np
import pytest
from PIL import Image
from runtime_bundles import D, H, K, T, W, edit_manifest, use_mixture_prior

from latent_onnx import GenerateOptions, InputError, Pipeline
from latent_onnx.errors import SamplingError
from latent_onnx.images import to_pixels
from latent_onnx.sessions import SessionFactory


def test_generate_returns_images_codes_and_log_probabilities(tiny_pipeline):
    result = tiny_pipeline.generate(classes="sneaker", n=3, seed=0, steps=5)
    assert len(result.images) == 3 and result.images[0].size == (W, H) and result.images[0].mode == "RGB"
    assert result.z.shape == (3, D) and result.z.dtype == np.float32
    assert result.logp.shape == (3,) and np.all(result.logp <= 0)
    assert result.pixels.shape == (3, H, W, 3) and result.indices == [0, 1, 2]
    np.testing.assert_array_equal(np.asarray(result.images[1]), result.pixels[1])
    np.testing.assert_array_equal(tiny_pipeline.decode(result.z), result.pixels)


def test_a_sample_depends_on_seed_and_index_only(tiny_pipeline):
    one_by_one = tiny_pipeline.generate(classes="sandal", n=3, seed=7, batch_size=1)
    together = tiny_pipeline.generate(classes="sandal", n=3, seed=7, batch_size=3)
    np.testing.assert_allclose(one_by_one.z, together.z, atol=1e-5)
    third = tiny_pipeline.generate(classes="sandal", n=1, seed=7, start_index=2)
    np.testing.assert_allclose(third.z[0], together.z[2], atol=1e-5)
    other_seed = tiny_pipeline.generate(classes="sandal", n=3, seed=8)
    assert not np.allclose(other_seed.z, together.z)


def test_injected_start_and_noise_follow_the_update_rule(tiny_pipeline):
    steps, n = 4, 2
    rng = np.random.default_rng(3)
    init_z = rng.standard_normal((n, D)).astype(np.float32)
    noise = rng.standard_normal((steps, n, D)).astype(np.float32)
    result = tiny_pipeline.generate(
        classes="sneaker:0.7,sandal:0.3",
        n=n,
        seed=0,
        steps=steps,
        eps1=0.1,
        eps2=0.01,
        prior_weight=0.5,
        init_z=init_z,
        noise=noise,
    )
    weights = np.tile(np.array([0.7, 0.3, 0.0], dtype=np.float32), (n, 1))
    z = init_z
    for t in range(steps):
        grad = tiny_pipeline.runner("class_grad").run(z=z, weights=weights)["grad"]
        z = z + 0.1 * (grad + 0.5 * -z) + 0.1 * noise[t]  # the SGLD update written out; the prior is N(0, I)
    np.testing.assert_allclose(result.z, z, atol=1e-5)
    expected_logp = tiny_pipeline.runner("class_grad").run(z=z, weights=weights)["logp"]
    np.testing.assert_allclose(result.logp, expected_logp, atol=1e-5)
    np.testing.assert_array_equal(result.acceptance, [1.0, 1.0])


def test_zero_steps_decode_the_start(tiny_pipeline):
    init_z = np.random.default_rng(5).standard_normal((2, D)).astype(np.float32)
    result = tiny_pipeline.generate(classes="sneaker", n=2, seed=0, steps=0, init_z=init_z)
    np.testing.assert_array_equal(result.z, init_z)
    np.testing.assert_array_equal(result.pixels, tiny_pipeline.decode(init_z))


def test_mala_reports_its_acceptance_and_keeps_rejected_chains_in_place(tiny_pipeline):
    tiny = tiny_pipeline.generate(classes="sneaker", n=8, seed=0, steps=30, method="mala", eps1=0.01, eps2=0.02)
    huge = tiny_pipeline.generate(classes="sneaker", n=8, seed=0, steps=30, method="mala", eps1=50.0, eps2=100.0)
    assert tiny.acceptance.mean() > 0.8 and huge.acceptance.mean() < 0.2
    assert tiny.config.method == "mala" and np.isfinite(huge.z).all()


def test_a_chain_switches_its_condition_mid_run(tiny_pipeline):
    options = dict(n=16, seed=3, steps=80, eps1=0.05, eps2=0.0, prior_weight=0.0)
    switched = tiny_pipeline.generate(classes="sneaker", then="sandal", switch_at=40, **options)
    direct = tiny_pipeline.generate(classes="sandal", **options)
    sandal = tiny_pipeline.runner("classifier").run(z=switched.z)["logits"].argmax(1)
    assert switched.options.switch_at == 40 and np.mean(sandal == 1) > 0.9
    np.testing.assert_allclose(
        switched.logp,
        tiny_pipeline.runner("class_grad").run(
            z=switched.z, weights=np.tile(tiny_pipeline.class_weights("sandal"), (16, 1))
        )["logp"],
        atol=1e-5,
    )
    assert not np.allclose(switched.z, direct.z)
    assert tiny_pipeline.generate(classes="sneaker", then="sandal", **options).options.switch_at == 40  # default: half
    with pytest.raises(InputError, match="switch_at must be an integer from 1 to 79"):
        tiny_pipeline.generate(classes="sneaker", then="sandal", switch_at=80, **options)
    with pytest.raises(InputError, match="needs a condition to switch to"):
        tiny_pipeline.generate(classes="sneaker", switch_at=3, **options)


def test_a_diverging_chain_is_an_error_that_names_the_settings(tiny_pipeline):
    init_z = np.full((1, D), 1e30, np.float32)
    with pytest.raises(SamplingError, match=r"diverged at step \d+ of 50.*lower --eps1 \(now 1e\+30\)"):
        tiny_pipeline.generate(classes="sneaker", n=1, seed=0, steps=50, eps1=1e30, init_z=init_z)


def test_iter_batches_yields_each_batch_and_checks_everything_first(tiny_pipeline):
    parts = list(tiny_pipeline.iter_batches(classes="sandal", n=5, seed=7, batch_size=2, steps=3))
    assert [p.indices for p in parts] == [[0, 1], [2, 3], [4]]
    whole = tiny_pipeline.generate(classes="sandal", n=5, seed=7, batch_size=2, steps=3)
    np.testing.assert_array_equal(np.concatenate([p.z for p in parts]), whole.z)
    with pytest.raises(InputError, match="unknown class"):
        tiny_pipeline.iter_batches(classes="sandals!", n=5)  # raised before any batch runs


def test_sampling_raises_the_log_probability_of_the_class(tiny_pipeline):
    start = tiny_pipeline.generate(classes="boot", n=16, seed=1, steps=1, eps1=1e-6, eps2=0.0, prior_weight=0.0)
    end = tiny_pipeline.generate(classes="boot", n=16, seed=1, steps=100, eps1=0.05, eps2=0.0, prior_weight=0.0)
    assert end.logp.mean() > start.logp.mean() + 0.5


def test_class_specs(tiny_pipeline):
    np.testing.assert_array_equal(tiny_pipeline.class_weights("sneaker"), [1, 0, 0])
    np.testing.assert_array_equal(tiny_pipeline.class_weights("2"), [0, 0, 1])
    np.testing.assert_array_equal(tiny_pipeline.class_weights("Ankle_Boot"), [0, 0, 1])
    np.testing.assert_allclose(tiny_pipeline.class_weights("sneaker:0.7, boot:0.3"), [0.7, 0, 0.3])
    np.testing.assert_allclose(tiny_pipeline.class_weights("sandal:1,sneaker:-0.5"), [-0.5, 1, 0])
    assert tiny_pipeline.class_weights("sneaker").dtype == np.float32 and tiny_pipeline.class_weights("0").shape == (K,)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("sneakers", "did you mean 'sneaker'"),
        ("3", "out of range"),
        ("sneaker:x", "not a number"),
        ("sneaker:nan", "finite"),
        ("sneaker:0", "all weights zero"),
        ("sneaker,,sandal", "empty entry"),
        (" ", "empty"),
    ],
)
def test_bad_class_specs(tiny_pipeline, spec, message):
    with pytest.raises(InputError, match=message):
        tiny_pipeline.class_weights(spec)


def test_caption_tokens_and_errors(tiny_pipeline):
    tokens, mask = tiny_pipeline.caption_tokens("A red sneaker.")
    np.testing.assert_array_equal(tokens, [1, 2, 4, 0, 0])
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 0])
    assert tokens.dtype == np.int64 and mask.dtype == np.float32 and tokens.shape == (T,)
    with pytest.raises(InputError, match="not in the bundle's vocabulary: green, shoe"):
        tiny_pipeline.caption_tokens("a green shoe")
    with pytest.raises(InputError, match="at most 4"):
        tiny_pipeline.caption_tokens("a red blue sneaker sandal")
    with pytest.raises(InputError, match="no words"):
        tiny_pipeline.caption_tokens(" ... ")


def test_caption_sampling_raises_the_caption_log_probability(tiny_pipeline):
    start = tiny_pipeline.generate(caption="a blue sandal", n=8, seed=2, steps=1, eps1=1e-6, eps2=0.0, prior_weight=0.0)
    end = tiny_pipeline.generate(caption="a blue sandal", n=8, seed=2, steps=60, eps1=0.05, eps2=0.0, prior_weight=0.0)
    assert end.logp.mean() > start.logp.mean() + 0.5


def test_composite_path_uses_the_composite_graph(tiny_pipeline):
    options = GenerateOptions(classes="sneaker", n=2, seed=4).updated(steps=3)
    latent = tiny_pipeline.generate(options)
    composite = tiny_pipeline.generate(options, path="composite")
    assert not np.allclose(latent.z, composite.z)
    weights = np.tile(tiny_pipeline.class_weights("sneaker"), (2, 1))
    np.testing.assert_allclose(
        composite.logp,
        tiny_pipeline.runner("composite_class_grad").run(z=composite.z, weights=weights)["logp"],
        atol=1e-5,
    )
    with pytest.raises(InputError, match="classes only"):
        tiny_pipeline.generate(options, classes=None, caption="a red sneaker", path="composite")


def test_init_image_starts_every_chain_at_its_code(tiny_pipeline):
    image = Image.fromarray(tiny_pipeline.decode(np.full((1, D), 0.3, np.float32))[0]).resize((9, 9))
    code = tiny_pipeline.encode(to_pixels(image, H, W)[None])
    result = tiny_pipeline.generate(classes="sandal", n=2, seed=0, steps=1, eps1=1e-6, eps2=0.0, init_image=image)
    np.testing.assert_allclose(result.z, np.repeat(code, 2, axis=0), atol=1e-4)


def test_preset_and_overrides_resolve_in_order(tiny_pipeline):
    assert tiny_pipeline.sampler_config().eps1 == 0.05
    assert tiny_pipeline.sampler_config("paper").eps2 == 1e-8
    assert tiny_pipeline.sampler_config("paper", eps2=0.5).eps2 == 0.5
    with pytest.raises(InputError, match="unknown preset 'fast'.*paper"):
        tiny_pipeline.sampler_config("fast")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"n": 0}, "n must be"),
        ({"batch_size": 0}, "batch size"),
        ({"seed": -1}, "seed"),
        ({"steps": -1}, "steps"),
        ({"eps1": float("inf")}, "eps1"),
        ({"path": "other"}, "path must be"),
        ({"classes": None}, "exactly one"),
        ({"caption": "a red sneaker"}, "exactly one"),
        ({"init_z": np.zeros((2, D))}, r"init_z must be .* shape \[1, 6\]"),
        ({"noise": np.full((20, 1, D), np.nan, np.float32)}, "non-finite"),
    ],
)
def test_bad_generate_options(tiny_pipeline, overrides, message):
    with pytest.raises(InputError, match=message):
        tiny_pipeline.generate(GenerateOptions(classes="sneaker", n=1, seed=0), **overrides)


def test_callback_sees_every_step_of_every_batch(tiny_pipeline):
    calls = []
    tiny_pipeline.generate(
        classes="sneaker", n=3, seed=0, steps=4, batch_size=2, callback=lambda s, t, z: calls.append((s, t, z.shape[0]))
    )
    assert [c[0] for c in calls] == list(range(1, 9)) and {c[1] for c in calls} == {8}
    assert [c[2] for c in calls] == [2] * 4 + [1] * 4


def test_one_pipeline_serves_several_threads(tiny_pipeline):
    expected = {seed: tiny_pipeline.generate(classes="sandal", n=2, seed=seed, steps=10).z for seed in range(4)}
    results, errors = {}, []

    def work(seed):
        try:
            results[seed] = tiny_pipeline.generate(classes="sandal", n=2, seed=seed, steps=10).z
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for seed in range(4):
        np.testing.assert_allclose(results[seed], expected[seed], atol=1e-5)


def test_runner_checks_feeds(tiny_pipeline):
    with pytest.raises(InputError, match=r"input 'weights' has shape \[3, 3\], expected \[2, 3\]"):
        tiny_pipeline.runner("class_grad").run(z=np.zeros((2, D), np.float32), weights=np.zeros((3, K), np.float32))
    with pytest.raises(InputError, match="uint8"):
        tiny_pipeline.encode(np.zeros((1, H, W, 3), np.float32))


def test_cuda_absent_is_an_error_listing_the_providers():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    from latent_onnx import DeviceError

    with pytest.raises(DeviceError, match="available: .*CPUExecutionProvider"):
        SessionFactory(device="cuda")
    with pytest.raises(InputError, match="device must be"):
        SessionFactory(device="tpu")


def test_bundle_clip_and_init_are_applied(tiny_bundle):
    edit_manifest(
        tiny_bundle, lambda m: m["latent"].update(clip=[-0.1, 0.2], init={"kind": "gaussian", "mean": 5.0, "std": 0.01})
    )
    pipe = Pipeline.from_bundle(tiny_bundle, device="cpu")
    result = pipe.generate(classes="sneaker", n=4, seed=0, steps=3)
    assert result.config.clip == (-0.1, 0.2)
    assert result.z.min() >= -0.1 and result.z.max() <= 0.2
    start = pipe.generate(classes="sneaker", n=4, seed=0, steps=1, eps1=1e-9, eps2=0.0, prior_weight=0.0)
    np.testing.assert_allclose(start.z, 0.2)  # drawn near 5, then clipped


def test_settings_by_condition_come_between_the_bundles_defaults_and_the_preset(tiny_bundle):
    edit_manifest(tiny_bundle, lambda m: m.update(sampler_by_condition={"caption": {"steps": 7, "eps1": 0.02}}))
    pipe = Pipeline.from_bundle(tiny_bundle, device="cpu")
    assert pipe.sampler_config(condition="class") == pipe.sampler_config()  # nothing set apart for classes
    assert (pipe.sampler_config(condition="caption").steps, pipe.sampler_config(condition="caption").eps1) == (7, 0.02)
    assert pipe.sampler_config("paper", "caption").eps1 == 0.001  # the preset comes after
    assert pipe.sampler_config("paper", "caption", eps1=0.3).eps1 == 0.3  # and an explicit setting last
    assert pipe.sampler_config("paper", "caption").steps == 7
    # a request runs with its own kind's settings, and says so
    assert pipe.generate(caption="a red sneaker", n=1, seed=0).config.steps == 7
    assert pipe.generate(classes="sneaker", n=1, seed=0).config.steps == pipe.sampler_config().steps
    assert pipe.generate(caption="a red sneaker", n=1, seed=0, steps=2).config.steps == 2
    with pytest.raises(InputError, match="condition must be one of class, caption, not 'pose'"):
        pipe.sampler_config(condition="pose")


def test_a_preset_can_replace_the_bundle_clip(tiny_bundle):
    def change(manifest):
        manifest["latent"]["clip"] = [-0.1, 0.2]
        manifest["presets"]["paper"]["clip"] = None
        manifest["presets"]["wide"] = {"clip": [-3, 3]}

    edit_manifest(tiny_bundle, change)
    pipe = Pipeline.from_bundle(tiny_bundle, device="cpu")
    assert pipe.sampler_config().clip == (-0.1, 0.2)
    assert pipe.sampler_config("paper").clip is None
    assert pipe.sampler_config("wide").clip == (-3.0, 3.0)


def _with_mixture_prior(bundle_dir, means: np.ndarray, spread: float) -> None:
    use_mixture_prior(
        bundle_dir, np.full(len(means), 1 / len(means)), means, np.stack([spread * np.eye(D)] * len(means))
    )


def test_a_conditioned_start_draws_components_by_their_likelihood(tiny_bundle):
    means = np.random.default_rng(1).normal(0, 2, (4, D))
    _with_mixture_prior(tiny_bundle, means, spread=1e-3)
    pipe = Pipeline.from_bundle(tiny_bundle, device="cpu")
    weights = np.tile(pipe.class_weights("sandal"), (4, 1))
    logp = pipe.runner("class_grad").run(z=means.astype(np.float32), weights=weights)["logp"].astype(np.float64)
    expected = np.exp(2.0 * logp) / np.exp(2.0 * logp).sum()  # equal weights, condition_scale 2

    n = 400
    start = pipe.generate(
        classes="sandal",
        n=n,
        seed=0,
        steps=1,
        eps1=1e-9,
        eps2=0.0,
        prior_weight=0.0,
        condition_scale=2.0,
        start="conditioned",
    )
    nearest = np.argmin(((start.z[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(np.bincount(nearest, minlength=4) / n, expected, atol=0.07)
    assert start.config.start == "conditioned"
    unconditioned = pipe.generate(
        classes="sandal", n=n, seed=0, steps=1, eps1=1e-9, eps2=0.0, prior_weight=0.0, start="init"
    )
    nearest = np.argmin(((unconditioned.z[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(np.bincount(nearest, minlength=4) / n, 0.25, atol=0.07)


def test_a_conditioned_start_needs_a_mixture_prior(tiny_pipeline):
    with pytest.raises(InputError, match="start 'conditioned' needs a gaussian mixture prior"):
        tiny_pipeline.generate(classes="sneaker", n=1, seed=0, start="conditioned")
    with pytest.raises(InputError, match="start must be one of init, conditioned"):
        tiny_pipeline.generate(classes="sneaker", n=1, seed=0, start="anywhere")


def test_a_large_class_grad_runs_single_chains_on_an_unpacked_session(tiny_bundle_template, monkeypatch):
    import latent_onnx.sessions as sessions

    monkeypatch.setattr(sessions, "SINGLE_ROW_MIN_BYTES", 0)  # the tiny graph counts as large
    pipe = Pipeline.from_bundle(tiny_bundle_template, device="cpu", threads=1)
    runner = pipe.runner("class_grad")
    single, batched = runner.session_for(1), runner.session_for(2)
    assert single is not batched and runner.session_for(1) is single and runner.session_for(3) is batched
    assert single.get_session_options().get_session_config_entry("session.disable_prepacking") == "1"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # prepacking is left on
        batched.get_session_options().get_session_config_entry("session.disable_prepacking")
    z = np.random.default_rng(0).standard_normal((2, D)).astype(np.float32)
    weights = np.eye(K, dtype=np.float32)[[0, 1]]
    together = runner.run(z=z, weights=weights)
    alone = runner.run(z=z[1:], weights=weights[1:])
    np.testing.assert_allclose(alone["grad"], together["grad"][1:], rtol=1e-5, atol=1e-6)
    assert pipe.runner("generator").session_for(1) is pipe.runner("generator").session  # other roles: one session


def test_a_small_class_grad_keeps_one_session(tiny_pipeline):
    runner = tiny_pipeline.runner("class_grad")
    assert runner.session_for(1) is runner.session_for(4) is runner.session
