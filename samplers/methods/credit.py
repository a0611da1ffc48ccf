"""Credit rules: from the rewards of a rollout's samples to an advantage per SDE transition.

Three shapes cover every method: independent chains (Flow-GRPO, DanceGRPO, MixGRPO), trees with
shared prefixes (BranchGRPO, Dynamic-TreeRPO) and probes off a deterministic spine (TempFlow-GRPO,
G2RPO). The formulas themselves live in flowrl.advantage; this module only maps the rollout's
structure onto them.
"""

from __future__ import annotations

import torch

from ..rollout import Rollout
from ..sde import sde_mean_std
from .registry import Credit


def _check_rewards(rollout: Rollout, rewards: torch.Tensor) -> torch.Tensor:
    rewards = torch.as_tensor(rewards, dtype=torch.float32).flatten().cpu()
    if rewards.shape[0] != rollout.samples.shape[0]:
        raise ValueError(f"got {rewards.shape[0]} rewards for {rollout.samples.shape[0]} samples")
    used = rollout.reward_mask
    if not bool(torch.isfinite(rewards[used]).all()):
        bad = torch.nonzero(~torch.isfinite(rewards) & used).flatten().tolist()
        raise ValueError(f"rewards of samples {bad[:10]} are not finite")
    return rewards


def _credit(rollout: Rollout, advantages: torch.Tensor, keep: torch.Tensor | None = None, stats: dict | None = None) -> Credit:
    transitions = rollout.transitions
    device = transitions.logp.device
    mask = transitions.trained.cpu().clone()
    if keep is not None:
        mask &= keep
    return Credit(advantages.to(device), mask.to(device), transitions.weight.clone(), stats or {})


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


def chain_credit(rollout: Rollout, rewards: torch.Tensor, estimator: str = "grpo", **options) -> Credit:
    """Independent chains: each transition gets the group-normalised reward of the chain's leaf."""
    from flowrl.advantage import get_advantage

    rewards = _check_rewards(rollout, rewards)
    leaf = leaf_of_node(rollout)
    child_leaf = leaf[rollout.transitions.child.cpu()]
    if bool((child_leaf < 0).any()):
        raise ValueError("chain credit needs unbranched chains; this rollout branches (use tree credit)")
    sample_advantage = get_advantage(estimator)(rewards, rollout.prompt, **options)  # [N]
    return _credit(rollout, sample_advantage[child_leaf], stats={"reward/mean": float(rewards.mean()), "reward/std": float(rewards.std(unbiased=False))})


def path_logp(rollout: Rollout) -> torch.Tensor:
    """[K] the summed log-probability of the SDE transitions from the root to each node."""
    step_logp = torch.zeros(len(rollout.node_parent))
    step_logp[rollout.transitions.child.cpu()] = rollout.transitions.logp.float().cpu()
    total = torch.zeros_like(step_logp)
    for node in range(len(total)):  # parents always precede their children
        parent = int(rollout.node_parent[node])
        total[node] = step_logp[node] + (total[parent] if parent >= 0 else 0.0)
    return total


def tree_credit(
    rollout: Rollout,
    rewards: torch.Tensor,
    beta: float = 0.0,
    width_pruning: int = 0,
    depth_pruning: int = 0,
    depth_interval: int = 30,
    iteration: int = 0,
) -> Credit:
    """BranchGRPO credit: leaf rewards fused up the tree, z-scored among the nodes of a prompt at
    each depth; each transition gets its child's advantage. Width pruning keeps gradients below the
    last split only for the `width_pruning` best and worst leaves of each prompt; depth pruning drops
    a window of `depth_pruning` consecutive depths that slides every `depth_interval` iterations.
    """
    from flowrl.advantage import tree_advantages

    rewards = _check_rewards(rollout, rewards)
    node_advantage = tree_advantages(
        parent=rollout.node_parent,
        depth=rollout.node_index,
        group_ids=rollout.node_prompt,
        leaf_nodes=rollout.sample_node,
        leaf_rewards=rewards,
        path_logp=path_logp(rollout) if beta != 0 else None,
        beta=beta,
    )  # [K]
    transitions = rollout.transitions
    child = transitions.child.cpu()
    step = transitions.step.cpu()
    keep = torch.ones(len(transitions), dtype=torch.bool)
    if width_pruning > 0:
        kept_samples = torch.zeros(len(rewards), dtype=torch.bool)
        for prompt in rollout.prompt.unique().tolist():
            members = torch.nonzero(rollout.prompt == prompt).flatten()
            order = members[torch.argsort(rewards[members], stable=True)]
            kept_samples[order[:width_pruning]] = True
            kept_samples[order[-width_pruning:]] = True
        leaf = leaf_of_node(rollout)[child]  # transitions below the last split have a single leaf
        keep &= (leaf < 0) | kept_samples[leaf.clamp_min(0)]
    if depth_pruning > 0:
        steps = rollout.plan.num_steps
        start = (iteration // depth_interval) % max(1, steps - depth_pruning + 1)
        keep &= ~((step >= start) & (step < start + depth_pruning))
    stats = {"reward/mean": float(rewards.mean()), "reward/std": float(rewards.std(unbiased=False)), "pruned_fraction": float(1 - keep[transitions.trained.cpu()].float().mean()) if bool(transitions.trained.any()) else 0.0}
    return _credit(rollout, node_advantage[child], keep, stats)


def probe_credit(rollout: Rollout, rewards: torch.Tensor) -> Credit:
    """TempFlow-GRPO / G2RPO credit: probes that left the same spine node form a group; each tail
    granularity is z-scored within the group and the probe's advantage is their sum (one tail:
    the plain z-score)."""
    from flowrl.advantage import multi_granularity

    rewards = _check_rewards(rollout, rewards)
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
    probe_advantage = multi_granularity(per_tail, group_of_probe)  # [P]
    node_advantage = torch.zeros(len(rollout.node_parent))
    node_advantage[unique_probes] = probe_advantage
    child = rollout.transitions.child.cpu()
    is_probe_child = torch.zeros(len(rollout.node_parent), dtype=torch.bool)
    is_probe_child[unique_probes] = True
    return _credit(rollout, node_advantage[child], is_probe_child[child], {"reward/mean": float(rewards[used].mean()), "reward/std": float(rewards[used].std(unbiased=False))})


def noise_aware_weights(sigmas: torch.Tensor, steps: list[int], form: str, noise_level: float) -> dict[int, float]:
    """TempFlow-GRPO's step weights: proportional to each step's transition std, mean 1 over `steps`."""
    from flowrl.advantage import noise_aware_step_weights

    stds = []
    for i in steps:
        _, std = sde_mean_std(torch.zeros(1, 1), torch.zeros(1, 1), sigmas[i], sigmas[i + 1], form, noise_level)
        stds.append(float(std))
    weights = noise_aware_step_weights(torch.tensor(stds))
    return {i: float(w) for i, w in zip(steps, weights)}
