import numpy as np
import pytest
import torch

from export_tools import ExportError
from export_tools.recipes.fashion_bundle import write_fashion_bundle
from export_tools.recipes.fashion_data import CLASS_NAMES, PALETTE_RGB, load_split
from export_tools.recipes.fashion_train import (
    RECIPE_VERSION,
    FeatureStatistics,
    Networks,
    Progress,
    TrainConfig,
    Trainer,
    blend_hues,
    trained_networks,
)
from latent_onnx import Pipeline

TINY = dict(
    latent_dim=8,
    width=4,
    head_hidden=16,
    caption_features=16,
    batch_size=64,
    autoencoder_epochs=3,  # the tinted generator needs three passes over this tiny set to draw its shapes
    flow_epochs=2,
    flow_couplings=4,
    flow_hidden=16,
    generator_epochs=1,
    teacher_epochs=1,
    head_epochs=3,  # the captioners' probes need three passes over this tiny pool
    pool_copies=2,
    ensemble=2,
)


@pytest.fixture(scope="module")
def tiny_run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    Trainer(TrainConfig(**TINY), out, tiny_dataset, log=lambda line: None).run()
    return out


def test_finished_run_gives_whitened_codes_an_invertible_flow_and_working_heads(tiny_run, tiny_dataset):
    config, nets, vocab = trained_networks(tiny_run)
    train = load_split("train", tiny_dataset)
    with torch.no_grad():
        z = nets.encoder(torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255)
        assert np.allclose(z.mean(0), 0, atol=1e-3)
        assert np.allclose(torch.cov(z.T), np.eye(config.latent_dim), atol=1e-3)
        u, log_det = nets.flow.inverse(z)
        assert torch.allclose(nets.flow(u), z, atol=1e-4) and log_det.shape == (len(z),)
        assert nets.flow.log_prob(z).mean() > -0.5 * config.latent_dim * 2.84 - 5  # it learned something
        assert nets.generator(nets.flow(u[:4])).shape == (4, 3, 32, 32)
        assert nets.head(u[:4]).shape == (4, len(CLASS_NAMES))
        tokens = torch.tensor([[1, 2, 0, 0]] * 4)
        logp = nets.captioner(u[:4], tokens, torch.tensor([[1.0, 1, 1, 0]] * 4))
        assert logp.shape == (4,) and (logp < 0).all()


def test_head_is_distilled_from_the_teacher_on_a_pool_from_data_to_prior(tiny_run, tiny_dataset):
    trainer = Trainer(TrainConfig(**TINY), tiny_run, tiny_dataset, log=lambda line: None)
    trainer.resume()
    trainer.run()  # finished: loads the data, trains nothing
    u, class_probs, colour_probs = trainer.distillation_pool()
    assert u.shape == (2 * 960, 8) and class_probs.shape == (2 * 960, 10) and colour_probs.shape == (2 * 960, 8)
    assert torch.allclose(class_probs.sum(1), torch.ones(len(u))) and torch.allclose(
        colour_probs.sum(1), torch.ones(len(u))
    )
    assert trainer.distillation_pool() is trainer.distillation_pool()  # built once
    # the teacher reads the real training images it was trained on
    train = load_split("train", tiny_dataset)
    with torch.no_grad():
        class_logits, _ = trainer.nets.teacher(torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255)
        assert (class_logits.argmax(1).numpy() == train.labels).mean() > 0.5
        # every head follows the teacher's labels of the decoded codes, not chance
        for head, captioner, probe in zip(trainer.nets.head, trainer.nets.captioner, trainer.nets.caption_probe):
            agreement = (head(u).argmax(1) == class_probs.argmax(1)).float().mean()
            # and so do the captioner's features, through the training-only probe
            probe_agreement = probe(captioner.features(u))[:, : len(CLASS_NAMES)].argmax(1) == class_probs.argmax(1)
            # chance is 0.1, and 0.2 is 14 standard errors above it on 1,920 codes (seed 0's first probe: 0.23)
            assert agreement > 0.3 and probe_agreement.float().mean() > 0.2


def test_the_heads_and_captioners_are_trained_apart_and_read_as_the_mean_of_their_log_probabilities(tiny_run):
    config, nets, _ = trained_networks(tiny_run)
    assert len(nets.head) == len(nets.captioner) == config.ensemble == 2
    u = torch.randn(16, config.latent_dim)
    tokens, mask = torch.tensor([[1, 2, 0, 0]] * 16), torch.tensor([[1.0, 1, 1, 0]] * 16)
    with torch.no_grad():
        heads = [head(u).log_softmax(1) for head in nets.head]
        captions = [captioner(u, tokens, mask) for captioner in nets.captioner]
        assert not torch.allclose(heads[0], heads[1], atol=1e-3)  # own initialisations and caption draws
        assert not torch.allclose(captions[0], captions[1], atol=1e-3)
        assert torch.allclose(nets.head(u), (heads[0] + heads[1]) / 2, atol=1e-6)
        assert torch.allclose(nets.captioner(u, tokens, mask), (captions[0] + captions[1]) / 2, atol=1e-6)


