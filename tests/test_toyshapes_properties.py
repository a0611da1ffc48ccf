"""Property tests: the verifier on arbitrary drawn scenes never crashes and keeps its contract."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from flowrl.benchmarks.toyshapes.prompts import COLORS, SHAPES, all_prompts
from flowrl.benchmarks.toyshapes.render import BACKGROUND, PALETTE, draw_shape
from flowrl.benchmarks.toyshapes.scene import SceneObject, assess
from flowrl.benchmarks.toyshapes.verify import detect_objects, verify

objects = st.lists(
    st.tuples(
        st.sampled_from(SHAPES), st.sampled_from(COLORS), st.integers(0, 30), st.integers(0, 30), st.integers(3, 20)
    ),
    max_size=6,
)


def draw(items, noise, seed):
    image = Image.new("RGB", (32, 32), BACKGROUND)
    d = ImageDraw.Draw(image)
    for shape, color, x, y, side in items:
        draw_shape(d, shape, x, y, side, PALETTE[color])
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    return (x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)


@settings(max_examples=150, deadline=None)
@given(objects, st.floats(0, 0.3), st.integers(0, 2**16), st.sampled_from(all_prompts()))
def test_contract_holds_on_arbitrary_scenes(items, noise, seed, prompt):
    result = verify([draw(items, noise, seed)], [prompt])[0]
    assert 0.0 <= result.score <= 1.0
    assert (result.score == 1.0) == result.correct
    terms = [result.count_term, result.match_term] + ([result.relation_term] if prompt.relation else [])
    assert all(0.0 <= t <= 1.0 for t in terms)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SHAPES), st.sampled_from(COLORS)), min_size=1, max_size=4))
def test_separated_shapes_are_found_exactly(specs):
    # Objects of side 10 on a fixed 4-cell layout never touch, so each must be found as drawn.
    corners = [(2, 2), (19, 2), (2, 19), (19, 19)]
    items = [(shape, color, x, y, 10) for (shape, color), (x, y) in zip(specs, corners)]
    found = sorted((o.shape, o.color) for o in detect_objects(draw(items, 0.0, 0)))
    assert found == sorted(specs)


@given(
    st.lists(
        st.builds(
            SceneObject,
            st.sampled_from([*SHAPES, None]),
            st.sampled_from([*COLORS, None]),
            st.floats(0, 32),
            st.floats(0, 32),
        ),
        max_size=8,
    ),
    st.sampled_from(all_prompts()),
)
def test_assess_is_bounded_and_exact_on_any_object_list(scene, prompt):
    result = assess(scene, prompt, 32)
    assert 0.0 <= result.score <= 1.0 and (result.score == 1.0) == result.correct
