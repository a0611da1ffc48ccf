"""Proxy against gold on ToyShapes: train on the dense score (the proxy) and follow, on held-out
prompts, both the proxy and the exact verifier's accuracy (the gold), for the default run and a
KL-regularised one, with the same budget.

    python benchmarks/reward_hacking.py --per-category 24 --eval-every 10 --plot hacking.png

The dense score pays partial credit (0.875 for two circles asked as "a circle and a square"), so
it can rise while exact accuracy falls: the reward-hacking pattern argued about at GPU scale,
measured here where the gold verifier is exact. Each variant is one `flowrl train toy` run with
held-out evaluations every `--eval-every` iterations; the table lists both curves side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flowrl.cli_args import resolve_recipe
from flowrl.config import load_config
from flowrl.run_files import line_chart
from flowrl.trainer import train

VARIANTS = {
    "default": [],  # the recipe: no KL
    "kl": ["beta=0.04"],  # Flow-GRPO's KL weight, to the starting model (LoRA adapters disabled)
}


def curves(run: Path) -> list[dict]:
    """(iteration, proxy, gold, training reward) at every held-out evaluation of a run."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = {r["iteration"]: r["reward/mean"] for r in records if "reward/mean" in r}
    return [
        {
            "iteration": r["iteration"],
            "proxy": r["eval/mean_score"],
            "gold": r["eval/overall"],
            "train_reward": train.get(r["iteration"]),
        }
        for r in records
        if "eval/overall" in r
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-category", type=int, default=24, help="held-out images per category per evaluation")
    parser.add_argument("--eval-every", type=int, default=10, help="iterations between held-out evaluations")
    parser.add_argument("--runs", default="runs/reward_hacking", help="where the runs go")
    parser.add_argument("--skip-train", action="store_true", help="read existing runs only")
    parser.add_argument("--plot", default=None, help="write the proxy and gold curves to this PNG")
    parser.add_argument("--json", default=None, help="write the curves to this JSON file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the toy recipe, for every variant")
    args = parser.parse_args(argv)
    results = {}
    for name in args.variants:
        run = Path(args.runs) / f"{name}_seed{args.seed}"
        if not args.skip_train:
            overrides = [
                f"out={run}",
                f"seed={args.seed}",
                "minutes=0",  # the same iterations for every variant, however long each takes
                f"eval_every={args.eval_every}",
                f"eval_per_category={args.per_category}",
                *VARIANTS[name],
                *args.overrides,
            ]
            train(load_config(resolve_recipe("toy"), overrides))
        results[name] = curves(run)
    print("| iteration | " + " | ".join(f"{n} proxy | {n} gold" for n in results) + " |")
    print("|---" * (1 + 2 * len(results)) + "|")
    for index, point in enumerate(next(iter(results.values()))):
        cells = [f"{c[index]['proxy']:.3f} | {100 * c[index]['gold']:.1f}%" for c in results.values()]
        print(f"| {point['iteration']} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.plot:
        proxy = {n: [(p["iteration"], p["proxy"]) for p in c] for n, c in results.items()}
        gold = {n: [(p["iteration"], p["gold"]) for p in c] for n, c in results.items()}
        line_chart(Path(args.plot), "held-out: dense score (proxy, top), exact accuracy (gold, bottom)", proxy, gold)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