def test_distillation_pool_is_cached_for_the_same_networks_and_rebuilt_for_others(tiny_run, tiny_dataset):
    def pool_of(trainer):
        lines = []
        trainer.log = lines.append
        trainer.run()  # finished: loads the data, trains nothing
        return trainer.distillation_pool(), [line for line in lines if "distillation pool" in line]

    built = Trainer(TrainConfig(**TINY), tiny_run, tiny_dataset, log=lambda line: None)
    (u, class_probs, _), lines = pool_of(built)
    assert built.pool_path.exists() and lines == [
        f"[head] distillation pool: {len(u)} codes read from {built.pool_path}"
    ]

    other = Trainer(TrainConfig(**TINY), tiny_run, tiny_dataset, log=lambda line: None)
    other.resume()
    with torch.no_grad():
        other.nets.teacher.klass.bias += 1.0  # another teacher labels differently: the cache does not apply
    other.resume = lambda: None  # run() must keep the changed teacher
    (u2, class_probs2, _), lines = pool_of(other)
    assert "decoded and labelled" in lines[0] and torch.equal(u2, u) and not torch.equal(class_probs2, class_probs)


def test_colour_label_noise_labels_the_colour_of_a_nearby_code_and_keeps_codes_and_classes(
    tiny_run, tiny_dataset, tmp_path
):
    plain = Trainer(TrainConfig(**TINY), tiny_run, tiny_dataset, log=lambda line: None)
    plain.run()  # finished: loads the data, trains nothing
    u, class_probs, colour_probs = plain.distillation_pool()

    smoothed = Trainer(
        TrainConfig(**{**TINY, "colour_label_noise": 0.5}), tmp_path, tiny_dataset, log=lambda line: None
    )
    state = torch.load(tiny_run / "checkpoint.pt", weights_only=False)
    smoothed.nets.load(state)
    smoothed.progress = Progress(**state["progress"])
    smoothed.run()  # every stage counted as done: nothing trained
    u2, class_probs2, colour_probs2 = smoothed.distillation_pool()
    assert smoothed.pool_key() != plain.pool_key()  # another pool, not the cached one
    assert torch.equal(u2, u) and torch.allclose(class_probs2, class_probs)
    assert not torch.equal(colour_probs2, colour_probs)
    # the colour labels are the teacher's colours of codes moved by 0.5 eps (the pool's third draw), not of u
    draws = torch.Generator().manual_seed(TrainConfig().seed * 1000 + 999)
    torch.rand(len(u), 1, generator=draws), torch.randn(u.shape, generator=draws)  # the pool's a and its eps
    nearby = u[:64] + 0.5 * torch.randn(u.shape, generator=draws)[:64]
    with torch.no_grad():
        _, colour_logits = smoothed.nets.teacher(smoothed.nets.generator(smoothed.nets.flow(nearby)))
    assert torch.allclose(colour_probs2[:64], colour_logits.softmax(1), atol=1e-5)


def test_blended_hues_are_labelled_with_the_weights_of_their_two_palette_colours(tiny_dataset):
    split = load_split("train", tiny_dataset, limit=512)
    pixels = torch.from_numpy(split.images).permute(0, 3, 1, 2).float() / 255.0
    gray, colours = torch.from_numpy(split.gray), torch.from_numpy(split.colours)
    torch.manual_seed(0)
    mixed, probs = blend_hues(pixels, gray, colours, fraction=0.5)
    blended = ~torch.isclose(probs.max(1).values, torch.tensor(1.0))
    assert 0.35 < blended.float().mean() < 0.65
    assert torch.allclose(probs.sum(1), torch.ones(len(probs)))
    assert ((probs > 0).sum(1) <= 2).all() and (probs[torch.arange(len(probs)), colours] > 0).all()
    # a blended item is its gray levels times the weighted mean of the two colours; the rest are untouched
    tint = probs @ torch.from_numpy(PALETTE_RGB) / 255.0
    assert torch.allclose(mixed[blended], gray[blended].float()[:, None] / 255.0 * tint[blended][:, :, None, None])
    assert torch.equal(mixed[~blended], pixels[~blended])
    # no blending: the batch and one-hot labels as they were
    same, one_hot = blend_hues(pixels, gray, colours, fraction=0.0)
    assert torch.equal(same, pixels) and torch.equal(one_hot.argmax(1), colours) and (one_hot.max(1).values == 1).all()


