"""The advantage core against hand computations, invariances and property tests."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowrl.advantage import (
    ADVANTAGES,
    SpoTracker,
    clip_advantages,
    combine_objectives,
    dr_grpo,
    fuse_tree_rewards,
    get_advantage,
    grpo,
    multi_granularity,
    ngrpo,
    noise_aware_step_weights,
    pairwise_win_rates,
    pref_grpo,
    register_advantage,
    rloo,
    spo_advantages,
    tree_advantages,
    win_rate_matrix,
    zero_variance_mask,
)

T = torch.tensor


# --- hand-computed examples ---------------------------------------------------------------


def test_grpo_hand_computed_biased_and_unbiased():
    # group [1, 2, 3, 6]: mean 3; squared deviations 4, 1, 0, 9 -> biased var 14/4, unbiased 14/3
    r = T([1.0, 2.0, 3.0, 6.0])
    biased = math.sqrt(14 / 4)
    unbiased = math.sqrt(14 / 3)
    assert torch.allclose(grpo(r, eps=0), T([-2, -1, 0, 3]) / biased)
    assert torch.allclose(grpo(r, unbiased=True, eps=0), T([-2, -1, 0, 3]) / unbiased)
    assert torch.allclose(grpo(r, eps=0.5), T([-2, -1, 0, 3]) / (biased + 0.5))


def test_grpo_binary_group_of_eight_matches_published_numbers():
    # NGRPO's check: G = 8, one correct answer; plain GRPO (unbiased std) gives +2.47 / -0.35
    r = T([1.0] + [0.0] * 7)
    a = grpo(r, unbiased=True, eps=0)
    assert a[0].item() == pytest.approx(7 / 8 / math.sqrt(1 / 8), rel=1e-6)  # 0.875 / 0.3536
    assert a[0].item() == pytest.approx(2.47, abs=0.01) and a[1].item() == pytest.approx(-0.35, abs=0.01)


def test_ngrpo_published_numbers():
    # one virtual reward 1 joins: values {1, 1, 0 x 7}, mean 2/9, unbiased var 0.19444
    a = ngrpo(T([1.0] + [0.0] * 7), eps=0)
    assert a[0].item() == pytest.approx((7 / 9) / math.sqrt(0.1944444), rel=1e-4)
    assert a[0].item() == pytest.approx(1.76, abs=0.01) and a[1].item() == pytest.approx(-0.50, abs=0.01)
    # an all-wrong group still gets a signal: every member below the virtual maximum
    assert bool((ngrpo(T([0.0, 0.0, 0.0])) < 0).all())
    with pytest.raises(ValueError, match="reward_max"):
        ngrpo(T([2.0, 0.0]))


def test_grpo_batch_std_uses_all_rewards():
    # Flow-GRPO's option: per-group mean, std over the whole batch
    r = T([0.0, 2.0, 10.0, 14.0])
    g = T([0, 0, 1, 1])
    batch_std = r.std(unbiased=False).item()
    assert torch.allclose(grpo(r, g, std_scope="batch", eps=0), T([-1.0, 1.0, -2.0, 2.0]) / batch_std)


def test_dr_grpo_and_rloo_hand_computed():
    r = T([1.0, 2.0, 6.0, 5.0, 5.0])
    g = T([7, 7, 7, 3, 3])
    assert torch.allclose(dr_grpo(r, g), T([-2.0, -1.0, 3.0, 0.0, 0.0]))
    # leave-one-out: 1 - (2+6)/2 = -3, 2 - 3.5 = -1.5, 6 - 1.5 = 4.5
    assert torch.allclose(rloo(r, g), T([-3.0, -1.5, 4.5, 0.0, 0.0]))


def test_ragged_groups_and_arbitrary_ids():
    r = T([3.0, 1.0, 4.0, 1.0, 5.0])
    g = T([42, 42, -5, -5, -5])
    a = grpo(r, g, eps=0)
    assert torch.allclose(a[:2], T([1.0, -1.0]))
    z = (T([4.0, 1.0, 5.0]) - 10 / 3) / T([4.0, 1.0, 5.0]).std(unbiased=False)
    assert torch.allclose(a[2:], z)


def test_group_order_does_not_matter():
    r = torch.randn(12)
    g = torch.arange(12) % 3
    perm = torch.randperm(12)
    assert torch.allclose(grpo(r, g)[perm], grpo(r[perm], g[perm]))


# --- invariances --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_adding_a_constant_to_a_group_changes_nothing(name):
    fn = get_advantage(name)
    r = torch.randn(8, dtype=torch.float64)
    g = T([0, 0, 0, 0, 1, 1, 1, 1])
    shifted = r + torch.where(g == 0, 3.5, -100.0).double()
    assert torch.allclose(fn(r, g), fn(shifted, g), atol=1e-6)


def test_scaling_rewards_changes_grpo_only_through_eps_and_scales_dr_grpo():
    r = torch.randn(8, dtype=torch.float64)
    g = torch.arange(8) // 4
    assert torch.allclose(grpo(r, g, eps=0), grpo(7.0 * r, g, eps=0), atol=1e-6)
    assert torch.allclose(grpo(r, g, std_scope="batch", eps=0), grpo(7.0 * r, g, std_scope="batch", eps=0), atol=1e-6)
    assert torch.allclose(dr_grpo(7.0 * r, g), 7.0 * dr_grpo(r, g), atol=1e-6)


def test_constant_groups_are_exactly_zero_and_detected():
    r = T([0.1, 0.1, 0.1, 0.3, 0.5, 7.0])
    g = T([0, 0, 0, 1, 1, 2])
    for name in ("grpo", "dr_grpo"):
        a = get_advantage(name)(r, g)
        assert a[:3].eq(0).all() and a[5] == 0
    assert grpo(r, g, eps=0)[:3].eq(0).all()  # no NaN even without eps
    assert zero_variance_mask(r, g).tolist() == [True, True, True, False, False, True]
    assert zero_variance_mask(T([1.0, 1.0 + 1e-9]), atol=1e-6).all()


def test_group_of_size_one_is_a_clear_error_where_undefined():
    r = T([1.0, 2.0, 3.0])
    g = T([0, 0, 1])
    assert grpo(r, g)[2] == 0  # biased std: a lone member carries no signal
    with pytest.raises(ValueError, match="size 1"):
        grpo(r, g, unbiased=True)
    with pytest.raises(ValueError, match="size 1"):
        rloo(r, g)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="std_scope"):
        grpo(T([1.0, 2.0]), std_scope="global")
    with pytest.raises(ValueError, match=r"indices \[1\]"):
        grpo(T([1.0, float("nan")]))
    with pytest.raises(ValueError, match="group ids"):
        grpo(T([1.0, 2.0]), T([0]))
    with pytest.raises(ValueError, match="1-D"):
        grpo(torch.ones(2, 2))
    with pytest.raises(ValueError, match="unknown advantage estimator 'nope'"):
        get_advantage("nope")


def test_clip_bounds_advantages():
    a = clip_advantages(grpo(T([0.0] * 99 + [1.0])), 5.0)
    assert a.max().item() == 5.0  # unclipped: 99 / sqrt(99) = 9.95
    assert torch.equal(clip_advantages(a, 0.0), a)  # 0: no clip


def test_registry_rejects_duplicates_and_accepts_user_estimators():
    with pytest.raises(ValueError, match="already registered"):
        register_advantage("grpo")(lambda r, g: r)

    @register_advantage("test_rank")
    def rank(rewards, group_ids, **_):
        return rewards.argsort().argsort().float()

    try:
        assert get_advantage("test_rank")(T([3.0, 1.0, 2.0]), None).tolist() == [2.0, 0.0, 1.0]
    finally:
        ADVANTAGES.unregister("test_rank")


# --- property tests -----------------------------------------------------------------------

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(finite, st.integers(0, 4)), min_size=1, max_size=30), st.sampled_from(["group", "batch", "none"])
)
def test_grpo_is_finite_for_any_finite_input(pairs, scope):
    r = T([p[0] for p in pairs], dtype=torch.float64)
    g = T([p[1] for p in pairs])
    a = grpo(r, g, std_scope=scope)
    assert a.shape == r.shape and bool(torch.isfinite(a).all())
    # group means of the advantages are zero (the baseline is the group mean)
    for gid in g.unique():
        members = a[g == gid]
        assert abs(members.mean().item()) <= 1e-6 * max(1.0, members.abs().max().item())


@settings(max_examples=100, deadline=None)
@given(st.lists(finite, min_size=2, max_size=12))
def test_rloo_and_ngrpo_finite(values):
    r = T(values, dtype=torch.float64)
    assert bool(torch.isfinite(rloo(r)).all())
    assert bool(torch.isfinite(ngrpo(r, reward_max=float(r.max()) + 1.0)).all())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=10))
def test_win_rates_in_unit_interval_and_mean_half(probs):
    # a round robin of n samples, each pair once with the given probabilities cycled
    n = 4
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    p = T([probs[k % len(probs)] for k in range(len(pairs))], dtype=torch.float64)
    rates = pairwise_win_rates(T([a for a, _ in pairs]), T([b for _, b in pairs]), p, n)
    assert bool(((rates >= 0) & (rates <= 1)).all())
    assert rates.mean().item() == pytest.approx(0.5, abs=1e-6)


# --- preferences --------------------------------------------------------------------------


def test_win_rates_hand_computed_with_ties():
    nan = float("nan")
    # 0 beats 1, 0 ties 2, 2 beats 1 with probability 0.75
    m = T([[nan, 1.0, 0.5], [nan, nan, nan], [nan, 0.75, nan]])
    assert torch.allclose(win_rate_matrix(m), T([1.5 / 2, 0.25 / 2, 1.25 / 2]))
    # ties excluded: 0 has one counted comparison (a win), 2 one (0.75)
    assert torch.allclose(win_rate_matrix(m, ties="exclude"), T([1.0, 0.25 / 2, 0.75]))
    # a margin turns near-ties into ties
    assert torch.allclose(win_rate_matrix(T([[nan, 0.52], [nan, nan]]), tie_margin=0.05), T([0.5, 0.5]))


def test_both_orders_judged_cancel_a_position_bias():
    nan = float("nan")
    # a judge that adds +0.1 to whichever image comes first
    m = T([[nan, 0.7 + 0.1], [(1 - 0.7) + 0.1, nan]])
    assert torch.allclose(win_rate_matrix(m), T([0.7, 0.3]))


def test_pref_grpo_is_grpo_of_win_rates_and_rejects_cross_group_pairs():
    a, b, p = T([0, 0, 1, 3]), T([1, 2, 2, 4]), T([1.0, 1.0, 0.0, 1.0])
    g = T([0, 0, 0, 1, 1])
    rates = T([1.0, 0.0, 0.5, 1.0, 0.0])  # 1 loses to 0 and to 2; 2 loses to 0, beats 1
    assert torch.allclose(pref_grpo(a, b, p, g), grpo(rates, g))
    with pytest.raises(ValueError, match="same group"):
        pref_grpo(T([0]), T([3]), T([1.0]), g)
    with pytest.raises(ValueError, match=r"samples \[2, 3, 4\]"):
        pairwise_win_rates(T([0]), T([1]), T([1.0]), 5)  # samples 2-4 unjudged
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pairwise_win_rates(T([0]), T([1]), T([1.5]), 2)


# --- trees --------------------------------------------------------------------------------

# The hand-drawn tree (one prompt):        0            depth 0
#                                        /   \
#                                       1     2         depth 1
#                                      / \   / \
#                                     3   4 5   6       depth 2 (leaves, rewards 1, 2, 3, 5)
PARENT = T([-1, 0, 0, 1, 1, 2, 2])
DEPTH = T([0, 1, 1, 2, 2, 2, 2])
LEAVES = T([3, 4, 5, 6])
REWARDS = T([1.0, 2.0, 3.0, 5.0])


def test_tree_fusion_hand_computed():
    values = fuse_tree_rewards(PARENT, LEAVES, REWARDS)
    assert torch.allclose(values, T([11 / 4, 1.5, 4.0, 1.0, 2.0, 3.0, 5.0]).double())
    assert fuse_tree_rewards(PARENT, LEAVES, REWARDS, rule="max")[:3].tolist() == [5.0, 2.0, 5.0]
    assert fuse_tree_rewards(PARENT, LEAVES, REWARDS, rule="min")[:3].tolist() == [1.0, 1.0, 3.0]
    # BranchGRPO's probability-weighted fusion, one softmax per split over the edges into the children:
    # node 1 = softmax(0.5 * [-3, -1]) . [1, 2], node 2 = softmax(0.5 * [-2, -4]) . [3, 5],
    # root = softmax(0.5 * [-1, -2]) . [node 1, node 2]
    edge = T([0.0, -1.0, -2.0, -3.0, -1.0, -2.0, -4.0])

    def weighted(logits, values):
        w = [math.exp(0.5 * a) for a in logits]
        return sum(wi * v for wi, v in zip(w, values)) / sum(w)

    node1, node2 = weighted([-3, -1], [1.0, 2.0]), weighted([-2, -4], [3.0, 5.0])
    values = fuse_tree_rewards(PARENT, LEAVES, REWARDS, edge_logp=edge, beta=0.5)
    expected = [weighted([-1, -2], [node1, node2]), node1, node2, 1.0, 2.0, 3.0, 5.0]
    assert values.tolist() == pytest.approx(expected, rel=1e-12)
    # a chain of single children passes its value up unchanged
    chain = fuse_tree_rewards(T([-1, 0, 1]), T([2]), T([7.0]), edge_logp=T([0.0, -9.0, -1.0]), beta=3.0)
    assert chain.tolist() == [7.0, 7.0, 7.0]


def test_tree_advantages_hand_computed_per_depth():
    a = tree_advantages(PARENT, DEPTH, torch.zeros(7), LEAVES, REWARDS, eps=0)
    assert a[0] == 0  # the root is alone at its depth
    assert torch.allclose(a[1:3], T([-1.0, 1.0]))  # values 1.5 and 4.0: a z-score of two values is -1, +1
    z = (REWARDS - 2.75) / math.sqrt(((REWARDS - 2.75) ** 2).mean().item())
    assert torch.allclose(a[3:], z)


def test_tree_advantages_keep_prompts_apart():
    parent = torch.cat([PARENT, torch.where(PARENT >= 0, PARENT + 7, -1)])
    depth = torch.cat([DEPTH, DEPTH])
    groups = T([0] * 7 + [1] * 7)
    a = tree_advantages(
        parent, depth, groups, torch.cat([LEAVES, LEAVES + 7]), torch.cat([REWARDS, 100 * REWARDS]), eps=0
    )
    assert torch.allclose(a[:7], a[7:], atol=1e-6)  # scale-free and separated per prompt


def test_tree_rejects_cycles_and_bad_indices():
    with pytest.raises(ValueError, match="cycle"):
        fuse_tree_rewards(T([1, 0]), T([0]), T([1.0]))
    with pytest.raises(ValueError, match="leaf_nodes"):
        fuse_tree_rewards(PARENT, T([9]), T([1.0]))
    with pytest.raises(ValueError, match="edge_logp"):
        fuse_tree_rewards(PARENT, LEAVES, REWARDS, beta=1.0)


# --- step credit --------------------------------------------------------------------------


def test_multi_granularity_sums_group_z_scores_and_skips_missing():
    g = T([0, 0, 0, 1, 1])
    coarse = T([1.0, 2.0, 3.0, 0.0, 4.0])
    fine = T([3.0, 2.0, 1.0, float("nan"), 5.0])
    total = multi_granularity({"stride1": fine, "stride2": coarse}, g, eps=0)
    z3 = math.sqrt(1.5)  # z-scores of (1, 2, 3): (-1, 0, 1) / sqrt(2/3)
    assert torch.allclose(total[:3], T([0.0, 0.0, 0.0]), atol=1e-6)  # opposite orders cancel
    # group 1: coarse gives (-1, +1); fine has one scored member, which alone gets 0
    assert torch.allclose(total[3:], T([-1.0, 1.0]))
    weighted = multi_granularity({"a": coarse[:3]}, g[:3], weights={"a": 2.0}, eps=0)
    assert torch.allclose(weighted, 2 * T([-z3, 0.0, z3]))


def test_noise_aware_weights_proportional_to_std_with_mean_one():
    w = noise_aware_step_weights(T([0.5, 1.0, 1.5]))
    assert torch.allclose(w, T([0.5, 1.0, 1.5]))
    assert torch.allclose(noise_aware_step_weights(T([2.0, 6.0])), T([0.5, 1.5]))
    with pytest.raises(ValueError, match="positive"):
        noise_aware_step_weights(T([1.0, 0.0]))


# --- SPO ----------------------------------------------------------------------------------


def test_spo_tracker_hand_computed():
    tracker = SpoTracker(prior_mean=0.5, prior_strength=2.0, rho_max=0.9)
    # first batch: both prompts start at 0.5; advantages r - 0.5 = (+0.5, -0.5) -> z (+1, -1)
    a = spo_advantages(T([1.0, 0.0]), ["p", "q"], tracker, eps=0)
    assert torch.allclose(a, T([1.0, -1.0]))
    # p: alpha = 0.9 * 1 + 1 = 1.9, beta = 0.9 * 1 + 0 = 0.9 -> v = 1.9 / 2.8
    assert tracker.value("p") == pytest.approx(1.9 / 2.8)
    raw = spo_advantages(T([1.0]), ["p"], tracker, normalize=False)
    assert raw.item() == pytest.approx(1 - 1.9 / 2.8, rel=1e-6)
    # drift-adaptive forgetting: rho = 2^(-D / D_half) clipped
    assert tracker.forgetting(0.0) == 0.9 and tracker.forgetting(10.0) == tracker.rho_min
    state = tracker.state_dict()
    fresh = SpoTracker()
    fresh.load_state_dict(state)
    assert fresh.value("p") == tracker.value("p")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        spo_advantages(T([2.0]), ["p"], tracker)
    with pytest.raises(ValueError, match="tracker"):
        get_advantage("spo")(T([1.0]), T([0]))


# --- several rewards ----------------------------------------------------------------------


def test_combine_before_and_after_normalisation():
    g = T([0, 0, 0, 0])
    hps = T([0.30, 0.31, 0.29, 0.30])
    ocr = T([1.0, 0.0, 0.5, 0.5])
    before, stats = combine_objectives({"hps": hps, "ocr": ocr}, g, weights={"hps": 10.0}, eps=0)
    assert torch.allclose(before, grpo(10 * hps.double() + ocr.double(), g, eps=0).float(), atol=1e-6)
    after, _ = combine_objectives({"hps": hps, "ocr": ocr}, g, weights={"hps": 10.0}, mode="after", eps=0)
    assert torch.allclose(after, 10 * grpo(hps, g, eps=0) + grpo(ocr, g, eps=0), atol=1e-5)
    assert stats["reward/hps/mean"] == pytest.approx(0.30) and stats["reward/ocr/std"] == pytest.approx(
        ocr.std(unbiased=False).item()
    )
    with pytest.raises(ValueError, match="clip_score"):
        combine_objectives({"hps": hps}, g, weights={"clip_score": 1.0})
    with pytest.raises(ValueError, match="mode"):
        combine_objectives({"hps": hps}, g, mode="during")
