"""The reward contract: output checks, the registry (built-ins, registrations, module:object,
functions), weighted combinations and pairwise win rates, each against a hand computation."""

import itertools
import math

import pytest
import torch

from flowrl.advantage import pairwise_win_rates
from flowrl.rewards import registry
from flowrl.rewards.base import InvalidRewardError, check_images, check_scores, is_pairwise
from flowrl.rewards.combine import RewardSet, RewardTerm, parse_reward_spec, win_rates, within_group_pairs
from flowrl.rewards.pairwise import BradleyTerry


def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))


class Redness:
    """Mean of the red channel (a class with options, for the registry tests)."""

    name = "redness"

    def __init__(self, scale: float = 1.0, device=None):
        self.scale = scale
        self.device = device

    def score(self, images, prompts):
        return self.scale * images[:, 0].mean(dim=(1, 2))


class NaNAt:
    name = "nan_at"

    def __init__(self, *indices):
        self.indices = list(indices)

    def score(self, images, prompts):
        values = images.mean(dim=(1, 2, 3)).clone()
        values[self.indices] = float("nan")
        return values


def images(count, seed=0, size=8):
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- checks ------------------------------------------------------------------------------------


def test_check_scores_names_the_reward_and_the_bad_samples():
    with pytest.raises(InvalidRewardError, match=r"reward 'hps' returned shape \(3,\); expected \[4\]"):
        check_scores(torch.zeros(3), 4, "hps")
    with pytest.raises(InvalidRewardError, match=r"reward 'hps' returned NaN or inf for samples 1, 3 of 4"):
        check_scores(torch.tensor([0.0, math.nan, 1.0, math.inf]), 4, "hps")
    scores, valid = check_scores(torch.tensor([0.5, math.nan, 1.0, -math.inf]), 4, "hps", on_invalid="drop")
    assert scores.tolist() == [0.5, 0.0, 1.0, 0.0] and valid.tolist() == [True, False, True, False]
    scores, valid = check_scores([[1], [2]], 2, "column")  # [B, 1] and lists are accepted
    assert scores.dtype == torch.float32 and scores.tolist() == [1.0, 2.0] and bool(valid.all())
    with pytest.raises(InvalidRewardError, match="not numbers"):
        check_scores("high", 1, "text")
    with pytest.raises(ValueError, match="on_invalid must be one of"):
        check_scores(torch.zeros(1), 1, "x", on_invalid="ignore")


def test_check_images_rejects_what_a_model_would_misread():
    check_images(images(2), ["a", "b"], "ok")
    with pytest.raises(
        ValueError, match=r"reward 'r': expected images as a float tensor \[B, 3, H, W\], got \(2, 8, 8\)"
    ):
        check_images(torch.rand(2, 8, 8), ["a", "b"], "r")
    with pytest.raises(ValueError, match="got dtype torch.uint8"):
        check_images(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), ["a"], "r")
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        check_images(images(2), ["a"], "r")
    with pytest.raises(ValueError, match=r"expected images in \[0, 1\], got values in \[-0.998, 0.994\]"):
        check_images(images(1) * 2 - 1, ["a"], "r")


# --- registry ----------------------------------------------------------------------------------


def test_registry_builds_builtins_functions_classes_and_registrations():
    toy = registry.load("toyshapes_binary")
    assert toy.binary and toy.name == "toyshapes"
    fn = registry.load(f"{__name__}:brightness")
    batch = images(3)
    torch.testing.assert_close(fn.score(batch, ["p"] * 3), batch.mean(dim=(1, 2, 3)))
    red = registry.load(f"{__name__}:Redness", device="cpu", scale=2.0)
    assert red.scale == 2.0 and red.device == "cpu"  # options and the device reach the constructor
    torch.testing.assert_close(red.score(batch, ["p"] * 3), 2 * batch[:, 0].mean(dim=(1, 2)))

    @registry.register_reward("test_half_brightness")
    def half(images, prompts):
        """Half the mean brightness."""
        return images.mean(dim=(1, 2, 3)) / 2

    try:
        assert registry.available()["test_half_brightness"] == "Half the mean brightness."
        torch.testing.assert_close(
            registry.load("test_half_brightness").score(batch, ["p"] * 3), batch.mean(dim=(1, 2, 3)) / 2
        )
        with pytest.raises(ValueError, match="already registered"):
            registry.register_reward("test_half_brightness")(half)
        with pytest.raises(ValueError, match="already registered"):
            registry.register_reward("pickscore")(half)
    finally:
        registry.REWARDS.unregister("test_half_brightness")


