"""The verifier against the renderer's ground truth, perturbed renders, noise and hand-built scenes."""

import random
from collections import defaultdict

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageDraw

from flowrl.benchmarks.toyshapes.prompts import CATEGORIES, all_prompts, parse_prompt
from flowrl.benchmarks.toyshapes.render import BACKGROUND, PALETTE, draw_shape, render, render_batch, size_range
from flowrl.benchmarks.toyshapes.scene import SceneObject, assess
from flowrl.benchmarks.toyshapes.verify import classify_shape, detect_objects, scores, verify
from flowrl.rewards import ToyShapesReward

N = 600


@pytest.fixture(scope="module")
def renders():
    rng = random.Random(0)
    prompts = [rng.choice([p for p in all_prompts() if p.category == c]) for c in CATEGORIES for _ in range(N // 6)]
    images, scenes = render_batch(prompts, 32, seed=1)
    return prompts, images, scenes


def accuracy_by_category(images, prompts):
    by = defaultdict(list)
    for p, r in zip(prompts, verify(images, prompts)):
        by[p.category].append(r.correct)
    return {c: sum(v) / len(v) for c, v in by.items()}


def test_renders_satisfy_their_prompt_symbolically(renders):
    prompts, _, scenes = renders
    assert all(assess(s, p, 32).correct for p, s in zip(prompts, scenes))


def test_verifier_accepts_clean_renders(renders):
    prompts, images, _ = renders
    accuracy = accuracy_by_category(images, prompts)
    assert min(accuracy.values()) >= 0.99, accuracy


@pytest.mark.parametrize(
    "name, perturb, floor",
    [
        ("blur", lambda x, g: TF.gaussian_blur(x, 3, 0.8), 0.97),
        ("colour noise", lambda x, g: x + 0.08 * torch.randn(x.shape, generator=g), 0.99),
        ("blur and noise", lambda x, g: TF.gaussian_blur(x, 3, 0.7) + 0.06 * torch.randn(x.shape, generator=g), 0.93),
        ("colour shift", lambda x, g: x * (1 + 0.1 * torch.randn(x.shape[0], 3, 1, 1, generator=g)), 0.98),
    ],
)
def test_verifier_is_robust_to_generation_artefacts(renders, name, perturb, floor):
    prompts, images, _ = renders
    perturbed = perturb(images, torch.Generator().manual_seed(0)).clamp(0, 1)
    accuracy = accuracy_by_category(perturbed, prompts)
    assert min(accuracy.values()) >= floor, (name, accuracy)
    assert sum(accuracy.values()) / len(accuracy) >= 0.98, (name, accuracy)


def test_noise_and_blank_images_score_zero(renders):
    prompts, images, _ = renders
    # Noise on every 5th prompt (20 per category): a noise image takes the verifier ~75 ms.
    noisy_prompts = prompts[::5]
    g = torch.Generator().manual_seed(1)
    noise = torch.rand((len(noisy_prompts), *images.shape[1:]), generator=g)
    for junk, junk_prompts in (
        (noise, noisy_prompts),
        (torch.full(images.shape, 250 / 255), prompts),
        (torch.zeros(images.shape), prompts),
    ):
        results = verify(junk, junk_prompts)
        assert not any(r.correct for r in results)
        assert max(r.score for r in results) <= 0.5
    noise_scores = scores(torch.rand(noise.shape, generator=g), noisy_prompts)
    assert noise_scores.mean() < 0.05


def test_mismatched_prompts_agree_with_symbolic_truth(renders):
    prompts, images, scenes = renders
    rng = random.Random(5)
    others = [rng.choice(all_prompts()) for _ in prompts]
    truth = [assess(s, o, 32).correct for s, o in zip(scenes, others)]
    found = [r.correct for r in verify(images, others)]
    assert np.mean([t == f for t, f in zip(truth, found)]) >= 0.99
    assert np.mean(found) < 0.06  # a different prompt is almost never satisfied


def test_score_is_one_exactly_when_correct(renders):
    prompts, images, _ = renders
    rng = random.Random(6)
    mixed = [p if rng.random() < 0.5 else rng.choice(all_prompts()) for p in prompts]
    for r in verify(images, mixed):
        assert 0.0 <= r.score <= 1.0
        assert (r.score == 1.0) == r.correct


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
@pytest.mark.parametrize("side", [8, 10, 13, 20])
def test_shape_classifier_on_drawn_masks(shape, side):
    canvas = Image.new("L", (side, side), 0)
    draw_shape(ImageDraw.Draw(canvas), shape, 0, 0, side, 255)
    assert classify_shape(np.asarray(canvas) > 0)[0] == shape


def test_elongated_component_is_no_shape():
    assert classify_shape(np.ones((4, 12), dtype=bool)) == (None, 0.0)


def _scene(*objects):
    """Draw objects (shape, colour, x0, y0, side) on a 32x32 canvas; returns [3, 32, 32] in [0, 1]."""
    image = Image.new("RGB", (32, 32), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for shape, color, x0, y0, side in objects:
        draw_shape(draw, shape, x0, y0, side, PALETTE[color])
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


def test_hand_built_scenes():
    left = _scene(("circle", "red", 2, 10, 10), ("square", "blue", 20, 12, 9))
    assert verify([left], ["a red circle and a blue square"])[0].correct
    assert verify([left], ["a circle left of a square"])[0].correct
    assert not verify([left], ["a circle right of a square"])[0].correct
    assert not verify([left], ["a blue circle and a red square"])[0].correct  # colours swapped
    wrong = verify([left], ["a circle right of a square"])[0]
    assert wrong.count_term == 1 and wrong.match_term == 1 and wrong.relation_term == 0
    assert wrong.score == pytest.approx(2 / 3)

    three = _scene(("triangle", "green", 1, 1, 9), ("triangle", "green", 20, 2, 9), ("triangle", "purple", 10, 20, 9))
    assert verify([three], ["three triangles"])[0].correct
    two = verify([three], ["two triangles"])[0]
    assert not two.correct and two.count_term == 0.5  # one object too many: 1 - 1/2
    assert not verify([three], ["four triangles"])[0].correct


def test_dense_score_charges_an_extra_object_like_a_missing_one():
    # "three circles": two circles and four circles are both one object off. Each term by hand:
    # count 1 - 1/3; match 2/3 (two of three found) and (3 - 1 left over) / 3.
    prompt = "three circles"
    circle = [SceneObject("circle", "red", 4.0 + 8 * i, 16.0) for i in range(4)]
    two, four = assess(circle[:2], parse_prompt(prompt), 32), assess(circle, parse_prompt(prompt), 32)
    assert two.count_term == four.count_term == pytest.approx(2 / 3)
    assert two.match_term == four.match_term == pytest.approx(2 / 3)
    assert two.score == four.score == pytest.approx(2 / 3)
    # "a circle and a square": a stray triangle beside both costs what a missing square does.
    pair = parse_prompt("a circle and a square")
    circle_square_triangle = [
        SceneObject("circle", "red", 4, 4),
        SceneObject("square", "blue", 20, 4),
        SceneObject("triangle", "green", 12, 20),
    ]
    assert assess(circle_square_triangle, pair, 32).match_term == pytest.approx((2 - 1) / 2)
    assert assess(circle_square_triangle[:1], pair, 32).match_term == pytest.approx(1 / 2)
    # Two circles: the square's slot takes the second circle at half credit (an unasked colour
    # matches, the shape does not), nothing is left over.
    assert assess(
        [SceneObject("circle", "red", 4, 4), SceneObject("circle", "red", 20, 4)], pair, 32
    ).match_term == pytest.approx(0.75)


def test_detected_centroids_match_the_renderer():
    image, scene = render(parse_prompt("a square above a triangle"), 32, seed=3)
    found = sorted(detect_objects(image), key=lambda o: o.shape)
    truth = sorted(scene, key=lambda o: o.shape)
    for f, t in zip(found, truth):
        assert (f.shape, f.color) == (t.shape, t.color)
        assert abs(f.x - t.x) < 0.5 and abs(f.y - t.y) < 0.5 and f.area == t.area


def test_four_objects_always_fit_without_touching():
    assert size_range(4, 32)[0] >= 8  # smaller triangles lose their apex to blur
    for seed in range(40):
        image, scene = render(parse_prompt("four squares"), 32, seed=seed)
        # Squares that touched would merge into fewer, larger components.
        assert len(detect_objects(image)) == 4
        assert sum(o.area for o in scene) == sum(o.area for o in detect_objects(image))


def test_reward_wrapper_scores_and_binarises(renders):
    prompts, images, _ = renders
    texts = [p.text for p in prompts[:12]]
    dense = ToyShapesReward().score(images[:12], texts)
    assert dense.shape == (12,) and torch.all(dense == 1.0)
    shuffled = texts[1:] + texts[:1]
    binary = ToyShapesReward(binary=True).score(images[:12], shuffled)
    assert set(binary.tolist()) <= {0.0, 1.0}
    assert torch.equal(binary, torch.tensor([float(r.correct) for r in verify(images[:12], shuffled)]))


def test_scene_relation_rule_hand_cases():
    p = parse_prompt("a circle above a square")
    above = [SceneObject("circle", "red", 16, 5), SceneObject("square", "red", 16, 25)]
    assert assess(above, p, 32).correct
    level = [SceneObject("circle", "red", 5, 16), SceneObject("square", "red", 25, 17)]
    assert not assess(level, p, 32).correct  # 1 px lower is within the 8% margin
    assert assess([], p, 32).score == 0.0


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="got 2 images but 1 prompts"):
        verify(torch.zeros(2, 3, 32, 32), ["a circle"])
    with pytest.raises(ValueError, match="shape \\[3, H, W\\]"):
        verify(torch.zeros(1, 1, 32, 32), ["a circle"])
    with pytest.raises(ValueError, match="not a ToyShapes prompt"):
        verify(torch.zeros(1, 3, 32, 32), ["a dog"])


def test_render_is_deterministic_given_a_seed():
    prompt = parse_prompt("a yellow triangle and a cyan circle")
    a, scene_a = render(prompt, 32, seed=11)
    b, scene_b = render(prompt, 32, seed=11)
    c, _ = render(prompt, 32, seed=12)
    assert np.array_equal(a, b) and scene_a == scene_b and not np.array_equal(a, c)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