def test_the_generator_draws_each_image_as_one_shape_times_one_tint():
    from export_tools.nets.fashion import Generator

    torch.manual_seed(0)
    generator = Generator(latent_dim=8, width=4, tints=3).eval()
    with torch.no_grad():
        generator.palette.copy_(torch.randn(3, 3))
        codes = torch.randn(5, 8)
        images = generator.decode_raw(codes)
        # every pixel's RGB is the same colour scaled: the image is rank one as channels x pixels
        singular = torch.linalg.svdvals(images.flatten(2))
        assert (singular[:, 1] < 1e-5 * singular[:, 0]).all()
        colour = generator.tint_logits(codes).softmax(1) @ torch.sigmoid(generator.palette)
        direction = images.flatten(2).sum(2)
        assert torch.allclose(
            direction / direction.norm(dim=1, keepdim=True), colour / colour.norm(dim=1, keepdim=True)
        )
        # a code whose tint softmax is sure draws in that learned colour alone
        generator.to_tint[-1].bias.copy_(torch.tensor([0.0, 60.0, 0.0]))
        sure = generator.decode_raw(codes).flatten(2).sum(2)
        palette = torch.sigmoid(generator.palette[1])
        assert torch.allclose(sure / sure.norm(dim=1, keepdim=True), (palette / palette.norm()).expand(5, 3), atol=1e-5)


def test_the_autoencoders_tint_learns_each_training_images_colour(tiny_dataset, tmp_path):
    stage_one = {**TINY, "autoencoder_epochs": 6, "tint_weight": 1.0}
    stage_one.update({f"{stage}_epochs": 0 for stage in ("flow", "teacher", "generator", "head")})
    torch.manual_seed(0)
    Trainer(TrainConfig(**stage_one), tmp_path, tiny_dataset, log=lambda line: None).run()
    _, nets, _ = trained_networks(tmp_path)
    train = load_split("train", tiny_dataset)
    with torch.no_grad():
        codes = nets.encoder.raw_code(torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255)
        picked = nets.generator.tint_logits(codes).argmax(1).numpy()
    assert (picked == train.colours).mean() > 0.5  # chance is 1/8


def test_a_generator_that_draws_black_stops_the_run_without_a_checkpoint(tiny_dataset, tmp_path):
    stage_one = {**TINY, "autoencoder_epochs": 1}
    stage_one.update({f"{stage}_epochs": 0 for stage in ("flow", "teacher", "generator", "head")})
    trainer = Trainer(TrainConfig(**stage_one), tmp_path, tiny_dataset, log=lambda line: None)
    with torch.no_grad():
        trainer.nets.generator.to_shape.bias.fill_(-100.0)  # a shape whose sigmoid has died at 0
    with pytest.raises(ExportError, match="the generator draws black after autoencoder epoch 1"):
        trainer.run()
    assert not trainer.checkpoint_path.exists()


def test_feature_statistics_measure_the_gap_of_a_batchs_mean_and_covariance_to_the_reference():
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(20000, 3, generator=generator) * torch.tensor([1.0, 2.0, 3.0]) + torch.tensor([5.0, 6, 7])
    statistics = FeatureStatistics(reference)
    batch = reference[:4000]
    assert statistics.mismatch(batch) < 0.01  # a draw of the reference itself
    shifted = batch + 2 * statistics.std  # every standardised mean 2, covariance unchanged: 2 ** 2
    assert statistics.mismatch(shifted) == pytest.approx(4.0, abs=0.05)
    spread = statistics.mean + 2 * (batch - statistics.mean)  # standardised covariance 4 I against I: 3 ** 2 * 3 / 9
    assert statistics.mismatch(spread) == pytest.approx(3.0, abs=0.2)


def test_the_teachers_class_does_not_depend_on_the_colour_and_its_colour_does(tiny_dataset):
    from export_tools.nets.fashion import Teacher, brightness

    gray = torch.from_numpy(load_split("train", tiny_dataset, limit=4).gray).float()[:, None] / 255.0
    tints = [gray * (torch.from_numpy(colour) / 255.0)[None, :, None, None] for colour in PALETTE_RGB]
    for tinted in tints[1:]:
        assert torch.allclose(brightness(tinted), brightness(tints[0]), atol=1e-6)
    torch.manual_seed(0)
    teacher = Teacher(width=4, invariant_class=True).eval()
    with torch.no_grad():
        (class_a, colour_a), (class_b, colour_b) = teacher(tints[0]), teacher(tints[4])
    assert torch.allclose(class_a, class_b, atol=1e-5) and not torch.allclose(colour_a, colour_b, atol=1e-3)
    plain = Teacher(width=4).eval()
    plain.load_state_dict(teacher.state_dict())  # the same weights: the option adds none
    with torch.no_grad():
        assert not torch.allclose(plain(tints[0])[0], plain(tints[4])[0], atol=1e-3)


