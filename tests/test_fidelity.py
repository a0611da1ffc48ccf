"""Fidelity to the official implementations: each rule written out here from the paper or the
released code (read, not copied) and compared with the project's plans, credit and losses."""

import contextlib
import math

import pytest
import torch

from flowrl.advantage import assign_credit
from flowrl.losses import flow_grpo_kl, gaussian_kl
from flowrl.objectives.base import ObjectiveContext
from flowrl.objectives.sde import SdeObjective, SdeOptions
from flowrl.samplers.grid import flow_sigmas
from flowrl.samplers.methods import get_method
from flowrl.samplers.rollout import rollout
from flowrl.samplers.sde import sde_mean_std


def flow_grpo_step_mean(v, x, sigma, sigma_next, a):
    """Flow-GRPO's SDE step as its training code writes it: std_dev_t = a sqrt(sigma / (1 - sigma))
    (the next sigma in the denominator at sigma = 1), and the mean
    x (1 + std_dev_t^2 dt / (2 sigma)) + v (1 + std_dev_t^2 (1 - sigma) / (2 sigma)) dt."""
    dt = sigma_next - sigma
    std_dev_t = a * math.sqrt(sigma / (1 - (sigma_next if sigma == 1 else sigma)))
    mean = x * (1 + std_dev_t**2 / (2 * sigma) * dt) + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    return mean, std_dev_t


def flow_grpo_kl_reference(v, v_ref, x, sigma, sigma_next, a):
    """Flow-GRPO's KL term: ((mean - mean_ref)^2).mean over the sample's dims / (2 std_dev_t^2)."""
    mean, std_dev_t = flow_grpo_step_mean(v, x, sigma, sigma_next, a)
    mean_ref, _ = flow_grpo_step_mean(v_ref, x, sigma, sigma_next, a)
    return ((mean - mean_ref) ** 2).mean(dim=(1, 2, 3)) / (2 * std_dev_t**2)


@pytest.mark.parametrize("step", range(9))
def test_the_kl_is_flow_grpo_s_and_the_exact_one_is_it_over_dt(step):
    sigmas = flow_sigmas(10, 3.0).double()
    sigma, sigma_next = float(sigmas[step]), float(sigmas[step + 1])
    generator = torch.Generator().manual_seed(step)
    x, v, v_ref = (torch.randn(3, 4, 5, 5, generator=generator, dtype=torch.float64) for _ in range(3))
    mean, std = sde_mean_std(v, x, sigma, sigma_next, "flow_grpo", 0.7)
    mean_ref, _ = sde_mean_std(v_ref, x, sigma, sigma_next, "flow_grpo", 0.7)
    expected = flow_grpo_kl_reference(v, v_ref, x, sigma, sigma_next, 0.7)
    dt = torch.full((3,), sigma_next - sigma, dtype=torch.float64)
    torch.testing.assert_close(flow_grpo_kl(mean, mean_ref, std, dt), expected)
    torch.testing.assert_close(gaussian_kl(mean, mean_ref, std), expected / abs(sigma_next - sigma))


class SwitchedReference:
    """A stand-in for flowrl.adapters.Reference: `active()` switches the velocity to the reference's."""

    def __init__(self) -> None:
        self.on = False

    @contextlib.contextmanager
    def active(self):
        self.on = True
        try:
            yield
        finally:
            self.on = False


@pytest.mark.parametrize("kl", ["flow_grpo", "exact"])
def test_the_sde_objective_uses_the_kl_it_is_given(kl):
    reference = SwitchedReference()

    def velocity(x, sigma, prompt_index):
        scale = 0.3 if reference.on else 0.5
        return scale * x + sigma.view(-1, *([1] * (x.ndim - 1)))

    method = get_method("flow_grpo")
    config = method.configure(num_steps=4, group_size=2, shift=1.0)
    result = rollout(velocity, method.plan(config), 1, (2, 3, 3), root_seeds=[0, 1])
    context = ObjectiveContext(
        {}, None, reference, 0.1, "clip", 5.0, 64, 64, (2, 3, 3), lambda iteration, roots: [0] * len(roots)
    )
    objective = SdeObjective(SdeOptions(kl=kl), context)
    t = result.transitions
    _, _, values = objective.score(velocity, t, torch.arange(len(t)))
    for k in range(len(t)):
        x = t.x[k : k + 1].double()
        sigma, sigma_next = float(t.sigma[k]), float(t.sigma_next[k])
        v, v_ref = 0.5 * x + sigma, 0.3 * x + sigma
        expected = flow_grpo_kl_reference(v, v_ref, x, sigma, sigma_next, 0.7)
        if kl == "exact":
            expected = expected / (sigma - sigma_next)
        assert values[k].item() == pytest.approx(expected.item(), rel=1e-3)  # float32 differences of close means


