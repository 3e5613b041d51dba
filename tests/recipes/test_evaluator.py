import numpy as np
import torch

from export_tools.recipes.evaluator import (
    EvaluatorNet,
    Judge,
    frechet_distance,
    make_samples,
    mean_pairwise_distance,
    random_shift,
    score,
)
from export_tools.recipes.fashion import parse_overrides
from latent_onnx import Pipeline


def test_mean_pairwise_distance_of_known_points():
    points = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    assert np.isclose(mean_pairwise_distance(points), (5 + 5 + 0) / 3)


def test_frechet_distance_is_zero_for_one_set_and_the_mean_shift_for_a_shifted_copy():
    a = np.random.default_rng(0).standard_normal((500, 6))
    assert abs(frechet_distance(a, a)) < 1e-8
    assert np.isclose(frechet_distance(a, a + [2.0, 0, 0, 0, 0, 1.0]), 5.0)
    wider = frechet_distance(a, 2 * a)  # same mean, twice the std: sum of (sqrt(v) - sqrt(4v))^2 ~ D
    assert 4.5 < wider < 7.5


def test_random_shift_moves_content_and_fills_black():
    x = torch.zeros(1, 3, 8, 8)
    x[..., 3, 3] = 1.0
    shifted = random_shift(x, 2, torch.Generator().manual_seed(1))
    assert shifted.shape == x.shape and shifted.sum() == 3.0


def test_score_counts_agreement_per_request():
    judge = Judge(EvaluatorNet())
    images = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    seen = judge.judge(images)
    scores = score(judge, images, seen.classes, seen.colours, seen, seen.classes)
    assert scores.class_agreement == 1.0 and scores.colour_agreement == 1.0
    assert abs(scores.frechet) < 1e-6 and scores.count == 6
    wrong = score(judge, images, (seen.classes + 1) % 10, None, seen, seen.classes)
    assert wrong.class_agreement == 0.0 and wrong.colour_agreement is None


def test_sampler_overrides_keep_numbers_flags_none_and_words():
    overrides = parse_overrides(("eps1=0.02", "steps=1", "normalize_grad=true", "eps1_final=none", "start=init"))
    assert overrides == {"eps1": 0.02, "steps": 1, "normalize_grad": True, "eps1_final": None, "start": "init"}


def test_each_request_starts_from_codes_of_its_own():
    # with 0 steps an image is its decoded start: the i-th images of two requests must differ, and a
    # request's images must be those of one generate call over its own start indices
    pipe = Pipeline.from_bundle(None, device="cpu", threads=1)
    requests = [{"classes": "bag"}, {"classes": "sandal"}]
    images = make_samples(pipe, requests, 3, "latent", seed=7, batch_size=2, sampler={"steps": 0})
    assert images.shape == (6, 32, 32, 3)
    assert all((images[i] != images[3 + i]).any() for i in range(3))
    second = pipe.generate(classes="sandal", n=3, seed=7, start_index=3, steps=0).pixels
    np.testing.assert_array_equal(images[3:], second)