def test_each_network_starts_from_its_own_seed_whatever_the_others_sizes():
    def starts(**options):
        nets = Networks.build(TrainConfig(**{**TINY, **options}), vocab_size=32)
        return {name: module.state_dict() for name, module in nets.modules().items()}

    def same(a, b):
        return a.keys() <= b.keys() and all(torch.equal(a[key], b[key]) for key in a)

    base, wider = starts(), starts(head_hidden=24, caption_features=8, ensemble=3)
    for name in ("encoder", "generator", "discriminator", "aux_classifier", "flow", "teacher"):
        assert same(base[name], wider[name]), name
    assert same(base["head"], starts(caption_features=8, ensemble=3)["head"])  # the first two of three heads
    assert same(base["captioner"], starts(head_hidden=24)["captioner"])
    other_seed = starts(seed=1)
    assert not torch.equal(base["teacher"]["klass.weight"], other_seed["teacher"]["klass.weight"])


@pytest.mark.parametrize("option", ["head_hidden", "caption_features", "ensemble", "latent_dim"])
def test_a_network_size_below_one_is_refused_in_one_line(option):
    with pytest.raises(ExportError, match=f"--{option.replace('_', '-')} must be at least 1, not -1"):
        Networks.build(TrainConfig(**{**TINY, option: -1}), vocab_size=32)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_a_hue_mix_outside_zero_to_one_is_refused_in_one_line(fraction):
    with pytest.raises(ExportError, match="--hue-mix is a fraction of the teacher's images, from 0 to 1"):
        Networks.build(TrainConfig(**{**TINY, "hue_mix": fraction}), vocab_size=32)


@pytest.mark.parametrize("noise", [-0.1, float("inf"), float("nan")])
def test_a_colour_label_noise_that_is_not_a_finite_std_is_refused_in_one_line(noise):
    with pytest.raises(ExportError, match="--colour-label-noise is the std of a move of the code, a finite number"):
        Networks.build(TrainConfig(**{**TINY, "colour_label_noise": noise}), vocab_size=32)


def test_checkpoint_of_another_recipe_version_is_refused(tiny_run, tmp_path):
    state = torch.load(tiny_run / "checkpoint.pt", weights_only=False)
    state["recipe_version"] = 1
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ExportError, match=f"made by version 1 of the recipe, this is version {RECIPE_VERSION}"):
        trained_networks(tmp_path)


def test_resume_refuses_another_configuration(tiny_run, tiny_dataset):
    changed = Trainer(TrainConfig(**{**TINY, "code_noise": 0.5}), tiny_run, tiny_dataset, log=lambda line: None)
    with pytest.raises(ExportError, match=r"another configuration \(code_noise: 0\.2 -> 0\.5\)"):
        changed.run()


def test_resume_extends_a_run_without_repeating_finished_epochs(tiny_run, tiny_dataset, tmp_path):
    lines = []
    extended = Trainer(TrainConfig(**{**TINY, "head_epochs": 4}), tiny_run, tiny_dataset, log=lines.append)
    progress = extended.run()
    assert progress.epochs_done == {
        "autoencoder": 3,
        "whitening": 1,
        "flow": 2,
        "generator": 1,
        "teacher": 1,
        "head": 4,
    }
    assert [line for line in lines if "done in" in line] == [next(text for text in lines if "[head] epoch 4/4" in text)]


def test_unfinished_or_missing_run_is_refused(tmp_path):
    with pytest.raises(ExportError, match="train first"):
        trained_networks(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="cannot read checkpoint"):
        trained_networks(tmp_path)


def test_a_finished_run_exports_a_bundle_whose_gradients_are_those_of_the_ensemble(tiny_run, tmp_path):
    write_fashion_bundle(tiny_run, tmp_path / "fashion-tiny", log=lambda line: None)  # every graph validated
    config, nets, _ = trained_networks(tiny_run)
    pipe = Pipeline.from_bundle(tmp_path / "fashion-tiny")
    z = np.random.default_rng(0).standard_normal((3, config.latent_dim)).astype(np.float32)
    logp, grad = pipe.target(CLASS_NAMES[2], None)(z)
    u = torch.from_numpy(z).requires_grad_(True)
    # the log of the members' normalised geometric mean
    expected = torch.stack([head(u).log_softmax(1) for head in nets.head]).mean(0).log_softmax(1)[:, 2]
    (expected_grad,) = torch.autograd.grad(expected.sum(), u)
    assert np.allclose(logp, expected.detach().numpy(), atol=1e-4)
    assert np.allclose(grad, expected_grad.numpy(), atol=1e-4)
    result = pipe.generate(caption="a red t-shirt", n=2, seed=0, steps=3)
    assert result.pixels.shape == (2, 32, 32, 3) and np.isfinite(result.z).all()
