"""Credit: from the rewards of a rollout's samples to an advantage per SDE transition.

Three rules cover every method: independent chains (Flow-GRPO, DanceGRPO, MixGRPO), trees with
shared prefixes (BranchGRPO, Dynamic-TreeRPO) and probes off a deterministic spine (TempFlow-GRPO,
G2RPO). A method names its rule and options (`Method.credit_rule`, `Method.credit_options`);
`assign_credit` applies it. `learning_signal` is the one place where groups without signal are
dropped and advantages are clipped before the update.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from flowrl.registry import Registry
from flowrl.samplers.rollout import Rollout

from .groups import zero_variance_mask
from .registry import ADVANTAGES, get_advantage
from .steps import multi_granularity
from .tree import tree_advantages

CREDIT_RULES = Registry("credit rule")


@dataclass
class Credit:
    """Rewards turned into per-transition learning signal, aligned with rollout.transitions.

    advantages: [M]; mask: [M] bool, the transitions that get gradients (trained and not pruned);
    weight: [M] per-transition loss weight; stats: scalars to log.
    """

    advantages: torch.Tensor
    mask: torch.Tensor
    weight: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)


def assign_credit(method: Any, rollout: Rollout, rewards: torch.Tensor, config: Any, iteration: int = 0) -> Credit:
    """The credit of `method` (a flowrl.samplers Method) for a rollout's rewards at `iteration`."""
    rule = CREDIT_RULES.lookup(method.credit_rule)
    return rule(rollout, rewards, **method.credit_options(config, iteration))


def check_credit(method: Any, config: Any) -> None:
    """Fail as assign_credit would on the method's credit options, before any model loads: an
    unknown estimator, options it does not take, or an estimator the image trainer cannot feed."""
    options = method.credit_options(config, 0)
    if method.credit_rule != "chain":
        return
    if getattr(config, "group_size", 2) < 2:
        raise ValueError(
            f"group_size={config.group_size}: a prompt's samples are compared with each other, so one sample "
            "has nothing to compare with and every advantage would be 0 (nothing trains); use 2 or more"
        )
    estimator = options["estimator"]
    entry = ADVANTAGES.entry(estimator)
    if entry.traits.get("stateful"):
        raise ValueError(
            f"advantage estimator {estimator!r} keeps per-prompt state across iterations, which the image "
            f"trainer's group credit does not carry; use one of {chain_estimators()}"
        )
    ADVANTAGES.configure(estimator, options["estimator_options"])


def chain_estimators() -> list[str]:
    """The estimators a chain method can use (every registered one without state)."""
    return [name for name, entry in ADVANTAGES.entries.items() if not entry.traits.get("stateful")]