def test_registry_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"unknown reward 'pikscore'; known: \[.*'pickscore'"):
        registry.load("pikscore")
    with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
        registry.load("no_such_module:fn")
    with pytest.raises(ValueError, match="has no 'missing'"):
        registry.load(f"{__name__}:missing")
    with pytest.raises(ValueError, match=r"bad options \['colour'\]"):
        registry.load(f"{__name__}:Redness", colour="red")
    with pytest.raises(ValueError, match="plain function; it takes no options"):
        registry.load(f"{__name__}:brightness", scale=2)
    with pytest.raises(ValueError, match="already pairwise"):
        registry.load(f"pairwise:{__name__}:PreferBrighter")


class PreferBrighter:
    name = "prefer_brighter"

    def compare(self, images_a, images_b, prompts):
        return (brightness(images_a, prompts) > brightness(images_b, prompts)).float()


# --- combinations ------------------------------------------------------------------------------


def test_reward_specs_parse_weights_and_names_with_colons():
    assert parse_reward_spec("pickscore") == [("pickscore", 1.0)]
    # published scales: Flow-GRPO trains on PickScore / 26 and 100 cos / 30, DanceGRPO on the cosine
    assert parse_reward_spec("pickscore@flow_grpo") == [("pickscore", pytest.approx(1 / 26))]
    assert parse_reward_spec("2*pickscore@dance_grpo + clip@flow_grpo") == [
        ("pickscore", pytest.approx(2 / 100)),
        ("clip", pytest.approx(100 / 30)),
    ]
    assert parse_reward_spec("jpeg_compressibility@flow_grpo") == [("jpeg_compressibility", pytest.approx(1 / 500))]
    # Flow-GRPO's incompressibility is the raw size in kB (only compressibility is -size / 500)
    assert parse_reward_spec("jpeg_incompressibility@flow_grpo") == [("jpeg_incompressibility", 1.0)]
    with pytest.raises(ValueError, match="no published scale 'ocr@flow_grpo'; known: pickscore@flow_grpo"):
        parse_reward_spec("ocr@flow_grpo")
    assert parse_reward_spec("0.7*pickscore + 0.3*ocr") == [("pickscore", 0.7), ("ocr", 0.3)]
    assert parse_reward_spec("1e-1*remote:http://127.0.0.1:8000+-2*pkg.mod:fn") == [
        ("remote:http://127.0.0.1:8000", 0.1),
        ("pkg.mod:fn", -2.0),
    ]
    for bad in ("", "0.5*", "a b", "0.5*ocr + 0.5*ocr"):
        with pytest.raises(ValueError, match="reward spec"):
            parse_reward_spec(bad)


def test_weighted_total_is_the_weighted_sum_of_each_term():
    batch = images(5, seed=1)
    rewards = RewardSet.load(
        f"0.25*{__name__}:brightness + -2*{__name__}:Redness", options={f"{__name__}:Redness": {"scale": 3.0}}
    )
    scores = rewards.evaluate(batch, ["p"] * 5)
    bright, red = batch.mean(dim=(1, 2, 3)), 3.0 * batch[:, 0].mean(dim=(1, 2))
    torch.testing.assert_close(scores.components[f"{__name__}:brightness"], bright)
    torch.testing.assert_close(scores.components[f"{__name__}:Redness"], red)
    torch.testing.assert_close(scores.total, 0.25 * bright - 2 * red)
    assert bool(scores.valid.all())
    with pytest.raises(ValueError, match=r"options given for \['ocr'\]"):
        RewardSet.load("toyshapes", options={"ocr": {}})


def test_batching_the_scoring_does_not_change_scores():
    batch = images(7, seed=2)
    whole = RewardSet.load(f"{__name__}:brightness", batch_size=64).evaluate(batch, ["p"] * 7).total
    pieces = RewardSet.load(f"{__name__}:brightness", batch_size=3).evaluate(batch, ["p"] * 7).total
    torch.testing.assert_close(pieces, whole)


