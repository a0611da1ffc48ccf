"""The prompt world: categories, grammar round trip, fixed splits, determinism."""

import pytest

from flowrl.benchmarks.toyshapes.prompts import (
    CATEGORIES,
    all_prompts,
    eval_prompts,
    parse_prompt,
    prompts_for,
    sample_prompts,
    split_of,
    vocabulary,
)


def test_every_category_has_prompts_of_its_form():
    by_category = {c: [p for p in all_prompts() if p.category == c] for c in CATEGORIES}
    # 3 shapes, 6 colours, counts 1-4, 4 relations: the sizes follow from the grammar.
    assert {c: len(v) for c, v in by_category.items()} == {
        "single_object": 3,
        "two_object": 6,
        "counting": 12,
        "colors": 18,
        "position": 24,
        "color_attr": 180,
    }
    assert all(len(p.objects) == 1 and p.objects[0].color is None for p in by_category["single_object"])
    assert {len(p.objects) for p in by_category["counting"]} == {1, 2, 3, 4}
    assert all(p.relation is not None for p in by_category["position"])
    assert all(a.color != b.color and a.shape != b.shape for p in by_category["color_attr"] for a, b in [p.objects])


def test_examples_parse_to_their_scene():
    p = parse_prompt("  A red circle and a BLUE square ")
    assert p.category == "color_attr"
    assert [(o.shape, o.color) for o in p.objects] == [("circle", "red"), ("square", "blue")]
    p = parse_prompt("three triangles")
    assert p.category == "counting" and len(p.objects) == 3
    p = parse_prompt("a circle above a square")
    assert p.relation == "above" and p.objects[0].shape == "circle"


def test_every_prompt_round_trips_and_texts_are_unique():
    texts = [p.text for p in all_prompts()]
    assert len(set(texts)) == len(texts)
    assert all(parse_prompt(t) == p for t, p in zip(texts, all_prompts()))


def test_unknown_prompt_names_it_and_the_grammar():
    with pytest.raises(ValueError, match="'a pink star'.*shapes"):
        parse_prompt("a pink star")


def test_vocabulary_covers_prompts():
    vocab = set(vocabulary())
    assert {"circle", "squares", "purple", "left", "above", "four"} <= vocab
    assert all(set(p.text.split()) <= vocab for p in all_prompts())


def test_splits_are_fixed_disjoint_and_stratified():
    train, heldout = prompts_for("train"), prompts_for("heldout")
    shared = {p.text for p in train} & {p.text for p in heldout}
    # Only the two categories too small to split are shared.
    assert {parse_prompt(t).category for t in shared} == {"single_object", "two_object"}
    for category, n_heldout in {"counting": 3, "colors": 5, "position": 6, "color_attr": 45}.items():
        assert len(prompts_for("heldout", (category,))) == n_heldout
    assert split_of("a red circle and a blue square") == split_of("a red circle and a blue square")
    assert len(prompts_for("all")) == len(all_prompts())


def test_bad_split_and_category_fail_clearly():
    with pytest.raises(ValueError, match="split must be one of"):
        prompts_for("test")
    with pytest.raises(ValueError, match="unknown categories \\['shapes'\\]"):
        prompts_for("train", ("shapes",))


def test_sampling_is_deterministic_and_covers_categories():
    a, b = sample_prompts(300, "train", seed=3), sample_prompts(300, "train", seed=3)
    assert a == b
    assert a != sample_prompts(300, "train", seed=4)
    assert {p.category for p in a} == set(CATEGORIES)
    assert all(split_of(p.text) in ("train", "both") for p in a)


def test_eval_prompts_are_balanced_heldout():
    prompts = eval_prompts(10)
    assert len(prompts) == 10 * len(CATEGORIES)
    assert all(sum(p.category == c for p in prompts) == 10 for c in CATEGORIES)
    assert all(split_of(p.text) in ("heldout", "both") for p in prompts)
    assert eval_prompts(10) == prompts


def test_eval_prompts_of_the_train_split_are_balanced_and_disjoint_from_heldout_where_split():
    train, heldout = eval_prompts(10, "train"), eval_prompts(10)
    assert all(sum(p.category == c for p in train) == 10 for c in CATEGORIES)
    assert all(split_of(p.text) in ("train", "both") for p in train)
    # the split categories share no prompt; the two unsplit ones are the same in both lists
    assert not {p.text for p in train if split_of(p.text) == "train"} & {p.text for p in heldout}
    assert {p.text for p in train if p.category == "single_object"} == {
        p.text for p in heldout if p.category == "single_object"
    }
    with pytest.raises(ValueError, match="must be one of \\['train', 'heldout'\\], got 'all'"):
        eval_prompts(10, "all")