def checked_rewards(rollout: Rollout, rewards: torch.Tensor) -> torch.Tensor:
    """rewards as float32 [N] on the CPU, one per sample, finite where the credit uses them."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32).flatten().cpu()
    if rewards.shape[0] != rollout.samples.shape[0]:
        raise ValueError(f"got {rewards.shape[0]} rewards for {rollout.samples.shape[0]} samples")
    used = rollout.reward_mask
    if not bool(torch.isfinite(rewards[used]).all()):
        bad = torch.nonzero(~torch.isfinite(rewards) & used).flatten().tolist()
        raise ValueError(f"rewards of samples {bad[:10]} are not finite")
    return rewards


def transition_credit(
    rollout: Rollout, advantages: torch.Tensor, keep: torch.Tensor | None = None, stats: dict | None = None
) -> Credit:
    transitions = rollout.transitions
    device = transitions.logp.device
    mask = transitions.trained.cpu().clone()
    if keep is not None:
        mask &= keep
    return Credit(advantages.to(device), mask.to(device), transitions.weight.clone(), stats or {})


def reward_stats(rewards: torch.Tensor) -> dict[str, float]:
    return {"reward/mean": float(rewards.mean()), "reward/std": float(rewards.std(unbiased=False))}


def leaf_of_node(rollout: Rollout) -> torch.Tensor:
    """[K] the sample index below each node when the node has exactly one leaf below it, else -1."""
    count = torch.zeros(len(rollout.node_parent), dtype=torch.long)
    leaf = torch.full((len(rollout.node_parent),), -1, dtype=torch.long)
    for sample, node in enumerate(rollout.sample_node.tolist()):
        while node >= 0:
            count[node] += 1
            leaf[node] = sample
            node = int(rollout.node_parent[node])
    return torch.where(count == 1, leaf, -1)


@dataclass
class ChainOptions:
    estimator: str = "grpo"
    estimator_options: dict = field(default_factory=dict)
    step_fraction: float | None = None  # keep this share of each sample's trained steps (DanceGRPO); None: all
    step_seed: int = 0  # of that choice, with the sample's global root id


@CREDIT_RULES.register("chain", options=ChainOptions)
def chain_credit(
    rollout: Rollout,
    rewards: torch.Tensor,
    estimator: str = "grpo",
    estimator_options: dict | None = None,
    step_fraction: float | None = None,
    step_seed: int = 0,
) -> Credit:
    """Independent chains: each transition gets the group-normalised reward of the chain's leaf.
    `step_fraction`: each sample keeps int(fraction * its trained steps) of them, a random choice
    seeded by `step_seed` and its global root (the same on every process and world size)."""
    rewards = checked_rewards(rollout, rewards)
    leaf = leaf_of_node(rollout)
    child_leaf = leaf[rollout.transitions.child.cpu()]
    if bool((child_leaf < 0).any()):
        raise ValueError("chain credit needs unbranched chains; this rollout branches (use tree credit)")
    sample_advantage = get_advantage(estimator)(rewards, rollout.prompt, **(estimator_options or {}))  # [N]
    keep = None if step_fraction is None else steps_per_sample(rollout, child_leaf, step_fraction, step_seed)
    return transition_credit(rollout, sample_advantage[child_leaf], keep, stats=reward_stats(rewards))


def steps_per_sample(rollout: Rollout, child_leaf: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """[M] bool: for each sample, int(fraction * n) of its n trained transitions, chosen by a random
    permutation of them (DanceGRPO's per-sample timestep choice)."""
    trained = rollout.transitions.trained.cpu()
    keep = torch.zeros(len(trained), dtype=torch.bool)
    for sample in child_leaf[trained].unique().tolist():
        rows = torch.nonzero(trained & (child_leaf == sample)).flatten()
        generator = torch.Generator().manual_seed(seed * 1_000_033 + int(rollout.root[sample]))
        keep[rows[torch.randperm(len(rows), generator=generator)[: int(len(rows) * fraction)]]] = True
    return keep


def edge_logp(rollout: Rollout) -> torch.Tensor:
    """[K] the log-probability of the SDE transition into each node (0 where none leads in)."""
    step_logp = torch.zeros(len(rollout.node_parent))
    step_logp[rollout.transitions.child.cpu()] = rollout.transitions.logp.float().cpu()
    return step_logp


def pruned_depth_steps(depths: tuple[int, ...], interval: int, stop: int, iteration: int) -> set[int]:
    """BranchGRPO's depth pruning: the grid steps whose transitions lose their gradients at
    `iteration` (0-based). The child depths `depths` slide one depth shallower every `interval`
    iterations until the shallowest reaches `stop`; a transition at step s has child depth s + 1."""
    if not depths:
        return set()
    shift = min((iteration + 1) // interval, max(0, min(depths) - stop))
    return {d - 1 - shift for d in depths}


def width_pruned(rollout: Rollout, rewards: torch.Tensor, fraction: float) -> torch.Tensor:
    """[M] bool, BranchGRPO's width pruning: below the last split, of each prompt's leaves only the
    best and worst keep their transitions, k = max(2, int(fraction * n)) of n leaves (k // 2 best,
    the rest worst); the last split's own transitions always keep theirs."""
    transitions = rollout.transitions
    splits = [i for i, spec in enumerate(rollout.plan.steps) if spec.branch > 1]
    keep = torch.ones(len(transitions), dtype=torch.bool)
    if not splits:
        return keep
    kept_samples = torch.zeros(len(rewards), dtype=torch.bool)
    for prompt in rollout.prompt.unique().tolist():
        members = torch.nonzero(rollout.prompt == prompt).flatten()
        order = members[torch.argsort(rewards[members], stable=True, descending=True)]
        k = min(len(order), max(2, int(fraction * len(order))))
        best = k // 2
        kept_samples[order[:best]] = True
        kept_samples[order[len(order) - (k - best) :]] = True
    leaf = leaf_of_node(rollout)[transitions.child.cpu()]
    below = transitions.step.cpu() > max(splits)
    return ~below | (leaf < 0) | kept_samples[leaf.clamp_min(0)]


@dataclass
class TreeOptions:
    beta: float = 0.0  # each split's children weighted by softmax(beta * edge log-prob); 0: plain mean of leaves
    unbiased: bool = True  # the std of each depth's z-score with n - 1 (BranchGRPO's code)
    eps: float = 1e-8
    min_std: float = 1e-6  # depths whose std is at most this get advantage 0
    width_pruning: float = 0.0  # share of leaves below the last split that keep gradients (0: off)
    depth_pruning: tuple[int, ...] = ()  # child depths whose transitions lose gradients (empty: off)
    depth_interval: int = 30  # ... sliding one depth shallower every this many iterations
    depth_stop: int = 0  # ... until the shallowest reaches this depth
    iteration: int = 0


@CREDIT_RULES.register("tree", options=TreeOptions)
def tree_credit(
    rollout: Rollout,
    rewards: torch.Tensor,
    beta: float = 0.0,
    width_pruning: float = 0.0,
    depth_pruning: tuple[int, ...] = (),
    depth_interval: int = 30,
    depth_stop: int = 0,
    iteration: int = 0,
    unbiased: bool = True,
    eps: float = 1e-8,
    min_std: float = 1e-6,
) -> Credit:
    """BranchGRPO credit: leaf rewards fused up the tree, z-scored among the nodes of a prompt at
    each depth; each transition gets its child's advantage. Width pruning keeps gradients below the
    last split only for the best and worst leaves; depth pruning drops the transitions into a
    window of depths that slides toward the root (`pruned_depth_steps`)."""
    rewards = checked_rewards(rollout, rewards)
    node_advantage = tree_advantages(
        parent=rollout.node_parent,
        depth=rollout.node_index,
        group_ids=rollout.node_prompt,
        leaf_nodes=rollout.sample_node,
        leaf_rewards=rewards,
        edge_logp=edge_logp(rollout) if beta != 0 else None,
        beta=beta,
        unbiased=unbiased,
        eps=eps,
        min_std=min_std,
    )  # [K]
    transitions = rollout.transitions
    child = transitions.child.cpu()
    keep = torch.ones(len(transitions), dtype=torch.bool)
    if width_pruning > 0:
        keep &= width_pruned(rollout, rewards, width_pruning)
    pruned_steps = pruned_depth_steps(tuple(depth_pruning), depth_interval, depth_stop, iteration)
    if pruned_steps:
        keep &= ~torch.isin(transitions.step.cpu(), torch.tensor(sorted(pruned_steps)))
    trained = transitions.trained.cpu()
    pruned = float(1 - keep[trained].float().mean()) if bool(trained.any()) else 0.0
    return transition_credit(rollout, node_advantage[child], keep, {**reward_stats(rewards), "pruned_fraction": pruned})


@dataclass
class ProbeOptions:
    unbiased: bool = False  # each granularity's z-score with the n - 1 std
    eps: float = 1e-4  # added to that std


@CREDIT_RULES.register("probe", options=ProbeOptions)
def probe_credit(rollout: Rollout, rewards: torch.Tensor, unbiased: bool = False, eps: float = 1e-4) -> Credit:
    """TempFlow-GRPO / G2RPO credit: probes that left the same spine node form a group; each tail
    granularity is z-scored within the group and the probe's advantage is their sum (one tail:
    the plain z-score)."""
    rewards = checked_rewards(rollout, rewards)
    used = torch.nonzero(rollout.probe >= 0).flatten()
    probe = rollout.probe[used]
    parent = rollout.node_parent[probe]  # the spine node the group shares
    tails = rollout.tail[used]
    unique_probes, probe_row = torch.unique(probe, return_inverse=True)
    per_tail = {}
    for t in tails.unique().tolist():
        values = torch.full((len(unique_probes),), float("nan"))
        values[probe_row[tails == t]] = rewards[used][tails == t]
        per_tail[f"tail{t}"] = values
    group_of_probe = torch.zeros(len(unique_probes), dtype=torch.long)
    group_of_probe[probe_row] = parent
    probe_advantage = multi_granularity(per_tail, group_of_probe, unbiased=unbiased, eps=eps)  # [P]
    node_advantage = torch.zeros(len(rollout.node_parent))
    node_advantage[unique_probes] = probe_advantage
    child = rollout.transitions.child.cpu()
    is_probe_child = torch.zeros(len(rollout.node_parent), dtype=torch.bool)
    is_probe_child[unique_probes] = True
    return transition_credit(rollout, node_advantage[child], is_probe_child[child], reward_stats(rewards[used]))


def clip_advantages(advantages: torch.Tensor, bound: float) -> torch.Tensor:
    """Advantages clamped to [-bound, bound] (Flow-GRPO uses 5); bound 0: unchanged."""
    if bound < 0:
        raise ValueError(f"the advantage clip must be >= 0 (0: none), got {bound!r}")
    return advantages.clamp(-bound, bound) if bound > 0 else advantages


@dataclass
class LearningSignal:
    """What the update trains on, for one process's block of the global batch's transitions."""

    keep: torch.Tensor  # [M_local] bool: transitions that get gradients
    advantages: torch.Tensor  # [M_kept] clipped
    weights: torch.Tensor  # [M_kept]
    constant_prompts: torch.Tensor  # global prompt ids whose scored rewards are all equal


def learning_signal(
    credit: Credit,
    rollout: Rollout,
    rewards: torch.Tensor,
    local: slice,
    *,
    invalid_prompts: torch.Tensor,
    drop_zero_variance: bool,
    clip: float,
) -> LearningSignal:
    """The transitions of `local` (this process's block of the global `rollout`) that train, and
    their clipped advantages: credit's mask, minus the groups whose rewards tie (DAPO's dynamic
    sampling, when `drop_zero_variance`) and the groups with an invalid reward."""
    scored = torch.nonzero(rollout.reward_mask).flatten()
    constant = zero_variance_mask(rewards[scored], rollout.prompt[scored])
    constant_prompts = rollout.prompt[scored][constant].unique()
    prompt_of_transition = rollout.transitions.prompt[local]
    keep = credit.mask.cpu()[local].clone()
    if drop_zero_variance and len(constant_prompts):
        keep &= ~torch.isin(prompt_of_transition, constant_prompts)
    keep &= ~torch.isin(prompt_of_transition, invalid_prompts)
    advantages = clip_advantages(credit.advantages.cpu()[local][keep], clip)
    return LearningSignal(keep, advantages, credit.weight.cpu()[local][keep], constant_prompts)