def dance_rollout(iteration: int, **options):
    method = get_method("dance_grpo")
    config = method.configure(num_steps=6, group_size=4, **options)
    result = rollout(lambda x, s, p: -x, method.plan(config, iteration), 2, (1, 2, 2), seed=0)
    rewards = torch.arange(8, dtype=torch.float32) % 3  # groups that do not tie
    return result, assign_credit(method, result, rewards, config, iteration)


def chain_samples(result) -> list[int]:
    """The sample at the end of each transition's chain, found by walking down the chain (written
    here on its own, not with the credit's leaf_of_node)."""
    node_sample = {int(node): sample for sample, node in enumerate(result.sample_node.tolist())}
    samples = []
    for node in result.transitions.child.tolist():
        while node not in node_sample:
            node = int(torch.nonzero(result.node_parent == node).flatten()[0])
        samples.append(node_sample[node])
    return samples


def kept_steps(result, credit) -> dict[int, list[int]]:
    """Per sample (its root), the grid steps whose transitions train."""
    samples, chains = chain_samples(result), {}
    for k in torch.nonzero(credit.mask).flatten().tolist():
        chains.setdefault(int(result.root[samples[k]]), []).append(int(result.transitions.step[k]))
    return {root: sorted(s) for root, s in chains.items()}


def test_dance_grpo_trains_a_random_share_of_each_sample_s_steps_but_never_the_last():
    # DanceGRPO's code: a permutation per sample over the sampling steps but the last, of which
    # the first int(timestep_fraction * (N - 1)) are trained: 3 of steps 0-4 on a 6-step grid.
    result, credit = dance_rollout(0)
    per_sample = kept_steps(result, credit)
    assert sorted(per_sample) == list(range(8))
    assert all(len(steps) == int(0.6 * 5) and set(steps) <= set(range(5)) for steps in per_sample.values())
    assert len({tuple(steps) for steps in per_sample.values()}) > 1  # samples choose their own
    assert kept_steps(*dance_rollout(1)) != per_sample  # and choose anew each iteration
    assert kept_steps(*dance_rollout(0)) == per_sample  # deterministically
    # The shared choice: one subset of all six steps for every sample.
    shared = kept_steps(*dance_rollout(0, step_choice="shared"))
    assert len({tuple(steps) for steps in shared.values()}) == 1 and len(next(iter(shared.values()))) == int(6 * 0.6)


def test_tempflow_grpo_probes_every_step_but_the_last():
    method = get_method("tempflow_grpo")
    plan = method.plan(method.configure(num_steps=10))
    probed = [i for i, step in enumerate(plan.steps) if step.probes > 0]
    assert probed == list(range(9)) and plan.trained_steps() == list(range(9))
    explicit = method.plan(method.configure(num_steps=10, probe_steps=(8, 9)))
    assert explicit.trained_steps() == [8, 9]  # the last step when asked for by name


def test_unbiased_std_and_eps_reach_chain_and_tree_credit():
    from flowrl.advantage import grpo
    from flowrl.config import build_config

    method = get_method("mix_grpo")
    config = method.configure(num_steps=4, group_size=3, window=2, unbiased=True, eps=0.5)
    result = rollout(lambda x, s, p: -x, method.plan(config), 2, (1, 2, 2), seed=0)
    rewards = torch.tensor([0.0, 1.0, 3.0, 2.0, 2.5, 0.5])
    credit = assign_credit(method, result, rewards, config)
    expected = grpo(rewards, result.prompt, unbiased=True, eps=0.5)  # (r - mean) / (std_{n-1} + 0.5)
    by_hand = (rewards[:3] - rewards[:3].mean()) / (rewards[:3].std(unbiased=True) + 0.5)
    torch.testing.assert_close(expected[:3], by_hand)
    for k, sample in enumerate(chain_samples(result)):
        assert credit.advantages[k].item() == pytest.approx(expected[sample].item(), abs=1e-6)

    tree = get_method("branch_grpo")
    biased, unbiased = (tree.configure(num_steps=4, split_steps=(0, 2), unbiased=u) for u in (False, True))
    tree_result = rollout(lambda x, s, p: -x, tree.plan(biased), 1, (1, 2, 2), seed=0)
    leaf_rewards = torch.tensor([0.0, 1.0, 4.0, 2.0])
    a = assign_credit(tree, tree_result, leaf_rewards, biased).advantages
    b = assign_credit(tree, tree_result, leaf_rewards, unbiased).advantages
    # At the first split's depth the two nodes hold means 0.5 and 3: z-scores +-1 with the biased
    # std, +-1/sqrt(2) with the unbiased one (eps aside).
    first = tree_result.transitions.step == 0
    assert torch.allclose(a[first].abs(), torch.ones(int(first.sum())), atol=1e-3)
    assert torch.allclose(b[first].abs(), torch.full((int(first.sum()),), 1 / math.sqrt(2)), atol=1e-3)
    with pytest.raises(ValueError, match=r"advantage estimator 'rloo' has no option\(s\) \['unbiased'\]"):
        build_config({}, ["method.advantage=rloo", "method.unbiased=true"])


