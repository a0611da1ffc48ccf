"""Tree credit (BranchGRPO, arXiv 2509.06040): leaf rewards fused up the tree, then z-scored
among the nodes of one group at one depth. Every edge later takes its child's advantage."""

from __future__ import annotations

import torch

from .groups import group_mean_std

FUSION_RULES = ("mean", "max", "min")


def leaf_ancestry(parent: torch.Tensor, leaf_nodes: torch.Tensor) -> torch.Tensor:
    """[K, N] bool: entry (k, n) is True when node k lies on the path from the root to leaf n."""
    parent = torch.as_tensor(parent).long().flatten()
    leaf_nodes = torch.as_tensor(leaf_nodes).long().flatten()
    num_nodes = len(parent)
    if len(leaf_nodes) and (int(leaf_nodes.min()) < 0 or int(leaf_nodes.max()) >= num_nodes):
        raise ValueError(
            f"leaf_nodes must index the {num_nodes} nodes, got values in [{int(leaf_nodes.min())}, {int(leaf_nodes.max())}]"
        )
    if num_nodes and (int(parent.min()) < -1 or int(parent.max()) >= num_nodes):
        raise ValueError(f"parent must be -1 (root) or a node index below {num_nodes}")
    ancestry = torch.zeros(num_nodes, len(leaf_nodes), dtype=torch.bool)
    columns = torch.arange(len(leaf_nodes))
    node = leaf_nodes.clone()
    for _ in range(num_nodes + 1):
        alive = node >= 0
        if not bool(alive.any()):
            return ancestry
        ancestry[node[alive], columns[alive]] = True
        node = torch.where(alive, parent[node.clamp_min(0)], node)
    raise ValueError("parent links contain a cycle")


def fuse_tree_rewards(
    parent: torch.Tensor,
    leaf_nodes: torch.Tensor,
    leaf_rewards: torch.Tensor,
    *,
    rule: str = "mean",
    edge_logp: torch.Tensor | None = None,
    beta: float = 0.0,
) -> torch.Tensor:
    """[K] each node's value from the leaves below it; NaN for a node with no leaf below.

    "mean" is BranchGRPO's fusion: with beta = 0 the mean of the leaves below (its default); with
    beta != 0 its probability-weighted form, one softmax per split: a node's value is the
    softmax(beta * log-prob of the edge into each child)-weighted sum of its children's values,
    and a node with one child takes that child's value (`edge_logp` [K]: the log-probability of
    the transition into each node). "max" and "min" are optimistic/pessimistic extras.
    """
    if rule not in FUSION_RULES:
        raise ValueError(f"rule must be one of {FUSION_RULES}, got {rule!r}")
    leaf_rewards = torch.as_tensor(leaf_rewards, dtype=torch.float64).flatten()
    ancestry = leaf_ancestry(parent, leaf_nodes)  # [K, N]
    if leaf_rewards.shape[0] != ancestry.shape[1]:
        raise ValueError(f"got {leaf_rewards.shape[0]} leaf rewards for {ancestry.shape[1]} leaves")
    if not bool(torch.isfinite(leaf_rewards).all()):
        raise ValueError("leaf rewards must be finite")
    has_leaf = ancestry.any(dim=1)
    if rule == "max":
        values = torch.where(ancestry, leaf_rewards, -torch.inf).amax(dim=1)
    elif rule == "min":
        values = torch.where(ancestry, leaf_rewards, torch.inf).amin(dim=1)
    elif beta == 0:
        values = (ancestry * leaf_rewards).sum(dim=1) / ancestry.sum(dim=1).clamp_min(1)
    else:
        if edge_logp is None:
            raise ValueError("beta != 0 weights each split's children by their edge log-probability: pass edge_logp")
        values = split_weighted_values(parent, leaf_nodes, leaf_rewards, edge_logp, beta)
    return torch.where(has_leaf, values, torch.nan)


def split_weighted_values(
    parent: torch.Tensor, leaf_nodes: torch.Tensor, leaf_rewards: torch.Tensor, edge_logp: torch.Tensor, beta: float
) -> torch.Tensor:
    """[K] values fused bottom-up, each split's children weighted by softmax(beta * edge log-prob)."""
    parent = torch.as_tensor(parent).long().flatten()
    edge_logp = torch.as_tensor(edge_logp, dtype=torch.float64).flatten()
    if len(edge_logp) != len(parent):
        raise ValueError(f"edge_logp needs one entry per node ({len(parent)}), got {len(edge_logp)}")
    values = torch.full((len(parent),), torch.nan, dtype=torch.float64)
    values[torch.as_tensor(leaf_nodes).long().flatten()] = leaf_rewards
    children: dict[int, list[int]] = {}
    for node, up in enumerate(parent.tolist()):
        if up >= 0:
            children.setdefault(up, []).append(node)
    for node in sorted(children, key=lambda n: -depth_of(parent, n)):
        kids = [c for c in children[node] if not bool(torch.isnan(values[c]))]
        if not kids:
            continue
        kids_t = torch.tensor(kids)
        weights = torch.softmax(beta * edge_logp[kids_t], dim=0)
        values[node] = (weights * values[kids_t]).sum()
    return values


def depth_of(parent: torch.Tensor, node: int) -> int:
    """The number of edges from the root to `node`."""
    depth = 0
    while int(parent[node]) >= 0:
        node, depth = int(parent[node]), depth + 1
    return depth


def tree_advantages(
    parent: torch.Tensor,
    depth: torch.Tensor,
    group_ids: torch.Tensor,
    leaf_nodes: torch.Tensor,
    leaf_rewards: torch.Tensor,
    *,
    rule: str = "mean",
    edge_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    unbiased: bool = False,
    eps: float = 1e-4,
    min_std: float = 0.0,
) -> torch.Tensor:
    """[K] per-node advantages: fused values z-scored among the nodes of one group (prompt) at one
    depth, (value - mean) / (std + eps). Nodes alone at their depth, nodes whose depth-mates'
    std is at most `min_std` (BranchGRPO's code: below 1e-6), and nodes with no leaf below get 0."""
    values = fuse_tree_rewards(parent, leaf_nodes, leaf_rewards, rule=rule, edge_logp=edge_logp, beta=beta)
    depth = torch.as_tensor(depth).long().flatten()
    group_ids = torch.as_tensor(group_ids).long().flatten()
    if not (len(depth) == len(group_ids) == len(values)):
        raise ValueError(
            f"parent, depth and group_ids need one entry per node, got {len(values)}, {len(depth)}, {len(group_ids)}"
        )
    advantages = torch.zeros_like(values)
    valued = torch.isfinite(values)
    if not bool(valued.any()):
        return advantages.float()
    key = torch.stack([group_ids[valued], depth[valued]], dim=1)
    _, dense = torch.unique(key, dim=0, return_inverse=True)
    mean, std = group_mean_std(values[valued], dense, unbiased=False)
    if unbiased:
        _, std = group_mean_std(values[valued], dense, unbiased=True)
    centred = values[valued] - mean
    flat = (std <= min_std) | ~torch.isfinite(std)  # a lone node (unbiased std NaN) or (near-)identical values
    advantages[valued] = torch.where(flat, torch.zeros_like(centred), centred / (std + eps))
    return advantages.float()
