"""Splitting a batch's roots over processes, and joining the processes' rollouts for credit.

A global batch is num_prompts x group_size roots, numbered prompt-major. Each process runs a
contiguous shard of them (so a group may straddle two processes), each root with its own seed, so
the samples do not depend on the number of processes. Credit needs every member of a group:
`rollout_metadata` strips a rollout to the small tensors credit reads, and `merge_rollouts` joins
the processes' metadata into one rollout with global prompt, root and node ids.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .rollout import Rollout, Transitions


@dataclass
class Shard:
    """One process's part of a global batch.

    prompts: [P] global prompt indices present on this process (sorted); root_prompt: [R] index
    into `prompts` of each local root; roots: [R] global root ids.
    """

    prompts: torch.Tensor
    root_prompt: torch.Tensor
    roots: torch.Tensor


def shard_roots(num_prompts: int, group_size: int, world: int, rank: int) -> Shard:
    """The contiguous block of the num_prompts * group_size roots that process `rank` runs."""
    total = num_prompts * group_size
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world} processes")
    if total % world:
        raise ValueError(
            f"{num_prompts} prompts x group {group_size} = {total} samples do not split evenly over {world} processes; choose prompts_per_iteration so that prompts x group is a multiple of {world}"
        )
    per = total // world
    roots = torch.arange(rank * per, (rank + 1) * per)
    prompts, root_prompt = torch.unique(roots // group_size, return_inverse=True)
    return Shard(prompts, root_prompt, roots)


def seeded_noise(seeds: list[int], sample_shape: tuple[int, ...]) -> torch.Tensor:
    """[len(seeds), *sample_shape] standard normal rows, row i from a generator seeded seeds[i], so
    row i depends on seeds[i] only: evaluation images, and the shared initial noise of a group
    split over processes (give its roots one seed)."""
    if not seeds:  # e.g. no kept transitions when every group's rewards tie
        return torch.empty(0, *sample_shape)
    return torch.stack([torch.randn(*sample_shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def rollout_metadata(result: Rollout) -> Rollout:
    """The rollout without its sample and state tensors (kept as [N, 0] / [M, 0]), on the CPU."""
    t = result.transitions
    small = {name: getattr(t, name).cpu() for name in t.__dataclass_fields__ if name not in ("x", "x_next")}
    empty = torch.empty(len(t), 0)
    transitions = Transitions(x=empty, x_next=empty, **small)
    fields = {name: getattr(result, name) for name in result.__dataclass_fields__}
    fields = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in fields.items()}
    fields.update(samples=torch.empty(len(result.samples), 0), transitions=transitions)
    return Rollout(**fields)


def merge_rollouts(parts: list[Rollout], prompts: list[torch.Tensor], roots: list[torch.Tensor]) -> Rollout:
    """One rollout from the processes' rollouts (usually their metadata).

    prompts[i] maps part i's local prompt indices to global ones, roots[i] its local root ids to
    global ones; node ids are offset so they stay unique. Samples and transitions keep the parts'
    order, so part i's transitions are a contiguous block of the result.
    """
    if not parts:
        raise ValueError("merge_rollouts needs at least one rollout")
    offset = 0
    pieces: list[Rollout] = []
    for part, prompt_map, root_map in zip(parts, prompts, roots, strict=True):
        prompt_map, root_map = torch.as_tensor(prompt_map).cpu(), torch.as_tensor(root_map).cpu()

        def node(ids: torch.Tensor, offset=offset) -> torch.Tensor:
            ids = ids.cpu()
            return torch.where(ids >= 0, ids + offset, ids)

        t = part.transitions
        transitions = replace(t, parent=node(t.parent), child=node(t.child), prompt=prompt_map[t.prompt.cpu()])
        pieces.append(
            replace(
                part,
                sample_node=node(part.sample_node),
                prompt=prompt_map[part.prompt.cpu()],
                root=root_map[part.root.cpu()],
                probe=node(part.probe),
                node_parent=node(part.node_parent),
                node_root=root_map[part.node_root.cpu()],
                node_prompt=prompt_map[part.node_prompt.cpu()],
                transitions=transitions,
            )
        )
        offset += len(part.node_parent)
    tensor_fields = [k for k in Rollout.__dataclass_fields__ if k not in ("transitions", "nfe", "plan")]
    merged = {k: torch.cat([getattr(p, k).cpu() for p in pieces]) for k in tensor_fields}
    transitions = Transitions(
        **{k: torch.cat([getattr(p.transitions, k).cpu() for p in pieces]) for k in Transitions.__dataclass_fields__}
    )
    return Rollout(**merged, transitions=transitions, nfe=sum(p.nfe for p in pieces), plan=parts[0].plan)
