"""The tokens objective against TRL's own GRPOTrainer loss (TRL is a test and benchmark extra): the
same per-token log-probs in, the same loss out for every loss_type, importance level and KL."""

import tempfile

import pytest
import torch

from flowrl.experience import Batch
from flowrl.llm.policy import Completions, load_text_policy
from flowrl.llm.tiny import save_tiny
from flowrl.objectives.base import ObjectiveContext
from flowrl.objectives.tokens import TokenObjective, TokenOptions

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
NEW = torch.tensor([[-1.1, -2.3, -0.4, -0.9], [-0.2, -1.0, -3.0, -0.1], [-1.4, -0.3, -0.8, -1.3]])
OLD = NEW + torch.tensor([[-0.1, 0.3, -0.02, 0.0], [-0.5, 0.0, 0.0, 0.0], [0.05, -0.25, 0.0, 0.4]])
REFERENCE = NEW + torch.tensor([[0.2, -0.1, 0.05, 0.0], [0.3, 0.0, 0.0, 0.0], [-0.2, 0.1, 0.3, -0.1]])
ADVANTAGES = torch.tensor([1.0, -0.5, 2.0])


@pytest.fixture(scope="module")
def trl_trainer():
    """A GRPOTrainer on the tiny model whose per-token log-probs are the fixed NEW."""
    policy = load_text_policy(str(save_tiny(tempfile.mkdtemp() + "/lm")))
    args = trl.GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=3, num_generations=3, max_completion_length=4,
        report_to=[], use_cpu=True, epsilon=0.2, epsilon_high=0.28,
    )  # fmt: skip
    trainer = trl.GRPOTrainer(
        model=policy.network,
        reward_funcs=[lambda prompts, completions, **kwargs: [0.0] * len(completions)],
        args=args,
        train_dataset=datasets.Dataset.from_dict({"prompt": ["1+1="] * 3}),
        processing_class=policy.tokenizer,
    )
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (NEW.clone(), torch.zeros_like(NEW), None)
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    return trainer


class Reference:
    """The reference policy switch the objective flips while it scores the reference pass."""

    on = False

    def active(self):
        reference = self

        class Switch:
            def __enter__(self):
                reference.on = True

            def __exit__(self, *exc):
                reference.on = False

        return Switch()


def our_loss(loss_type: str, level: str, beta: float) -> float:
    mask = MASK.bool()
    completions = Completions(
        torch.zeros(3, 6, dtype=torch.long), torch.ones(3, 6, dtype=torch.long), mask, OLD * mask,
        torch.zeros(3, dtype=torch.bool), torch.tensor([0, 0, 0]), ["a", "b", "c"],
    )  # fmt: skip
    batch = Batch(0, completions, ["p"], None, torch.arange(1), torch.zeros(3), torch.ones(3, dtype=torch.bool),
                  completions, ADVANTAGES, torch.ones(3), {})  # fmt: skip
    reference = Reference()
    context = ObjectiveContext({}, None, reference, beta, "clip", 5.0, 64, 64, (), lambda i, r: [])
    options = TokenOptions(epsilon=0.2, epsilon_high=0.28, loss_type=loss_type, importance_sampling_level=level)
    objective = TokenObjective(options, context)
    objective.prepare(batch)
    loss, _ = objective.loss(lambda part: (REFERENCE if reference.on else NEW) * mask, batch, torch.arange(3), 3.0)
    return loss.item()


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_each_loss_type_equals_trl_s(trl_trainer, loss_type, level, beta):
    trl_trainer.loss_type, trl_trainer.importance_sampling_level, trl_trainer.beta = loss_type, level, beta
    inputs = {
        "prompt_ids": torch.zeros(3, 2, dtype=torch.long),
        "prompt_mask": torch.ones(3, 2, dtype=torch.long),
        "completion_ids": torch.zeros(3, 4, dtype=torch.long),
        "completion_mask": MASK,
        "advantages": ADVANTAGES,
        "old_per_token_logps": OLD,
        "ref_per_token_logps": REFERENCE,
        "num_items_in_batch": MASK.sum().float(),  # the step's tokens: one step holds the whole batch
    }
    theirs = float(trl_trainer._compute_loss(trl_trainer.model, inputs))
    assert our_loss(loss_type, level, beta) == pytest.approx(theirs, rel=1e-6, abs=1e-7)
