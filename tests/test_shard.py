"""Sharding a batch's roots over processes: the shards' rollouts, merged, give the same samples
and the same credit as one process running the whole batch."""

import pytest
import torch

from conftest import MISSION, SMALL
from flowrl.advantage import assign_credit
from flowrl.samplers.methods import get_method
from flowrl.samplers.rollout import rollout
from flowrl.samplers.shard import merge_rollouts, rollout_metadata, seeded_noise, shard_roots

PROMPTS = 2


def velocity(x, sigma, prompt):
    return 0.5 * x + 0.2 * prompt.view(-1, *[1] * (x.ndim - 1)).float() * sigma.view(-1, *[1] * (x.ndim - 1))


def reward(samples, prompt):
    return (samples.flatten(1).mean(1) - 0.1 * prompt.float()) ** 2


def by_root(root: torch.Tensor) -> torch.Tensor:
    """Order that groups rows by root, keeping the rows of one root in their original order."""
    return torch.argsort(root, stable=True)


def test_shard_roots_covers_the_batch_once_and_splits_groups_where_needed():
    shards = [shard_roots(3, 4, 4, r) for r in range(4)]
    roots = torch.cat([s.roots for s in shards])
    assert torch.equal(roots, torch.arange(12))
    # 3 roots per process: process 1 holds the last root of prompt 0 and two of prompt 1.
    assert shards[1].prompts.tolist() == [0, 1] and shards[1].root_prompt.tolist() == [0, 1, 1]
    for s in shards:
        assert torch.equal(s.prompts[s.root_prompt], s.roots // 4)
    with pytest.raises(ValueError, match=r"3 prompts x group 4 = 12 samples do not split evenly over 5"):
        shard_roots(3, 4, 5, 0)


@pytest.mark.parametrize("name", MISSION)
def test_sharded_rollouts_merge_to_the_single_process_result(name):
    method = get_method(name)
    config = method.configure(**SMALL[name])
    plan = method.plan(config)
    group = plan.group_size
    seeds = [1000 + 17 * g for g in range(PROMPTS * group)]
    # Shared initial noise (DanceGRPO): one seed per prompt, given to each of its roots.
    noise = seeded_noise([99 + g // group for g in range(PROMPTS * group)], (2, 3, 3)) if plan.share_noise else None
    whole = rollout(velocity, plan, PROMPTS, (2, 3, 3), root_seeds=seeds, noise=noise)
    whole_rewards = reward(whole.samples, whole.prompt)
    whole_credit = assign_credit(method, whole, whole_rewards, config)

    # Every split of the roots into equal shards, including ones that cut a group in two.
    for world in [w for w in range(2, PROMPTS * group + 1) if PROMPTS * group % w == 0]:
        parts, prompt_maps, root_maps, samples, rewards = [], [], [], [], []
        for rank in range(world):
            shard = shard_roots(PROMPTS, group, world, rank)

            def local_velocity(x, sigma, prompt, shard=shard):
                return velocity(x, sigma, shard.prompts[prompt])

            part = rollout(
                local_velocity,
                plan,
                len(shard.prompts),
                (2, 3, 3),
                root_prompt=shard.root_prompt,
                root_seeds=[seeds[g] for g in shard.roots],
                noise=None if noise is None else noise[shard.roots],
            )
            samples.append(part.samples)
            rewards.append(reward(part.samples, shard.prompts[part.prompt]))
            parts.append(rollout_metadata(part))
            prompt_maps.append(shard.prompts)
            root_maps.append(shard.roots)
        merged = merge_rollouts(parts, prompt_maps, root_maps)
        merged_rewards = torch.cat(rewards)
        merged_credit = assign_credit(method, merged, merged_rewards, config)

        # The same samples, root by root: a root's noise does not depend on the batch around it.
        assert torch.equal(torch.cat(samples)[by_root(merged.root)], whole.samples[by_root(whole.root)])
        assert torch.equal(merged.prompt[by_root(merged.root)], whole.prompt[by_root(whole.root)])
        assert merged.nfe == whole.nfe
        # The same credit per transition (matched by the root each transition descends from).
        t_whole = by_root(whole.node_root[whole.transitions.child])
        t_merged = by_root(merged.node_root[merged.transitions.child])
        assert torch.equal(merged.transitions.step[t_merged], whole.transitions.step[t_whole])
        assert torch.equal(merged_credit.mask[t_merged], whole_credit.mask[t_whole])
        keep = whole_credit.mask[t_whole]
        torch.testing.assert_close(
            merged_credit.advantages[t_merged][keep], whole_credit.advantages[t_whole][keep], rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(merged_credit.weight[t_merged], whole_credit.weight[t_whole])


def test_root_seeds_reproduce_the_default_generator_layout_only_when_asked():
    method = get_method("flow_grpo")
    plan = method.plan(method.configure(num_steps=3, group_size=2))
    a = rollout(velocity, plan, 2, (1, 2, 2), seed=5)
    b = rollout(velocity, plan, 2, (1, 2, 2), seed=5)
    c = rollout(velocity, plan, 2, (1, 2, 2), root_seeds=[1, 2, 3, 4])
    d = rollout(
        lambda x, s, p: velocity(x, s, p + 1), plan, 1, (1, 2, 2), root_prompt=torch.tensor([0, 0]), root_seeds=[3, 4]
    )
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)
    assert torch.equal(c.samples[2:], d.samples)  # roots 3 and 4 alone give what they gave in the batch


def test_root_seeds_are_checked():
    method = get_method("flow_grpo")
    plan = method.plan(method.configure(num_steps=3, group_size=2))
    with pytest.raises(ValueError, match="3 seeds for 4 roots"):
        rollout(velocity, plan, 2, (1, 2, 2), root_seeds=[1, 2, 3])
    with pytest.raises(ValueError, match=r"prompt indices in \[0, 1\)"):
        rollout(velocity, plan, 1, (1, 2, 2), root_prompt=torch.tensor([0, 1]))
    shared = method.plan(method.configure(num_steps=3, group_size=2, share_noise=True))
    with pytest.raises(ValueError, match="share_noise with root_seeds needs"):
        rollout(velocity, shared, 1, (1, 2, 2), root_seeds=[1, 2])
