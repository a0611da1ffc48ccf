"""Hindsight relabelling for the matching objectives: every prompt of the batch also judges the
other prompts' samples, so a sample that fails its own prompt but satisfies another is a positive
there, and one that satisfies a similar prompt but not this one is a negative here.

The policy-gradient objectives need the log-probability of a sample's own trajectory, but AWM and
DiffusionNFT only need a (clean sample, prompt) pair, so any sample can be trained under any
prompt. Each prompt's group becomes its own samples plus up to `per_prompt` foreign ones:
the foreign samples it judges correct first, then its hardest negatives (the incorrect foreign
samples with the highest partial score), and the advantages are normalised over that union.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .advantage.group import grpo


@dataclass
class RelabelledPairs:
    """K (prompt, sample) pairs: prompt index [K], sample index [K], reward [K], advantage [K],
    foreign [K] bool (the sample was drawn for another prompt)."""

    prompt: torch.Tensor
    sample: torch.Tensor
    reward: torch.Tensor
    advantage: torch.Tensor
    foreign: torch.Tensor


def relabel_pairs(
    sample_prompt: torch.Tensor, cross_reward: torch.Tensor, cross_score: torch.Tensor, cross_correct: torch.Tensor,
    per_prompt: int, generator: torch.Generator, clip: float = 0.0, with_negatives: bool = True,
) -> RelabelledPairs:
    """Pairs of every prompt with its own samples and up to `per_prompt` foreign ones.

    sample_prompt [N]: the prompt each sample was drawn for. cross_reward, cross_score,
    cross_correct [P, N]: each sample judged under each prompt (the training reward, the partial
    score that ranks negatives, exact correctness). `with_negatives=False` takes foreign positives
    only. Groups whose rewards all tie get advantage 0.
    """
    prompts, samples = cross_reward.shape
    if sample_prompt.shape != (samples,):
        raise ValueError(f"sample_prompt has shape {tuple(sample_prompt.shape)}, expected ({samples},)")
    if per_prompt < 0:
        raise ValueError(f"per_prompt must be >= 0, got {per_prompt}")
    pair_prompt, pair_sample = [], []
    for p in range(prompts):
        own = torch.nonzero(sample_prompt == p).flatten()
        others = torch.nonzero(sample_prompt != p).flatten()
        others = others[torch.randperm(len(others), generator=generator)]  # ties among positives broken at random
        correct = cross_correct[p, others]
        positives = others[correct][:per_prompt]
        negatives = others[~correct]
        hardest = negatives[torch.argsort(cross_score[p, negatives], descending=True, stable=True)]
        chosen = torch.cat([positives, hardest[: per_prompt - len(positives)]]) if with_negatives else positives
        members = torch.cat([own, chosen])
        pair_prompt.append(torch.full((len(members),), p, dtype=torch.long))
        pair_sample.append(members)
    prompt_index = torch.cat(pair_prompt)
    sample_index = torch.cat(pair_sample)
    reward = cross_reward[prompt_index, sample_index].float()
    advantage = grpo(reward, prompt_index, clip=clip if clip > 0 else None)
    return RelabelledPairs(prompt_index, sample_index, reward, advantage, sample_prompt[sample_index] != prompt_index)