def test_invalid_scores_fail_by_index_or_drop_those_samples():
    batch = images(4)
    with pytest.raises(InvalidRewardError, match=r"reward 'nan_at' returned NaN or inf for samples 1, 2 of 4"):
        RewardSet.of(NaNAt(1, 2)).evaluate(batch, ["p"] * 4)
    scores = RewardSet.of(NaNAt(1, 2), on_invalid="drop").evaluate(batch, ["p"] * 4)
    assert scores.valid.tolist() == [True, False, False, True]
    # Scored in chunks of 2, the indices are still those of the whole batch.
    with pytest.raises(InvalidRewardError, match=r"samples 1, 3 of 4"):
        RewardSet.of(NaNAt(1), batch_size=2).evaluate(images(4), ["p"] * 4)


def test_within_group_pairs_are_every_pair_of_a_group_once():
    groups = torch.tensor([0, 1, 0, 2, 1, 0])
    a, b = within_group_pairs(groups)
    expected = {(i, j) for i, j in itertools.combinations(range(6), 2) if groups[i] == groups[j]}
    assert set(zip(a.tolist(), b.tolist())) == expected and len(a) == len(expected) == 4


def test_win_rates_are_a_hand_count_and_a_lone_sample_is_neutral_or_an_error():
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    a, b = within_group_pairs(groups)
    probs = torch.rand(len(a), generator=torch.Generator().manual_seed(3))
    rates = win_rates(a, b, probs, 6, unjudged="neutral")
    assert rates[5] == 0.5  # the lone sample 5 has no comparison
    with pytest.raises(ValueError, match=r"samples \[5\] took part in no counted comparison"):
        pairwise_win_rates(a, b, probs, 6, group_ids=groups)  # the advantage core's form refuses it
    assert rates[3].item() == pytest.approx(probs[3].item()) and rates[4].item() == pytest.approx(1 - probs[3].item())
    # by hand for group 0: pairs (0,1), (0,2), (1,2) with probabilities p0, p1, p2
    p = probs[:3].tolist()
    assert rates[0].item() == pytest.approx((p[0] + p[1]) / 2)
    assert rates[2].item() == pytest.approx((1 - p[1] + 1 - p[2]) / 2)


def test_bradley_terry_is_the_sigmoid_of_the_score_difference():
    inner = registry.load(f"{__name__}:brightness")
    judge = BradleyTerry(inner, temperature=0.1)
    assert is_pairwise(judge) and not is_pairwise(inner) and judge.name == f"pairwise:{__name__}:brightness"
    a, b = images(4, seed=4), images(4, seed=5)
    expected = 1 / (1 + torch.exp(-(brightness(a, None) - brightness(b, None)) / 0.1))
    torch.testing.assert_close(judge.compare(a, b, ["p"] * 4), expected)
    with pytest.raises(ValueError, match="temperature must be positive"):
        BradleyTerry(inner, temperature=0)


def test_a_pairwise_term_scores_by_win_rate_within_each_prompt():
    # Brightness levels 0.1..0.6; groups {0,1,2} and {3,4,5}; the judge always prefers the brighter.
    levels = torch.tensor([0.3, 0.1, 0.2, 0.6, 0.5, 0.4])
    batch = levels[:, None, None, None].expand(6, 3, 4, 4).clone()
    rewards = RewardSet(
        [RewardTerm("judge", 2.0, PreferBrighter()), RewardTerm("bright", 1.0, registry.load(f"{__name__}:brightness"))]
    )
    scores = rewards.evaluate(batch, ["p"] * 6, group_ids=torch.tensor([0, 0, 0, 1, 1, 1]))
    assert scores.components["judge"].tolist() == [1.0, 0.0, 0.5, 1.0, 0.5, 0.0]
    torch.testing.assert_close(scores.total, 2.0 * scores.components["judge"] + levels)
    assert rewards.pointwise_only().terms[0].name == "bright"
    assert RewardSet.of(PreferBrighter()).pointwise_only() is None


def test_judgments_outside_the_unit_interval_fail():
    class Broken:
        name = "broken"

        def compare(self, images_a, images_b, prompts):
            return torch.full((images_a.shape[0],), 1.5)

    with pytest.raises(ValueError, match=r"'broken' returned probabilities outside \[0, 1\] for pairs \[0, 1, 2\]"):
        RewardSet.of(Broken()).evaluate(images(3), ["p"] * 3)
