"""Ours beside TRL's GRPOTrainer on the text default: the shipped llm_toy base, the add3x3 task,
exact-match reward, the same group size, prompts per step, steps, loss type, learning rate and
optimizer; seconds per step, the training reward per step and held-out greedy exact match at the end.

    pip install -e ".[bench]"                       # TRL (a benchmark extra)
    python benchmarks/trl_compare.py --steps 100 --seeds 0 1 2     # both trainers, seed by seed
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RECIPE = dict(num_generations=8, prompts_per_step=16, max_completion_length=8, lr=3e-4, loss_type="dapo", epsilon=0.2)


def held_out_accuracy(source: str) -> float:
    """Greedy exact match of a saved model on the task's 1000 held-out prompts."""
    from flowrl.llm.policy import load_text_policy
    from flowrl.llm.task import ArithmeticTask

    policy = load_text_policy(source)
    rows = ArithmeticTask("add3x3").held_out()
    texts = policy.sample([r["prompt"] for r in rows], 1, max_new_tokens=8, greedy=True).texts
    return sum(t.strip() == r["answer"] for t, r in zip(texts, rows)) / len(rows)


def run_ours(out: Path, steps: int, seed: int) -> dict:
    from flowrl.cli_args import resolve_recipe
    from flowrl.config import load_config
    from flowrl.trainer import train

    overrides = [f"out={out}", f"seed={seed}", f"iterations={steps}", "minutes=0", "eval_every=0", "resume=false"]
    start = time.perf_counter()
    train(load_config(resolve_recipe("llm_toy"), overrides))
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward/mean"] for r in records if "reward/mean" in r]
    step_seconds = [r["time/rollout"] + r["time/update"] for r in records if "time/update" in r]
    return {"seconds": seconds, "step_seconds": step_seconds, "rewards": rewards, "model": str(out / "final")}


def run_trl(out: Path, steps: int, seed: int) -> dict:
    import datasets
    import trl
    from transformers import TrainerCallback

    from flowrl.llm.policy import SHIPPED, load_text_policy
    from flowrl.llm.rewards import TEXT_REWARDS
    from flowrl.llm.task import ArithmeticTask

    policy = load_text_policy(str(SHIPPED))
    task = ArithmeticTask("add3x3")
    rows = task.train(RECIPE["prompts_per_step"] * steps, seed)
    exact_match = TEXT_REWARDS.lookup("exact_match")
    args = trl.GRPOConfig(
        output_dir=str(out), max_steps=steps, seed=seed, use_cpu=True, report_to=[], logging_steps=1,
        per_device_train_batch_size=RECIPE["prompts_per_step"] * RECIPE["num_generations"],
        num_generations=RECIPE["num_generations"], max_completion_length=RECIPE["max_completion_length"],
        learning_rate=RECIPE["lr"], lr_scheduler_type="constant", loss_type=RECIPE["loss_type"],
        epsilon=RECIPE["epsilon"], beta=0.0, temperature=1.0, save_strategy="no", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, scale_rewards="group", dataloader_num_workers=0,
    )  # fmt: skip
    step_seconds: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k):
            step_seconds.append(time.perf_counter() - self.started)

    trainer = trl.GRPOTrainer(
        model=policy.network,
        reward_funcs=[lambda prompts, completions, answer, **kw: exact_match(prompts, completions, answer=answer)],
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=policy.tokenizer,
        callbacks=[StepClock()],
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model(str(out / "final"))
    policy.tokenizer.save_pretrained(str(out / "final"))
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"seconds": seconds, "step_seconds": step_seconds, "rewards": rewards, "model": str(out / "final")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", default="runs/trl_compare")
    parser.add_argument("--json", default=None, help="write the results here too")
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    from flowrl.llm.policy import SHIPPED

    results = {}
    for seed in args.seeds:  # alternate the trainers, so that machine load falls on both alike
        for name, run in (("flowrl", run_ours), ("trl", run_trl)):
            result = run(runs / f"{name}_s{seed}", args.steps, seed)
            result["held_out"] = held_out_accuracy(result["model"])
            results[f"{name} seed {seed}"] = result
    base = held_out_accuracy(str(SHIPPED))
    print(f"{args.steps} steps of {RECIPE['prompts_per_step']} prompts x {RECIPE['num_generations']} completions")
    print(f"held-out greedy exact match of the base: {100 * base:.1f}%")
    print(f"{'run':<14} {'s/step (median)':>16} {'total s':>8} {'reward first 10':>16} {'last 10':>8} {'held-out':>9}")
    for name, r in results.items():
        steps = sorted(r["step_seconds"])
        first, last = r["rewards"][:10], r["rewards"][-10:]
        print(
            f"{name:<14} {steps[len(steps) // 2]:16.3f} {r['seconds']:8.1f} {sum(first) / len(first):16.3f} "
            f"{sum(last) / len(last):8.3f} {100 * r['held_out']:8.1f}%"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"base": base, **results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
