"""The plan executor (samplers.rollout) against closed-form counts and hand-written integrations."""

import math
from dataclasses import replace

import pytest
import torch
from torch.distributions import Normal

import flowrl.samplers.rollout as rollout_module
from flowrl.samplers.plan import Plan, StepSpec, Tail
from flowrl.samplers.rollout import PROBE, SPINE, TAIL, distinct_rows, rollout, score_transitions
from flowrl.samplers.sde import SDE_FORMS
from references import dpmpp_2m_reference

SHAPE = (2, 3)


class CountingVelocity:
    """v(x, sigma, prompt) = 0.1 x + 0.01 prompt + 0.05 sigma, counting calls and rows per sigma."""

    def __init__(self):
        self.calls = 0
        self.rows = 0
        self.rows_at = {}
        self.batch_sizes = []

    def __call__(self, x, sigma, prompt):
        assert x.shape[0] == sigma.shape[0] == prompt.shape[0]
        self.calls += 1
        self.rows += x.shape[0]
        self.batch_sizes.append(x.shape[0])
        for s in sigma.tolist():
            key = round(s, 6)
            self.rows_at[key] = self.rows_at.get(key, 0) + 1
        return exact_velocity(x, sigma, prompt)


def exact_velocity(x, sigma, prompt):
    view = (-1,) + (1,) * (x.ndim - 1)
    return 0.1 * x + 0.01 * prompt.to(x).view(view) + 0.05 * sigma.to(x).view(view)


def grid(steps):
    return torch.linspace(1, 0, steps + 1)


def chain(steps, **spec):
    return Plan(grid(steps), tuple(StepSpec(**spec) for _ in range(steps)))


