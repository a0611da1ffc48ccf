"""Measure the text default: RL from the shipped llm_toy base beside the same minutes of continued
supervised training and a shuffled-reward control, on held-out greedy exact match.

    python benchmarks/llm_toy.py --seeds 0 1 2 --minutes 10            # 3 RL runs + 2 controls
    python benchmarks/llm_toy.py --seeds 0 --skip-train --runs runs/llm_bench   # report existing runs
    python benchmarks/llm_toy.py --rl-only --runs runs/disco objective=disco    # RL runs with overrides

Each run evaluates the same held-out prompts greedily at its start and end (and along the way);
the supervised control continues the base on its own labelled rows with its settings
(flowrl pretrain-llm-toy --continue-from), the shuffled control trains on exact-match rewards
permuted among each iteration's completions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flowrl.benchmarks.paired import paired_difference


def correct(records: list[dict]) -> dict[str, bool]:
    """Prompt -> whether its greedy completion was right (reward 1), from an evaluation's records."""
    return {r["prompt"]: r["reward"] == 1.0 for r in records}


def run_row(name: str, run: Path) -> dict:
    """Held-out greedy accuracy at a training run's first and last evaluation, paired by prompt."""
    evaluations = sorted((run / "samples").glob("iter_*.json"))
    first, last = (json.loads(path.read_text()) for path in (evaluations[0], evaluations[-1]))
    return row(
        name,
        correct(first["records"]),
        correct(last["records"]),
        [json.loads(p.read_text())["eval/accuracy"] for p in evaluations],
    )


def row(name: str, before: dict[str, bool], after: dict[str, bool], curve: list[float]) -> dict:
    prompts = sorted(before)
    difference = paired_difference(name, [before[p] for p in prompts], [after[p] for p in prompts])
    return {
        "run": name,
        "start": sum(before.values()) / len(before),
        "end": sum(after.values()) / len(after),
        "difference": difference.difference,
        "low": difference.low,
        "high": difference.high,
        "p": difference.p_value,
        "peak": max(curve),
        "curve": curve,
    }


def train_run(out: Path, seed: int, minutes: float, extra: list[str]) -> None:
    from flowrl.cli_args import resolve_recipe
    from flowrl.config import load_config
    from flowrl.trainer import train

    overrides = [f"out={out}", f"seed={seed}", f"minutes={minutes}", "resume=false", *extra]
    train(load_config(resolve_recipe("llm_toy"), overrides))


def headroom(source: str, k: int = 8) -> dict:
    """Greedy accuracy, pass@1 and pass@k at temperature 1 on the held-out prompts, and how many
    prompts get 0, 1 to k-1, or k right answers of k samples (the middle is what RL learns from)."""
    from flowrl.llm.policy import load_text_policy
    from flowrl.llm.task import ArithmeticTask

    policy = load_text_policy(source)
    report = json.loads((Path(policy.network.name_or_path) / "pretraining.json").read_text())
    rows = ArithmeticTask(report["task"]).held_out()
    prompts = [r["prompt"] for r in rows]
    greedy = policy.sample(prompts, 1, max_new_tokens=8, greedy=True).texts
    sampled = policy.sample(prompts, k, max_new_tokens=8, seed=0).texts
    right = [sum(sampled[i * k + j].strip() == r["answer"] for j in range(k)) for i, r in enumerate(rows)]
    return {
        "greedy": sum(g.strip() == r["answer"] for g, r in zip(greedy, rows)) / len(rows),
        "pass@1": sum(right) / (k * len(rows)),
        f"pass@{k}": sum(n > 0 for n in right) / len(rows),
        f"0/{k}": sum(n == 0 for n in right),
        f"1-{k - 1}/{k}": sum(0 < n < k for n in right),
        f"{k}/{k}": sum(n == k for n in right),
    }


def supervised_row(directory: Path) -> dict:
    """The supervised control: the base and the continued model answer the same held-out prompts."""
    from flowrl.llm.policy import load_text_policy
    from flowrl.llm.task import ArithmeticTask

    report = json.loads((directory / "pretraining.json").read_text())
    rows = ArithmeticTask(report["task"]).held_out()
    answers = {}
    for name, source in (("before", report["continued_from"]), ("after", str(directory))):
        policy = load_text_policy(source)
        completions = policy.sample([r["prompt"] for r in rows], 1, max_new_tokens=8, greedy=True)
        answers[name] = {r["prompt"]: c.strip() == r["answer"] for r, c in zip(rows, completions.texts)}
    curve = [point["held_out_greedy"] for point in report["curve"]]
    return row("continued supervised", answers["before"], answers["after"], curve)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--minutes", type=float, default=9.0, help="training minutes of every run (the recipe's)")
    parser.add_argument("--runs", default="runs/llm_bench")
    parser.add_argument("--skip-train", action="store_true", help="report the runs already in --runs")
    parser.add_argument("--json", default=None, help="write the table here too")
    parser.add_argument("--rl-only", action="store_true", help="no shuffled-reward or supervised control")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the RL runs (objective=disco, ...)")
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    from flowrl.llm.policy import SHIPPED

    print("headroom of the shipped base (1000 held-out prompts):", json.dumps(headroom(str(SHIPPED))))
    if not args.skip_train:
        for seed in args.seeds:
            train_run(runs / f"rl_s{seed}", seed, args.minutes, args.overrides)
    if not args.skip_train and not args.rl_only:
        train_run(runs / "shuffled", args.seeds[0], args.minutes, ["reward=shuffled:exact_match"])
        from flowrl.llm.policy import SHIPPED
        from flowrl.llm.pretraining import main as pretrain_main

        base = str(SHIPPED)
        pretrain_main(["--continue-from", base, "--minutes", str(args.minutes), "--out", str(runs / "sft")])
    rows = [run_row(f"RL, seed {seed}", runs / f"rl_s{seed}") for seed in args.seeds]
    if (runs / "shuffled" / "samples").is_dir():
        rows.append(run_row("shuffled reward", runs / "shuffled"))
    if (runs / "sft" / "pretraining.json").is_file():
        rows.append(supervised_row(runs / "sft"))
    print(f"{'run':<22} {'start':>7} {'end':>7} {'change (95% interval)':>28} {'p':>9} {'peak':>7}")
    for r in rows:
        change = f"{100 * r['difference']:+.1f} ({100 * r['low']:+.1f} to {100 * r['high']:+.1f}) pp"
        line = f"{r['run']:<22} {100 * r['start']:6.1f}% {100 * r['end']:6.1f}% {change:>28} {r['p']:9.2g}"
        print(f"{line} {100 * r['peak']:6.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