@pytest.mark.parametrize(
    "name, grid",
    [
        ("flow_grpo", "scheduler"),
        ("tempflow_grpo", "scheduler"),
        ("dance_grpo", "time_shift"),
        ("mix_grpo", "time_shift"),
        ("mix_grpo_flash", "time_shift"),
        ("branch_grpo", "time_shift"),
        ("branch_grpo_mix", "time_shift"),
        ("g2rpo", "time_shift"),
    ],
)
def test_each_method_samples_on_its_official_grid(name, grid):
    method = get_method(name)
    config = method.configure(num_steps=16, shift=3.0)
    sigmas = config.sigmas().double()  # the grid the plan starts from (Flash re-spaces after its window)
    if grid == "time_shift":
        # DanceGRPO's code: sd3_time_shift(shift, t) = shift t / (1 + (shift - 1) t) of linspace(1, 0, N + 1).
        t = torch.linspace(1, 0, 17, dtype=torch.float64)
        expected = 3.0 * t / (1 + 2.0 * t)
        assert sigmas[-2].item() == pytest.approx(3.0 / 16 / (1 + 2.0 / 16), rel=1e-6)  # 0.167, not 0.02
    else:
        # Flow-GRPO samples with diffusers' SD3 scheduler itself: its grid is the reference.
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
        scheduler.set_timesteps(16)
        expected = scheduler.sigmas.double()
    torch.testing.assert_close(sigmas, expected, atol=1e-6, rtol=1e-6)
    other = "scheduler" if grid == "time_shift" else "time_shift"
    assert not torch.allclose(method.configure(num_steps=16, shift=3.0, grid=other).sigmas().double(), expected)


def cps_reference(v, x, sigma, sigma_next, eta):
    """CPS as Flow-GRPO's code writes it (sde_type="cps"): std_dev_t = sigma_prev sin(eta pi / 2),
    pred_original = x - sigma v, noise_estimate = x + v (1 - sigma), and the mean
    pred_original (1 - sigma_prev) + noise_estimate sqrt(sigma_prev^2 - std_dev_t^2)."""
    std_dev_t = sigma_next * math.sin(eta * math.pi / 2)
    pred_original = x - sigma * v
    noise_estimate = x + v * (1 - sigma)
    return pred_original * (1 - sigma_next) + noise_estimate * math.sqrt(sigma_next**2 - std_dev_t**2), std_dev_t


@pytest.mark.parametrize("sigma, sigma_next, eta", [(1.0, 0.9, 0.8), (0.7, 0.5, 0.8), (0.4, 0.1, 0.5), (0.3, 0.2, 1.0)])
def test_cps_step_is_flow_grpo_s_with_the_exact_gaussian_log_prob(sigma, sigma_next, eta):
    from flowrl.samplers.sde import sde_step

    generator = torch.Generator().manual_seed(3)
    x, v, z = (torch.randn(4, 3, 4, 4, generator=generator, dtype=torch.float64) for _ in range(3))
    mean, std = sde_mean_std(v, x, sigma, sigma_next, "cps", eta)
    ref_mean, ref_std = cps_reference(v, x, sigma, sigma_next, eta)
    torch.testing.assert_close(mean, ref_mean)
    torch.testing.assert_close(std, torch.full((4,), ref_std, dtype=torch.float64))
    step = sde_step(v, x, sigma, sigma_next, "cps", eta, noise=z)
    expected = torch.distributions.Normal(ref_mean, ref_std).log_prob(step.sample.double()).flatten(1).mean(1)
    torch.testing.assert_close(step.logp.double(), expected, rtol=1e-4, atol=1e-4)