def initial_noise(roots, seed=123):
    return torch.randn(roots, *SHAPE, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- chains


@pytest.mark.parametrize("steps,prompts,group", [(1, 1, 1), (5, 3, 4), (8, 2, 3)])
def test_euler_chain_nfe_is_prompts_times_group_times_steps(steps, prompts, group):
    v = CountingVelocity()
    plan = Plan(grid(steps), tuple(StepSpec() for _ in range(steps)), group_size=group)
    out = rollout(v, plan, prompts, SHAPE)
    assert out.nfe == v.rows == prompts * group * steps
    assert out.samples.shape == (prompts * group, *SHAPE)
    assert len(out.transitions) == 0
    assert out.prompt.tolist() == sorted(out.prompt.tolist()) and out.prompt.bincount().tolist() == [group] * prompts
    # every spine node was evaluated once at each grid sigma but the last
    for s in grid(steps)[:-1].tolist():
        assert v.rows_at[round(s, 6)] == prompts * group


def test_euler_chain_matches_a_hand_written_integration():
    steps, prompts, group = 6, 2, 3
    noise = initial_noise(prompts * group)
    plan = Plan(grid(steps), (StepSpec(),) * steps, group_size=group)
    out = rollout(CountingVelocity(), plan, prompts, SHAPE, noise=noise)
    x = noise.double()
    prompt = torch.arange(prompts).repeat_interleave(group).double().view(-1, 1, 1)
    sig = grid(steps).double()
    for i in range(steps):
        x = x + (sig[i + 1] - sig[i]) * (0.1 * x + 0.01 * prompt + 0.05 * sig[i])
    # samples are in root order for a chain
    torch.testing.assert_close(out.samples[out.root.argsort()].double(), x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("form", SDE_FORMS)
def test_zero_noise_sde_steps_are_the_euler_chain_and_keep_their_transitions(form):
    # Matching objectives train on a chain's final sample at its trained steps' noise levels, so a
    # deterministic rollout is SDE steps at level 0: Euler steps that still record transitions.
    steps, prompts, group = 5, 2, 3
    noise = initial_noise(prompts * group, seed=9)
    specs = tuple(
        StepSpec("sde", sde=form, noise_level=0.0, trained=i < 3) if i < 3 else StepSpec() for i in range(steps)
    )
    out = rollout(CountingVelocity(), Plan(grid(steps), specs, group_size=group), prompts, SHAPE, noise=noise, seed=4)
    x = noise.double()
    prompt = torch.arange(prompts).repeat_interleave(group).double().view(-1, 1, 1)
    sig = grid(steps).double()
    for i in range(steps):  # the hand-written Euler integration
        x = x + (sig[i + 1] - sig[i]) * (0.1 * x + 0.01 * prompt + 0.05 * sig[i])
    torch.testing.assert_close(out.samples[out.root.argsort()].double(), x, atol=1e-5, rtol=1e-5)
    euler = rollout(
        CountingVelocity(), Plan(grid(steps), (StepSpec(),) * steps, group_size=group), prompts, SHAPE, noise=noise
    )
    if form == "cps":  # DDIM: the Euler step through the clean and noise estimates, float32 rounding apart
        torch.testing.assert_close(out.samples, euler.samples, atol=1e-6, rtol=1e-6)
    else:
        assert torch.equal(out.samples, euler.samples)  # the zero-noise SDE step is exactly the Euler step
    t = out.transitions
    assert len(t) == prompts * group * 3 and sorted(set(t.step.tolist())) == [0, 1, 2] and bool(t.trained.all())
    assert torch.isnan(t.logp).all() and torch.all(t.noise_level == 0)  # no density to train on
    assert torch.all(score_transitions(exact_velocity, t).std == 0)


def test_heun_steps_cost_two_evaluations():
    steps, prompts, group = 6, 2, 2
    specs = tuple(StepSpec(solver="heun" if i in (1, 3, 5) else "euler") for i in range(steps))
    v = CountingVelocity()
    noise = initial_noise(prompts * group)
    out = rollout(v, Plan(grid(steps), specs, group_size=group), prompts, SHAPE, noise=noise)
    assert out.nfe == v.rows == prompts * group * (steps + 3)
    # hand-written: Heun's trapezoid with the velocity at the Euler prediction
    x = noise.double()
    prompt = torch.arange(prompts).repeat_interleave(group).double().view(-1, 1, 1)
    sig = grid(steps).double()
    f = lambda x, s: 0.1 * x + 0.01 * prompt + 0.05 * s  # noqa: E731
    for i in range(steps):
        d = sig[i + 1] - sig[i]
        if i in (1, 3, 5):
            pred = x + d * f(x, sig[i])
            x = x + d * 0.5 * (f(x, sig[i]) + f(pred, sig[i + 1]))
        else:
            x = x + d * f(x, sig[i])
    torch.testing.assert_close(out.samples[out.root.argsort()].double(), x, atol=1e-5, rtol=1e-5)


def test_coarse_ode_stretch_visits_only_its_sub_grid():
    # step 1 jumps to index 4, step 4 to 6: the spine is evaluated at indices 0, 1, 4 and nowhere else
    steps = 6
    specs = [StepSpec() for _ in range(steps)]
    specs[1] = StepSpec(next_index=4)
    specs[4] = StepSpec(next_index=6)
    plan = Plan(grid(steps), tuple(specs))
    assert plan.visited() == [0, 1, 4]
    v = CountingVelocity()
    noise = initial_noise(3)
    out = rollout(v, plan, 3, SHAPE, noise=noise)
    assert out.nfe == v.rows == 3 * 3
    sig = grid(steps)
    assert set(v.rows_at) == {round(float(sig[i]), 6) for i in (0, 1, 4)}
    x = noise.double()
    prompt = torch.arange(3).double().view(-1, 1, 1)
    for a, b in ((0, 1), (1, 4), (4, 6)):
        x = x + float(sig[b] - sig[a]) * (0.1 * x + 0.01 * prompt + 0.05 * float(sig[a]))
    torch.testing.assert_close(out.samples.double(), x, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- trees


def tree_plan(steps, branches, group=1, trained=(), form="flow_grpo", **kw):
    specs = tuple(
        StepSpec("sde", sde=form, branch=branches.get(i, 1), trained=i in trained, weight=1.0 + i)
        if i in branches or i in trained
        else StepSpec()
        for i in range(steps)
    )
    return Plan(grid(steps), specs, group_size=group, **kw)


@pytest.mark.parametrize("prompts,group", [(1, 1), (2, 3)])
def test_tree_counts_are_the_closed_form(prompts, group):
    steps, branches = 7, {1: 3, 2: 2, 4: 2}
    plan = tree_plan(steps, branches, group, trained=(1, 2, 4, 5))
    v = CountingVelocity()
    out = rollout(v, plan, prompts, SHAPE)
    roots = prompts * group
    width = [roots]  # nodes at each grid index
    for j in range(steps):
        width.append(width[-1] * branches.get(j, 1))
    assert out.samples.shape[0] == roots * 3 * 2 * 2 == width[-1]
    # shared prefixes are evaluated once: NFE is the sum of widths, not leaves * steps
    assert out.nfe == v.rows == sum(width[:-1])
    assert out.nfe < width[-1] * steps
    for j in range(steps):
        assert v.rows_at[round(float(grid(steps)[j]), 6)] == width[j]
    assert len(out.node_parent) == sum(width)
    assert (out.node_kind == SPINE).all()
    assert out.node_index.bincount().tolist() == width
    # SDE transitions: one per child at SDE steps (step 5 is an unsplit SDE step)
    sde_steps = (1, 2, 4, 5)
    assert len(out.transitions) == sum(width[j + 1] for j in sde_steps)
    assert out.transitions.step.bincount(minlength=steps).tolist() == [
        width[j + 1] if j in sde_steps else 0 for j in range(steps)
    ]
    # each leaf traces back through its parents to its root, with grid indices counting down
    parent = out.node_parent
    for leaf, root in zip(out.sample_node.tolist(), out.root.tolist()):
        node, depth = leaf, steps
        while parent[node] >= 0:
            assert out.node_index[node] == depth
            node, depth = int(parent[node]), depth - 1
        assert node == root and depth == 0
    # every root has the same number of leaves and every prompt group * leaves-per-root samples
    assert out.root.bincount().tolist() == [12] * roots
    assert out.prompt.bincount().tolist() == [12 * group] * prompts


def test_siblings_share_their_parent_state_and_transitions_chain_up():
    plan = tree_plan(5, {0: 2, 2: 3}, trained=(0, 2, 3))
    out = rollout(CountingVelocity(), plan, 2, SHAPE)
    t = out.transitions
    for p in torch.unique(t.parent).tolist():
        sel = t.parent == p
        assert (t.x[sel] == t.x[sel][0]).all()  # same parent state
        if sel.sum() > 1:
            assert not torch.equal(t.x_next[sel][0], t.x_next[sel][1])  # independent noise
    # steps 0, 2, 3 are SDE, step 1 ODE. A step-3 transition starts where its parent's step-2
    # transition ended; a step-2 transition's parent came by an ODE step from a step-0 child.
    child_state = {c: t.x_next[i] for i, c in enumerate(t.child.tolist())}
    step3 = torch.nonzero(t.step == 3).flatten().tolist()
    assert len(step3) == 2 * 2 * 3
    for i in step3:
        parent = int(t.parent[i])
        assert out.node_index[parent] == 3 and torch.equal(t.x[i], child_state[parent])
    for i in torch.nonzero(t.step == 2).flatten().tolist():
        parent = int(t.parent[i])
        assert parent not in child_state and int(out.node_parent[parent]) in child_state
    # the final samples of the step-3 SDE children went through one more (ODE) step
    assert set(out.node_parent[out.sample_node].tolist()) == set(t.child[t.step == 3].tolist())


def test_transition_logp_is_the_hand_computed_flow_grpo_density():
    plan = tree_plan(4, {0: 2, 1: 2}, trained=(0, 1, 2))
    out = rollout(CountingVelocity(), plan, 2, SHAPE)
    t = out.transitions
    x, s, sn = t.x.double(), t.sigma.double().view(-1, 1, 1), t.sigma_next.double().view(-1, 1, 1)
    v = 0.1 * x + 0.01 * t.prompt.double().view(-1, 1, 1) + 0.05 * s
    den = torch.where(s >= 1, sn, s)
    g = 0.7 * torch.sqrt(s / (1 - den))
    dt = sn - s
    mean = x * (1 + g**2 / (2 * s) * dt) + v * (1 + g**2 * (1 - s) / (2 * s)) * dt
    std = (g * torch.sqrt(-dt)).expand_as(mean)
    expected = Normal(mean, std).log_prob(t.x_next.double()).flatten(1).mean(1)
    torch.testing.assert_close(t.logp.double(), expected, atol=1e-4, rtol=1e-5)
    assert torch.allclose(t.noise_level, torch.tensor(0.7)) and (t.sde_form == SDE_FORMS.index("flow_grpo")).all()
    # the parent's prompt is recorded
    assert torch.equal(t.prompt, out.node_prompt[t.parent])


# ---------------------------------------------------------------- probes


@pytest.mark.parametrize("tails", [(Tail(1),), (Tail(1), Tail(2, "heun")), (Tail(3),)])
def test_probe_counts_are_the_closed_form(tails):
    steps, j, probes, prompts, group = 7, 2, 3, 2, 2
    specs = tuple(StepSpec("ode", probes=probes, trained=True) if i == j else StepSpec() for i in range(steps))
    plan = Plan(grid(steps), specs, tails=tails, group_size=group)
    v = CountingVelocity()
    out = rollout(v, plan, prompts, SHAPE)
    roots = prompts * group
    remaining = steps - (j + 1)  # grid steps a probe still has to cover
    tail_evals = [math.ceil(remaining / t.stride) * (2 if t.solver == "heun" else 1) for t in tails]
    assert out.nfe == roots * steps + roots * probes * sum(tail_evals)
    # The tails of one probe start from the same state: their first velocity is computed once.
    assert v.rows == out.nfe - roots * probes * (len(tails) - 1)
    assert out.samples.shape[0] == roots + roots * probes * len(tails)
    assert len(out.transitions) == roots * probes and bool(out.transitions.trained.all())
    assert (out.transitions.step == j).all()
    assert (out.node_kind == PROBE).sum() == roots * probes
    # probe bookkeeping: spine leaves have probe -1; every probe is finished once by every tail
    spine = out.probe < 0
    assert spine.sum() == roots and (out.tail[spine] == -1).all()
    assert (out.probe_step[~spine] == j).all() and (out.probe_step[spine] == -1).all()
    assert torch.equal(out.reward_mask, ~spine)
    assert sorted(out.probe[~spine].tolist()) == sorted(out.transitions.child.tolist() * len(tails))
    assert sorted(out.tail[~spine].tolist()) == sorted(list(range(len(tails))) * roots * probes)
    # node table: spine nodes at every index, a probe node per probe, a tail node per landing (and
    # with several tails, one copy of the probe per tail)
    landings = [math.ceil(remaining / t.stride) for t in tails]
    tail_nodes = roots * probes * (sum(landings) if len(tails) == 1 else len(tails) + sum(landings))
    assert (out.node_kind == SPINE).sum() == roots * (steps + 1)
    assert (out.node_kind == TAIL).sum() == tail_nodes


def test_probe_tail_is_a_deterministic_euler_finish_of_the_probe():
    steps, j = 5, 1
    specs = tuple(StepSpec("ode", probes=2, trained=True) if i == j else StepSpec() for i in range(steps))
    out = rollout(CountingVelocity(), Plan(grid(steps), specs), 1, SHAPE)
    sig = grid(steps).double()
    for probe, x in zip(out.transitions.child.tolist(), out.transitions.x_next.double()):
        for i in range(j + 1, steps):
            x = x + (sig[i + 1] - sig[i]) * (0.1 * x + 0.05 * sig[i])
        torch.testing.assert_close(out.samples[out.probe == probe][0].double(), x, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- seeds, re-scoring, training set


def mixed_plan():
    specs = (
        StepSpec("sde", branch=2, trained=True),
        StepSpec("ode", solver="heun"),
        StepSpec("sde", sde="dance_grpo", branch=2, trained=True, weight=0.5),
        StepSpec("ode", probes=2, trained=False),
        StepSpec("sde", sde="dance_grpo", noise_level=0.8, trained=False),
        StepSpec("ode", solver="dpmpp_2m"),
        StepSpec("ode", solver="dpmpp_2m"),
    )
    return Plan(grid(len(specs)), specs, tails=(Tail(1), Tail(2)), group_size=2)


def test_same_seed_is_bitwise_identical_and_other_seeds_differ():
    a = rollout(CountingVelocity(), mixed_plan(), 2, SHAPE, seed=7)
    b = rollout(CountingVelocity(), mixed_plan(), 2, SHAPE, seed=7)
    c = rollout(CountingVelocity(), mixed_plan(), 2, SHAPE, seed=8)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.transitions.logp, b.transitions.logp)
    assert torch.equal(a.transitions.x_next, b.transitions.x_next) and torch.equal(a.node_parent, b.node_parent)
    assert a.samples.shape == c.samples.shape
    assert not torch.allclose(a.samples, c.samples)
    assert not torch.allclose(a.transitions.logp, c.transitions.logp)


def test_score_transitions_reproduces_the_stored_logp():
    out = rollout(CountingVelocity(), mixed_plan(), 3, SHAPE, seed=3)
    t = out.transitions
    assert set(t.sde_form.tolist()) == {0, 1}  # both forms: the mixed path of score_transitions
    v = CountingVelocity()
    scored = score_transitions(v, t, max_batch=5)
    torch.testing.assert_close(scored.logp, t.logp, atol=1e-6, rtol=1e-6)
    # siblings share one evaluation: one row per distinct parent
    assert v.rows == len(torch.unique(t.parent))
    # under a different velocity the logp is the hand-computed Gaussian density with the stored noise level
    other = lambda x, s, p: exact_velocity(x, s, p) + 0.3  # noqa: E731
    rescored = score_transitions(other, t)
    x, s, sn = t.x.double(), t.sigma.double().view(-1, 1, 1), t.sigma_next.double().view(-1, 1, 1)
    vv = 0.1 * x + 0.01 * t.prompt.double().view(-1, 1, 1) + 0.05 * s + 0.3
    level = t.noise_level.double().view(-1, 1, 1)
    flow = (t.sde_form == 0).view(-1, 1, 1)
    g = torch.where(flow, level * torch.sqrt(s / (1 - torch.where(s >= 1, sn, s))), level)
    mean = x + (vv + g**2 / (2 * s) * (x + (1 - s) * vv)) * (sn - s)
    expected = Normal(mean, (g * torch.sqrt(s - sn)).expand_as(mean)).log_prob(t.x_next.double()).flatten(1).mean(1)
    torch.testing.assert_close(rescored.logp.double(), expected, atol=1e-4, rtol=1e-5)
    assert (rescored.logp < t.logp - 1e-3).any()


def test_trained_transitions_are_the_plans_trained_steps():
    plan = mixed_plan()
    out = rollout(CountingVelocity(), plan, 2, SHAPE)
    assert plan.trained_steps() == [0, 2]
    trained = out.trained
    assert sorted(set(trained.step.tolist())) == plan.trained_steps()
    # counts: 4 roots -> 8 children at step 0 -> 16 at step 2
    assert (trained.step == 0).sum() == 8 and (trained.step == 2).sum() == 16
    torch.testing.assert_close(trained.weight[trained.step == 2], torch.full((16,), 0.5))
    torch.testing.assert_close(trained.weight[trained.step == 0], torch.ones(8))
    untrained = out.transitions.select(~out.transitions.trained)
    assert sorted(set(untrained.step.tolist())) == [3, 4]
    assert (untrained.step == 3).sum() == 16 * 2 and (untrained.step == 4).sum() == 16
    torch.testing.assert_close(untrained.noise_level[untrained.step == 4], torch.full((16,), 0.8))


def test_trained_steps_skip_indices_the_spine_jumps_over():
    specs = [StepSpec() for _ in range(5)]
    specs[0] = StepSpec(next_index=3)
    specs[1] = StepSpec("sde", trained=True)  # never visited
    specs[3] = StepSpec("sde", trained=True)
    plan = Plan(grid(5), tuple(specs))
    assert plan.trained_steps() == [3]
    out = rollout(CountingVelocity(), plan, 2, SHAPE)
    assert out.trained.step.tolist() == [3, 3]


@pytest.mark.parametrize("max_batch", [1, 3, 7])
def test_max_batch_chunking_changes_nothing_but_the_batch_sizes(max_batch):
    whole_v, chunked_v = CountingVelocity(), CountingVelocity()
    whole = rollout(whole_v, mixed_plan(), 2, SHAPE, seed=5, max_batch=10_000)
    chunked = rollout(chunked_v, mixed_plan(), 2, SHAPE, seed=5, max_batch=max_batch)
    assert torch.equal(whole.samples, chunked.samples)
    assert torch.equal(whole.transitions.logp, chunked.transitions.logp)
    assert whole.nfe == chunked.nfe and whole_v.rows == chunked_v.rows
    probes = len(torch.unique(whole.probe[whole.probe >= 0]))
    assert whole_v.rows == whole.nfe - probes * (
        len(mixed_plan().tails) - 1
    )  # a probe's tails share its first velocity
    assert max(chunked_v.batch_sizes) <= max_batch
    assert sum(math.ceil(n / max_batch) for n in whole_v.batch_sizes) == chunked_v.calls


# ---------------------------------------------------------------- noise options


def test_share_noise_gives_a_prompts_roots_the_same_start():
    plan = Plan(grid(3), (StepSpec(),) * 3, group_size=3, share_noise=True)
    out = rollout(CountingVelocity(), plan, 2, SHAPE)
    for p in range(2):
        group = out.samples[out.prompt == p]
        assert torch.equal(group, group[:1].expand_as(group))
    assert not torch.allclose(out.samples[out.prompt == 0][0], out.samples[out.prompt == 1][0])


def test_split_noise_scale_zero_makes_siblings_identical():
    plan = tree_plan(3, {1: 3}, trained=(1,), split_noise_scale=0.0)
    out = rollout(CountingVelocity(), plan, 2, SHAPE)
    t = out.transitions
    for p in torch.unique(t.parent).tolist():
        sel = t.x_next[t.parent == p]
        assert len(sel) == 3 and torch.equal(sel, sel[:1].expand_as(sel))


def test_split_noise_keeps_unit_variance_and_correlates_siblings():
    # child noise (xi_0 + s eta_b) / sqrt(1 + s^2): variance 1, sibling correlation 1 / (1 + s^2)
    s = 1.0
    plan = tree_plan(2, {0: 2}, trained=(0,), form="dance_grpo", split_noise_scale=s, split_noise="correlated")
    out = rollout(CountingVelocity(), plan, 400, (4, 4))
    t = out.transitions
    x, sig, sn = t.x.double(), 1.0, 0.5
    v = exact_velocity(t.x, t.sigma, t.prompt).double()
    mean = x + (v + 0.3**2 / (2 * sig) * (x + (1 - sig) * v)) * (sn - sig)
    eps = (t.x_next.double() - mean) / (0.3 * math.sqrt(sig - sn))
    assert abs(eps.var().item() - 1) < 0.05
    first, second = eps[0::2].flatten(), eps[1::2].flatten()
    assert torch.equal(t.parent[0::2], t.parent[1::2])
    corr = torch.corrcoef(torch.stack([first, second]))[0, 1].item()
    assert abs(corr - 1 / (1 + s * s)) < 0.05


def test_scaled_split_noise_is_independent_and_scored_at_the_step_std():
    # BranchGRPO's code: child = mean + s * std * eta_b (eta_b independent), log-prob at std, not s * std
    s = 4.0
    plan = tree_plan(2, {0: 2}, trained=(0,), form="dance_grpo", split_noise_scale=s)
    out = rollout(CountingVelocity(), plan, 400, (4, 4))
    t = out.transitions
    x, sig, sn = t.x.double(), 1.0, 0.5
    v = exact_velocity(t.x, t.sigma, t.prompt).double()
    mean = x + (v + 0.3**2 / (2 * sig) * (x + (1 - sig) * v)) * (sn - sig)
    std = 0.3 * math.sqrt(sig - sn)
    eps = (t.x_next.double() - mean) / std
    assert abs(eps.var().item() - s * s) / (s * s) < 0.05
    corr = torch.corrcoef(torch.stack([eps[0::2].flatten(), eps[1::2].flatten()]))[0, 1].item()
    assert abs(corr) < 0.05
    logp = (-((t.x_next.double() - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)).flatten(1)
    torch.testing.assert_close(t.logp.double(), logp.mean(1), atol=1e-4, rtol=1e-5)


def test_noise_override_and_its_shape_check():
    noise = initial_noise(4)
    a = rollout(CountingVelocity(), chain(3), 4, SHAPE, seed=1, noise=noise)
    b = rollout(CountingVelocity(), chain(3), 4, SHAPE, seed=2, noise=noise)
    assert torch.equal(a.samples, b.samples)  # deterministic plan: the seed only drew the noise
    with pytest.raises(ValueError, match=r"initial noise must have shape \(4, 2, 3\), got \(3, 2, 3\)"):
        rollout(CountingVelocity(), chain(3), 4, SHAPE, noise=noise[:3])
    with pytest.raises(ValueError, match="num_prompts and max_batch must be positive"):
        rollout(CountingVelocity(), chain(3), 0, SHAPE)
    with pytest.raises(ValueError, match="num_prompts and max_batch must be positive"):
        rollout(CountingVelocity(), chain(3), 1, SHAPE, max_batch=0)


# ---------------------------------------------------------------- plan validation


@pytest.mark.parametrize(
    "make,message",
    [
        (
            lambda: Plan(grid(4), (StepSpec(),) * 3),
            r"len\(sigmas\) == len\(steps\) \+ 1, got \(5,\) sigmas for 3 steps",
        ),
        (lambda: Plan(torch.tensor([1.0, 0.5, 0.6, 0.0]), (StepSpec(),) * 3), "decrease strictly"),
        (lambda: Plan(torch.tensor([1.2, 0.5, 0.0]), (StepSpec(),) * 2), "from at most 1"),
        (lambda: Plan(torch.tensor([1.0, 0.5, 0.1]), (StepSpec(),) * 2), "to exactly 0"),
        (lambda: Plan(grid(2), (StepSpec(),) * 2, group_size=0), "group_size must be at least 1, got 0"),
        (lambda: Plan(grid(2), (StepSpec(),) * 2, split_noise_scale=-0.1), "split_noise_scale must be >= 0 or None"),
        (lambda: Plan(grid(2), (StepSpec(),) * 2, tails=()), "at least one tail"),
        (lambda: Plan(grid(2), (StepSpec(),) * 2, tails=(Tail(0),)), "tail stride must be at least 1, got 0"),
        (lambda: Plan(grid(2), (StepSpec(),) * 2, tails=(Tail(1, "rk4"),)), "unknown ODE solver 'rk4'"),
        (
            lambda: Plan(grid(2), (StepSpec(), StepSpec(mode="ddim"))),
            "step 1 of the custom plan: mode must be 'ode' or 'sde', got 'ddim'",
        ),
        (lambda: Plan(grid(2), (StepSpec(solver="rk45"), StepSpec())), "unknown ODE solver 'rk45'"),
        (lambda: Plan(grid(2), (StepSpec("sde", sde="ddpm"), StepSpec())), "unknown SDE form 'ddpm'"),
        (
            lambda: Plan(grid(2), (StepSpec("sde", branch=0), StepSpec())),
            "step 0 of the custom plan: branch must be >= 1 and probes >= 0, got branch=0 probes=0",
        ),
        (lambda: Plan(grid(2), (StepSpec(probes=-1), StepSpec())), "branch must be >= 1 and probes >= 0"),
        (lambda: Plan(grid(2), (StepSpec(branch=2), StepSpec())), "an ODE step is deterministic and cannot branch"),
        (
            lambda: Plan(grid(2), (StepSpec("sde", noise_level=-0.5), StepSpec())),
            r"noise_level must be >= 0 \(0: the deterministic Euler step\), got -0.5",
        ),
        (
            lambda: Plan(grid(2), (StepSpec("sde", noise_level=0.0, branch=2), StepSpec())),
            "step 0 of the custom plan: noise_level 0 makes the step deterministic, so it cannot branch or send probes",
        ),
        (
            lambda: Plan(grid(2), (StepSpec(probes=2, noise_level=0.0), StepSpec())),
            r"cannot branch or send probes \(got branch=1 probes=2\)",
        ),
        (
            lambda: Plan(grid(3), (StepSpec(next_index=4), StepSpec(), StepSpec())),
            r"next_index=4 needs an ODE step and 0 < next_index <= 3",
        ),
        (lambda: Plan(grid(3), (StepSpec(next_index=0), StepSpec(), StepSpec())), "next_index=0 needs an ODE step"),
        (
            lambda: Plan(grid(3), (StepSpec("sde", next_index=2), StepSpec(), StepSpec())),
            "next_index=2 needs an ODE step",
        ),
    ],
)
def test_bad_plans_are_rejected_with_the_field_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_with_steps_revalidates():
    plan = chain(3)
    assert plan.with_steps(group_size=4).group_size == 4
    with pytest.raises(ValueError, match="group_size must be at least 1"):
        plan.with_steps(group_size=0)
    method_plan = Plan(grid(2), (StepSpec(), StepSpec()), method="mine")
    with pytest.raises(ValueError, match="step 1 of the mine plan"):
        method_plan.with_steps(steps=(StepSpec(), StepSpec(branch=3)))


# ---------------------------------------------------------------- DPM-Solver++ history bookkeeping


def dpmpp_2m_by_hand(x, sigmas, prompt):
    """DPM-Solver++(2M) by the paper's algorithm (tests/references.py), float64, with the counting
    field's velocity."""
    return dpmpp_2m_reference(
        lambda x, s: 0.1 * x + 0.01 * prompt + 0.05 * s.view(-1, *[1] * (x.ndim - 1)), x.double(), sigmas
    )


def test_dpmpp_2m_spine_on_a_coarse_sub_grid_matches_the_algorithm():
    steps = 8
    specs = [StepSpec(solver="dpmpp_2m") for _ in range(steps)]
    specs[2] = StepSpec(solver="dpmpp_2m", next_index=5)  # a coarse jump in the middle
    plan = Plan(torch.linspace(0.9, 0.0, steps + 1), tuple(specs), group_size=2)
    noise = initial_noise(4)
    out = rollout(CountingVelocity(), plan, 2, SHAPE, noise=noise)
    visited = plan.visited() + [steps]
    prompt = torch.arange(2).repeat_interleave(2).double().view(-1, 1, 1)
    expected = dpmpp_2m_by_hand(noise, plan.sigmas.double()[visited], prompt)
    torch.testing.assert_close(out.samples[out.root.argsort()].double(), expected, atol=1e-5, rtol=1e-5)


def test_trained_ode_steps_record_deterministic_transitions_and_sample_as_untrained_ones():
    # Deterministic rollouts with any solver (DiffusionNFT samples with DPM-Solver 2M): trained ODE
    # steps leave the samples unchanged and record transitions (no log-probability) at their levels.
    steps = 8
    specs = [StepSpec(solver="dpmpp_2m", trained=i < 4) for i in range(steps)]
    specs[2] = StepSpec(solver="dpmpp_2m", next_index=5, trained=True)  # a trained coarse jump
    plan = Plan(torch.linspace(0.9, 0.0, steps + 1), tuple(specs), group_size=2)
    noise = initial_noise(4)
    out = rollout(CountingVelocity(), plan, 2, SHAPE, noise=noise)
    visited = plan.visited() + [steps]
    prompt = torch.arange(2).repeat_interleave(2).double().view(-1, 1, 1)
    torch.testing.assert_close(
        out.samples[out.root.argsort()].double(),
        dpmpp_2m_by_hand(noise, plan.sigmas.double()[visited], prompt),
        atol=1e-5,
        rtol=1e-5,
    )
    untrained = rollout(
        CountingVelocity(),
        plan.with_steps(steps=tuple(replace(s, trained=False) for s in specs)),
        2,
        SHAPE,
        noise=noise,
    )
    assert torch.equal(out.samples, untrained.samples) and len(untrained.transitions) == 0
    t = out.transitions
    assert sorted(t.step.tolist()) == [0] * 4 + [1] * 4 + [2] * 4  # step 3 is jumped over; 4 chains
    assert torch.isnan(t.logp).all() and torch.all(t.noise_level == 0) and bool(t.trained.all())
    jump = t.step == 2
    torch.testing.assert_close(t.sigma_next[jump], plan.sigmas[5].expand(4))
    torch.testing.assert_close(t.sigma_next[t.step == 0], plan.sigmas[1].expand(4))
    # each transition's x_next is the x of its chain's next recorded state
    for root in range(4):
        mine = out.node_root[t.child] == root
        by_step = {int(k): i for i, k in zip(torch.nonzero(mine).flatten().tolist(), t.step[mine].tolist())}
        assert torch.equal(t.x_next[by_step[0]], t.x[by_step[1]]) and torch.equal(t.x_next[by_step[1]], t.x[by_step[2]])


def test_dpmpp_2m_probe_tails_beside_a_dpmpp_2m_spine_keep_their_own_history():
    # Spine nodes and probe tails (starting from the spine's memory, then with their own) share fronts.
    steps, j = 7, 2
    specs = tuple(
        StepSpec(solver="dpmpp_2m", probes=2, trained=True) if i == j else StepSpec(solver="dpmpp_2m")
        for i in range(steps)
    )
    sig = torch.linspace(0.95, 0.0, steps + 1)
    plan = Plan(sig, specs, tails=(Tail(1, "dpmpp_2m"), Tail(2, "dpmpp_2m")))
    noise = initial_noise(2)
    out = rollout(CountingVelocity(), plan, 2, SHAPE, noise=noise)
    prompt = torch.arange(2).double().view(-1, 1, 1)
    spine = out.probe < 0
    torch.testing.assert_close(
        out.samples[spine][out.root[spine].argsort()].double(),
        dpmpp_2m_by_hand(noise, sig.double(), prompt),
        atol=1e-5,
        rtol=1e-5,
    )
    t = out.transitions
    for i, probe in enumerate(t.child.tolist()):
        for tail, stride in ((0, 1), (1, 2)):
            sub = list(range(j + 1, steps, stride)) + [steps]
            # the tail's solver remembers the data prediction at the spine point the probe left
            parent_x = t.x[i : i + 1].double()
            parent_v = exact_velocity(t.x[i : i + 1], t.sigma[i : i + 1], t.prompt[i : i + 1]).double()
            memory = (parent_x - float(sig[j]) * parent_v, float(sig[j]))
            expected = dpmpp_2m_reference(
                lambda x, s, p=float(t.prompt[i]): 0.1 * x + 0.01 * p + 0.05 * s.view(-1, *[1] * (x.ndim - 1)),
                t.x_next[i : i + 1].double(),
                sig.double()[sub],
                memory,
            )
            got = out.samples[(out.probe == probe) & (out.tail == tail)]
            torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_bf16_rollout_rescores_to_its_stored_logp():
    out = rollout(CountingVelocity(), mixed_plan(), 2, SHAPE, seed=11, dtype=torch.bfloat16)
    assert out.samples.dtype == torch.bfloat16 and out.transitions.x_next.dtype == torch.bfloat16
    scored = score_transitions(CountingVelocity(), out.transitions)
    torch.testing.assert_close(scored.logp, out.transitions.logp, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- rows computed once


def test_distinct_rows_groups_exactly_equal_state_sigma_and_prompt():
    g = torch.Generator().manual_seed(0)
    states = torch.randn(4, *SHAPE, generator=g)
    pick = torch.tensor([0, 1, 0, 2, 0, 3, 1, 1])
    x, sigma, prompt = states[pick].clone(), torch.full((8,), 0.5), torch.tensor([0, 0, 0, 0, 1, 0, 0, 0])
    sigma[7] = 0.25  # same state and prompt as rows 1 and 6, another noise level
    x[3, 0, 0] += 1e-7  # a near copy of state 2 stays its own row
    first, inverse = distinct_rows(x, sigma, prompt)
    reference = {(tuple(r.flatten().tolist()), float(s), int(q)) for r, s, q in zip(x, sigma, prompt)}
    assert len(first) == len(reference) == 6  # {0, 2}, {1, 6} share; 3, 4, 5, 7 are alone
    assert (
        torch.equal(x[first][inverse], x)
        and torch.equal(sigma[first][inverse], sigma)
        and torch.equal(prompt[first][inverse], prompt)
    )


def test_distinct_rows_checks_every_row_when_fingerprints_collide(monkeypatch):
    # With a zero projection every state has the same fingerprint; the exact check must split them.
    monkeypatch.setattr(rollout_module, "_projection", lambda numel, device: torch.zeros(numel, dtype=torch.float64))
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [5.0, 6.0]])
    first, inverse = distinct_rows(x, torch.ones(4), torch.zeros(4, dtype=torch.long))
    assert len(first) == 3 and torch.equal(x[first][inverse], x)


def _every_row_computed(monkeypatch):
    monkeypatch.setattr(
        rollout_module, "distinct_rows", lambda x, sigma, prompt: (torch.arange(len(x)), torch.arange(len(x)))
    )


def test_a_shared_start_is_computed_once_per_prompt_and_changes_nothing(monkeypatch):
    plan = Plan(grid(4), (StepSpec("sde", trained=True),) + (StepSpec(),) * 3, group_size=5, share_noise=True)
    shared_v = CountingVelocity()
    shared = rollout(shared_v, plan, 3, SHAPE, seed=2)
    assert shared_v.rows_at[1.0] == 3  # one row per prompt at the first step, not one per root
    assert shared.nfe == 3 * 5 * 4 and shared_v.rows == shared.nfe - 3 * 4
    _every_row_computed(monkeypatch)
    every_v = CountingVelocity()
    every = rollout(every_v, plan, 3, SHAPE, seed=2)
    assert every_v.rows == every.nfe == shared.nfe
    assert torch.equal(shared.samples, every.samples) and torch.equal(shared.transitions.logp, every.transitions.logp)


def test_rescoring_shares_the_velocity_of_equal_states_and_its_gradient_is_unchanged(monkeypatch):
    plan = Plan(
        grid(3),
        (StepSpec("sde", trained=True), StepSpec("sde", trained=True), StepSpec()),
        group_size=4,
        share_noise=True,
    )
    out = rollout(CountingVelocity(), plan, 2, SHAPE, seed=3)
    t = out.trained
    layer = torch.nn.Linear(SHAPE[-1], SHAPE[-1])

    def velocity(x, sigma, prompt, counter):
        counter.append(x.shape[0])
        return layer(x) * sigma.view(-1, 1, 1) + 0.01 * prompt.view(-1, 1, 1)

    grads, logps = [], []
    for share in (True, False):
        if not share:
            _every_row_computed(monkeypatch)
        rows, layer.weight.grad = [], None
        step = score_transitions(lambda x, s, p: velocity(x, s, p, rows), t)
        step.logp.sum().backward()
        grads.append(layer.weight.grad.clone())
        logps.append(step.logp.detach())
        # step 0: the 4 roots of a prompt start from one state -> 2 rows; step 1: 8 distinct states
        assert sum(rows) == (2 + 8 if share else 16)
    torch.testing.assert_close(logps[0], logps[1], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1])