def test_cps_preserves_the_noise_level_of_an_exact_velocity():
    # For a single clean point x0 the exact velocity is v = (x - x0) / sigma, so x0_hat = x0 and
    # eps_hat = eps: the next sample is (1 - s') x0 + sqrt(s'^2 - std^2) eps + std z, whose noise
    # has variance exactly s'^2 (coefficients preserved), for any eta.
    x0 = torch.full((1, 2, 2, 2), 0.3, dtype=torch.float64)
    eps = torch.randn(2000, 2, 2, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sigma, sigma_next = 0.8, 0.5
    x = (1 - sigma) * x0 + sigma * eps
    for eta in (0.2, 0.8):
        mean, std = sde_mean_std((x - x0) / sigma, x, sigma, sigma_next, "cps", eta)
        kept = math.sqrt(sigma_next**2 - float(std[0]) ** 2)  # the share of the old noise kept
        torch.testing.assert_close(mean, (1 - sigma_next) * x0 + kept * eps)
        assert float(std[0]) ** 2 + kept**2 == pytest.approx(sigma_next**2)
    mean, std = sde_mean_std((x - x0) / sigma, x, sigma, sigma_next, "cps", 1.0)  # all noise drawn afresh
    torch.testing.assert_close(mean, ((1 - sigma_next) * x0).expand_as(mean))
    assert torch.allclose(std, torch.full_like(std, sigma_next))
    # eta = 0 is DDIM, which for a rectified flow is the Euler step x + (sigma_next - sigma) v.
    v = torch.randn_like(x)
    mean, std = sde_mean_std(v, x, sigma, sigma_next, "cps", 0.0)
    torch.testing.assert_close(mean, x + (sigma_next - sigma) * v)
    assert bool((std == 0).all())


def test_every_chain_and_tree_method_takes_cps_and_refuses_a_clean_cps_step_to_train():
    from flowrl.config import build_config
    from flowrl.samplers.plan import deterministic_trained_steps

    for name in (
        "flow_grpo",
        "dance_grpo",
        "mix_grpo",
        "mix_grpo_flash",
        "branch_grpo",
        "tree_rpo",
        "tempflow_grpo",
        "g2rpo",
    ):
        method = get_method(name)
        plan = method.plan(method.configure(sde="cps"))
        forms = {s.sde for s in plan.steps if s.mode == "sde" or s.probes > 0}
        assert forms == {"cps"}, (name, forms)
    # flow_grpo trains its first 9 of 10 steps: none ends at sigma 0, so cps gives every one a density.
    assert deterministic_trained_steps(get_method("flow_grpo").plan(get_method("flow_grpo").configure(sde="cps"))) == []
    with pytest.raises(ValueError, match=r"trained steps \[9\]"):  # the last step ends at sigma 0: std 0
        build_config({}, ["method.sde=cps", "method.timestep_fraction=1.0"])


def mixgrpo_official_windows(iterations, num_steps=25, window=4, iters_per_group=25, overlap_step=1):
    """The trained steps per iteration as MixGRPO's progressive schedule produces them: take
    range(cur, min(cur + window, num_steps - 2)), then count the iteration; after iters_per_group of
    them cur moves by overlap_step, and past num_steps - 2 it rolls back to 0."""
    cur, in_group, windows = 0, 0, []
    for _ in range(iterations):
        windows.append(list(range(cur, min(cur + window, num_steps - 2))))
        in_group += 1
        if in_group >= iters_per_group:
            in_group = 0
            cur += overlap_step
        if cur > num_steps - 2:
            cur, in_group = 0, 0
    return windows


def test_the_mixgrpo_window_shrinks_at_the_end_and_rolls_back():
    method = get_method("mix_grpo")
    config = method.configure()
    official = mixgrpo_official_windows(700)
    for iteration in (0, 24, 25, 499, 525, 550, 575, 599, 600, 699):
        assert method.plan(config, iteration).trained_steps() == official[iteration], iteration
    assert (
        official[499] == [19, 20, 21, 22]
        and official[525] == [21, 22]
        and official[575] == []
        and official[600] == [0, 1, 2, 3]
    )
    # The last two steps are never trained; window_end=clamp keeps the window's size at the end instead.
    assert all(24 not in w and 23 not in w for w in official)
    clamped = method.configure(window_end="clamp")
    assert method.plan(clamped, 600).trained_steps() == [21, 22, 23, 24]
    # Flash moves every 20 iterations (its scripts); Flash* keeps the window at 0 and compresses to 0.2.
    flash = get_method("mix_grpo_flash")
    flash_windows = mixgrpo_official_windows(200, iters_per_group=20)
    for iteration in (0, 19, 20, 199):
        steps = flash.plan(flash.configure(), iteration).steps
        assert [i for i, s in enumerate(steps) if s.trained] == flash_windows[iteration]
    assert flash.configure().compression == 0.4 and flash.configure(fixed_window=True).compression == 0.2


def test_g2rpo_finishes_at_granularities_one_and_two():
    method = get_method("g2rpo")
    plan = method.plan(method.configure())
    assert [tail.stride for tail in plan.tails] == [1, 2]


@pytest.mark.parametrize("fixed_window, compression", [(False, 0.4), (True, 0.2)])
def test_mixgrpo_flash_respaces_the_grid_after_the_window(fixed_window, compression):
    # MixGRPO-Flash's code: keep sigma_schedule[:last + 1] (last = the window's last SDE step), then
    # num_post = int(max((N - last) * ratio, 1)) points linspace(t[last + 1], 0, num_post) of the
    # unshifted t = linspace(1, 0, N + 1), time-shifted, solved by DPM-Solver++ after the window.
    method = get_method("mix_grpo_flash")
    plan = method.plan(method.configure(fixed_window=fixed_window), 0)
    n, shift, last = 25, 3.0, 3
    t = torch.linspace(1, 0, n + 1, dtype=torch.float64)
    schedule = shift * t / (1 + (shift - 1) * t)
    num_post = int(max((n - last) * compression, 1))
    post_t = torch.linspace(float(t[last + 1]), 0, num_post, dtype=torch.float64)
    expected = torch.cat([schedule[: last + 1], shift * post_t / (1 + (shift - 1) * post_t)])
    torch.testing.assert_close(plan.sigmas.double(), expected, atol=1e-6, rtol=1e-6)
    assert plan.num_steps == last + num_post  # 4 + 7 steps (Flash) or 4 + 3 (Flash*)
    assert all(s.mode == "ode" and s.solver == "dpmpp_2m" for s in plan.steps[last + 1 :])
    assert plan.trained_steps() == [0, 1, 2, 3]


# --- BranchGRPO (its code: fastvideo/train_branchgrpo_flux.py) ------------------------------------


def branch_official_advantages(result, leaf_rewards, alpha=0.0):
    """Node advantages as BranchGRPO's code computes them for one tree: a node's value is the mean of
    the leaves below it (or, probability-weighted, the softmax(alpha * edge log-prob) sum over its
    children, a one-child node passing its value up); at each depth the values are z-scored with
    torch.std (n - 1), (v - mean) / (std + 1e-8), and a depth with std < 1e-6 gets 0."""
    parent = result.node_parent.tolist()
    children = {}
    for node, up in enumerate(parent):
        if up >= 0:
            children.setdefault(up, []).append(node)
    edge = {int(c): float(lp) for c, lp in zip(result.transitions.child, result.transitions.logp)}
    value = {int(node): float(r) for node, r in zip(result.sample_node, leaf_rewards)}
    leaves_below = {int(node): [float(r)] for node, r in zip(result.sample_node, leaf_rewards)}
    for node in sorted(children, reverse=True):  # a child's id is larger than its parent's
        kids = children[node]
        leaves_below[node] = [r for k in kids for r in leaves_below[k]]
        if alpha == 0:
            value[node] = sum(leaves_below[node]) / len(leaves_below[node])
        else:
            weights = [math.exp(alpha * edge[k]) for k in kids]
            value[node] = sum(w * value[k] for w, k in zip(weights, kids)) / sum(weights)
    depth = result.node_index.tolist()
    advantage = {}
    for d in set(depth):
        nodes = [n for n in range(len(parent)) if depth[n] == d]
        values = torch.tensor([value[n] for n in nodes], dtype=torch.float64)
        std = values.std() if len(values) > 1 else torch.tensor(float("nan"))
        for n, v in zip(nodes, values):
            advantage[n] = 0.0 if not std >= 1e-6 else float((v - values.mean()) / (std + 1e-8))
    return advantage


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_branch_grpo_credit_is_its_code_s(alpha):
    method = get_method("branch_grpo")
    config = method.configure(num_steps=8, split_steps=(0, 2, 4), fusion_beta=alpha)
    result = rollout(lambda x, s, p: -0.5 * x, method.plan(config), 1, (1, 2, 2), seed=3)
    rewards = torch.randn(8, generator=torch.Generator().manual_seed(1)).double()
    advantage = branch_official_advantages(result, rewards, alpha)
    credit = assign_credit(method, result, rewards.float(), config)
    expected = torch.tensor([advantage[int(c)] for c in result.transitions.child])
    torch.testing.assert_close(credit.advantages.double(), expected.double(), atol=1e-5, rtol=1e-5)


def branch_official_depth_pruned_steps(t, depths, interval, stop):
    """BranchGRPO's depth pruning at its iteration t (counted from 1): the pruned child depths move
    min(t // interval, min(depths) - stop) toward the root; the transitions into them (step = depth
    - 1) lose their gradients, split steps included."""
    shift = min(t // interval, max(0, min(depths) - stop))
    return sorted(d - shift - 1 for d in depths)


def test_branch_grpo_depth_pruning_slides_toward_the_root_and_stops():
    method = get_method("branch_grpo")
    config = method.configure(depth_pruning=(15, 16, 17, 18), depth_interval=30)  # its example; stop: split 9
    result = rollout(lambda x, s, p: -0.5 * x, method.plan(config), 1, (1, 1, 1), seed=0)
    rewards = torch.randn(16, generator=torch.Generator().manual_seed(0))
    steps = result.transitions.step
    for iteration in (0, 28, 29, 59, 149, 178, 179, 500):
        credit = assign_credit(method, result, rewards, config, iteration)
        pruned = sorted(set(steps[~credit.mask].tolist()))
        assert pruned == branch_official_depth_pruned_steps(iteration + 1, (15, 16, 17, 18), 30, 9), iteration
    assert branch_official_depth_pruned_steps(1, (15, 16, 17, 18), 30, 9) == [14, 15, 16, 17]
    assert branch_official_depth_pruned_steps(500, (15, 16, 17, 18), 30, 9) == [8, 9, 10, 11]


def test_branch_grpo_width_pruning_keeps_the_best_and_worst_and_the_last_split():
    # Its code (mode 2): among the transitions below the last split, sorted by advantage, keep the
    # k // 2 best and the k - k // 2 worst, k = max(2, int(0.5 n)); the last split's own always stay.
    method = get_method("branch_grpo")
    config = method.configure(width_pruning=0.5)
    result = rollout(lambda x, s, p: -0.5 * x, method.plan(config), 1, (1, 1, 1), seed=0)
    rewards = torch.randperm(16, generator=torch.Generator().manual_seed(2)).float()
    credit = assign_credit(method, result, rewards, config)
    t = result.transitions
    below = torch.nonzero(t.step > 9).flatten()
    order = below[torch.argsort(credit.advantages[below], descending=True, stable=True)]
    k = max(2, int(0.5 * len(below)))
    expected = torch.ones(len(t), dtype=torch.bool)
    expected[below] = False
    expected[order[: k // 2]] = True
    expected[order[len(order) - (k - k // 2) :]] = True
    assert torch.equal(credit.mask, expected)
    assert bool(credit.mask[t.step == 9].all()) and int((~credit.mask).sum()) == 8 * 10


def test_branch_grpo_splits_draw_scaled_independent_noise():
    method = get_method("branch_grpo")
    plan = method.plan(method.configure())
    assert (plan.split_noise, plan.split_noise_scale) == ("scaled", 4.0)
    assert [i for i, s in enumerate(plan.steps) if s.branch == 2] == [0, 3, 6, 9]


# --- G2RPO (its code: fastvideo/train_g2rpo_hps.py) -----------------------------------------------


def g2rpo_official_finish(x, k, g, sigmas, velocity):
    """G2RPO's finishing pass of a probe that its SDE step k -> k + 1 left at x: a new grid
    sigmas[:k + 2] + sigmas[k + 2::g], Euler through it from index k + 1, and the image scored is
    the clean estimate x - sigma v at the grid's second-to-last point (the last update is dropped)."""
    indices = list(range(k + 2)) + list(range(k + 2, len(sigmas), g))
    grid = [float(sigmas[i]) for i in indices]
    clean = None
    for i in range(k + 1, len(grid) - 1):
        v = velocity(x, grid[i])
        clean = x - grid[i] * v
        x = x + (grid[i + 1] - grid[i]) * v
    return clean, indices[k + 1 : -1]


def test_g2rpo_tails_step_once_then_stride_and_score_the_clean_estimate():
    method = get_method("g2rpo")
    config = method.configure(num_steps=16, sde_steps=(3,), probes=2, tail_strides=(1, 2, 3))
    plan = method.plan(config)
    field = lambda x, s, p: 0.3 * x + 0.1 * s.view(-1, *[1] * (x.ndim - 1))  # noqa: E731
    result = rollout(field, plan, 1, (1, 2, 2), seed=0)
    sigmas = plan.sigmas.double()
    t = result.transitions
    for row, probe in enumerate(t.child.tolist()):
        for tail, g in enumerate((1, 2, 3)):
            expected, visited = g2rpo_official_finish(
                t.x_next[row : row + 1].double(), 3, g, sigmas, lambda x, s: 0.3 * x + 0.1 * s
            )
            got = result.samples[(result.probe == probe) & (result.tail == tail)]
            torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
            assert visited == {1: list(range(4, 16)), 2: [4, 5, 7, 9, 11, 13], 3: [4, 5, 8, 11]}[g]
    assert method.configure().unbiased and method.configure().eps == 1e-8  # its code: torch.std + 1e-8


# --- MixGRPO-Flash (its code: fastvideo/utils/sampling_utils.py) ---------------------------------


def test_mixgrpo_flash_keeps_the_solver_memory_through_the_window():
    # Its code pushes x0 = x - sigma v of every step into DPM-Solver++'s memory, SDE window steps
    # included (before their noise), so the first step after the window is second order.
    from references import dpmpp_2m_reference

    method = get_method("mix_grpo_flash")
    plan = method.plan(method.configure(), 0)
    field = lambda x, s, p: 0.3 * x + 0.1 * s.view(-1, *[1] * (x.ndim - 1))  # noqa: E731
    result = rollout(field, plan, 2, (1, 2, 2), seed=0)
    t = result.transitions
    last = max(t.step.tolist())
    window_end = t.step == last
    sigmas = plan.sigmas.double()
    x_last = t.x[window_end].double()
    memory = (x_last - float(sigmas[last]) * (0.3 * x_last + 0.1 * float(sigmas[last])), float(sigmas[last]))
    expected = dpmpp_2m_reference(
        lambda x, s: 0.3 * x + 0.1 * s.view(-1, 1, 1, 1), t.x_next[window_end].double(), sigmas[last + 1 :], memory
    )
    order = [
        int(torch.nonzero(result.node_root[result.sample_node] == r)) for r in result.node_root[t.child[window_end]]
    ]
    torch.testing.assert_close(result.samples[order].double(), expected, atol=1e-5, rtol=1e-5)
    first_order = dpmpp_2m_reference(
        lambda x, s: 0.3 * x + 0.1 * s.view(-1, 1, 1, 1), t.x_next[window_end].double(), sigmas[last + 1 :]
    )
    assert not torch.allclose(first_order, expected, atol=1e-4)


# --- GRPO-Guard (arXiv 2510.22319) ----------------------------------------------------------------


@pytest.mark.parametrize("reweight", [True, False])
def test_grpo_guard_clips_the_normalised_ratio_and_reweights_steps(reweight):
    # Eq. 8: log r_hat = -(mu_old - mu_new) . eps, eps the rollout's standard noise of the step (the
    # dot product averaged over dimensions, as the log-probs are); eq. 12: each step's clipped
    # surrogate -min(r_hat A, clip(r_hat, 1 - e, 1 + e) A) weighted by 1 / dt.
    from flowrl.experience import Batch

    def velocity_at(scale):
        return lambda x, sigma, prompt: scale * x + sigma.view(-1, *([1] * (x.ndim - 1)))

    old, new = velocity_at(0.5), velocity_at(0.47)
    method = get_method("flow_grpo")
    config = method.configure(num_steps=4, group_size=3, shift=3.0, grid="time_shift")  # steps of unequal dt
    result = rollout(old, method.plan(config), 1, (2, 3, 3), root_seeds=[0, 1, 2])
    t = result.transitions
    advantages = torch.linspace(-0.5, 1.5, len(t))
    batch = Batch(
        0,
        result,
        ["p"],
        None,
        torch.arange(3),
        torch.zeros(3),
        torch.ones(len(t), dtype=torch.bool),
        t,
        advantages,
        torch.ones(len(t)),
        {},
    )
    context = ObjectiveContext({}, None, None, 0.0, "clip", 5.0, 64, 64, (2, 3, 3), lambda i, r: [0] * len(r))
    clip = 2e-3
    objective = SdeObjective(SdeOptions(clip_low=clip, clip_high=clip, guard=True, guard_reweight=reweight), context)
    objective.begin_update(old, batch, 1)
    loss, stats = objective.loss(new, batch, torch.arange(len(t)), float(len(t)))
    expected, unit_ratio = 0.0, 0.0  # the loss, and what it would be with every ratio 1
    for k in range(len(t)):
        x, x_next = t.x[k : k + 1].double(), t.x_next[k : k + 1].double()
        sigma, sigma_next = float(t.sigma[k]), float(t.sigma_next[k])
        dt = sigma - sigma_next
        mean_old, std_dev_t = flow_grpo_step_mean(0.5 * x + sigma, x, sigma, sigma_next, 0.7)
        mean_new, _ = flow_grpo_step_mean(0.47 * x + sigma, x, sigma, sigma_next, 0.7)
        eps = (x_next - mean_old) / (std_dev_t * math.sqrt(dt))
        ratio = math.exp(-((mean_old - mean_new) * eps).mean().item())
        a = float(advantages[k])
        surrogate = max(-a * ratio, -a * min(max(ratio, 1 - clip), 1 + clip))
        expected += surrogate * (1 / dt if reweight else 1.0)
        unit_ratio += -a * (1 / dt if reweight else 1.0)
    # compared beyond the ratio-1 part, so that the ratios' own effect (about 1e-3) is what is checked
    assert loss.item() - unit_ratio / len(t) == pytest.approx((expected - unit_ratio) / len(t), rel=1e-3)
    assert abs(expected - unit_ratio) > 1e-4 * abs(unit_ratio)
    assert {"ratio/step00/mean", "ratio/step03/std"} <= set(stats)


def test_grpo_guard_s_ratio_is_exactly_one_before_the_update():
    from flowrl.experience import Batch

    velocity = lambda x, sigma, prompt: 0.5 * x + sigma.view(-1, *([1] * (x.ndim - 1)))  # noqa: E731
    method = get_method("flow_grpo")
    result = rollout(velocity, method.plan(method.configure(num_steps=3, group_size=2)), 1, (1, 2, 2), seed=0)
    t = result.transitions
    batch = Batch(
        0,
        result,
        ["p"],
        None,
        torch.arange(2),
        torch.zeros(2),
        torch.ones(len(t), dtype=torch.bool),
        t,
        torch.ones(len(t)),
        torch.ones(len(t)),
        {},
    )
    context = ObjectiveContext({}, None, None, 0.0, "clip", 5.0, 64, 64, (1, 2, 2), lambda i, r: [0] * len(r))
    objective = SdeObjective(SdeOptions(guard=True), context)
    objective.begin_update(velocity, batch, 1)
    _, stats = objective.loss(velocity, batch, torch.arange(len(t)), float(len(t)))
    assert stats["ratio/min"] == stats["ratio/max"] == 1.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["objective.guard=true", "loss=gspo"], "GRPO-Guard's option of the clipped surrogate"),
        (["objective.guard=true", "fsdp=true"], "not supported with fsdp=true or zero_stage"),
    ],
)
def test_grpo_guard_is_refused_where_it_does_not_apply(overrides, message):
    from flowrl.config import build_config

    with pytest.raises(ValueError, match=message):
        build_config({}, overrides)


@pytest.mark.parametrize("name", ["dance_grpo", "branch_grpo"])
def test_dance_and_branch_grpo_score_the_last_step_s_clean_estimate(name):
    # Their code returns pred_original = z - sigma v of the last step as the image, not its SDE sample.
    method = get_method(name)
    config = (
        method.configure(num_steps=4, group_size=2)
        if name == "dance_grpo"
        else method.configure(num_steps=4, split_steps=(0, 2))
    )
    field = lambda x, s, p: 0.3 * x + 0.1 * s.view(-1, *[1] * (x.ndim - 1))  # noqa: E731
    result = rollout(field, method.plan(config), 1, (1, 2, 2), seed=0)
    t = result.transitions
    last = t.step == 3
    x, sigma = t.x[last].double(), float(t.sigma[last][0])
    clean = x - sigma * (0.3 * x + 0.1 * sigma)
    sample_of = {int(node): k for k, node in enumerate(result.sample_node.tolist())}
    samples = result.samples[[sample_of[int(c)] for c in t.child[last]]].double()
    torch.testing.assert_close(samples, clean, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(samples, t.x_next[last].double(), atol=1e-3)  # the transition keeps its sample
    noisy = rollout(field, method.plan(method.configure(**{**vars(config), "final": "sample"})), 1, (1, 2, 2), seed=0)
    assert torch.equal(noisy.samples[[sample_of[int(c)] for c in t.child[last]]], t.x_next[last])
