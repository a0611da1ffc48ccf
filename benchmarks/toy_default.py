"""Measure the default run: train the toy recipe with each seed, then evaluate the shipped model
and every trained model on held-out ToyShapes; prints a per-category before/after table.

    python benchmarks/toy_default.py --seeds 0 1 2 --per-category 32      # trains 3 runs
    python benchmarks/toy_default.py --seeds 0 --skip-train --runs runs/bench   # reuse runs

Seeds change prompts, noise and shuffling, so their spread is the honest error bar of one run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def evaluate(directory: str | None, per_category: int) -> dict:
    from benchmarks.toyshapes.evaluate import evaluate_toyshapes
    from flowrl.policies import load_toy

    report, _ = evaluate_toyshapes(load_toy(directory), per_category, steps=20, guidance=4.0, progress=False)
    return {"overall": report.overall, **report.accuracy}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--per-category", type=int, default=32, help="held-out images per category")
    parser.add_argument("--runs", default="runs/toy_default_bench", help="where the runs go")
    parser.add_argument("--skip-train", action="store_true", help="evaluate existing runs only")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the toy recipe")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from flowrl.config import load_config
    from flowrl.cli import resolve_recipe
    from flowrl.trainer import train

    results = {"shipped": evaluate(None, args.per_category)}
    for seed in args.seeds:
        out = Path(args.runs) / f"seed{seed}"
        if not args.skip_train:
            train(load_config(resolve_recipe("toy"), [f"out={out}", f"seed={seed}", *args.overrides]))
        results[f"seed {seed}"] = evaluate(str(out / "final"), args.per_category)
    columns = list(results)
    rows = [k for k in results["shipped"] if k != "overall"] + ["overall"]
    print("| category | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for row in rows:
        print(f"| {row} | " + " | ".join(f"{100 * results[c][row]:.1f}%" for c in columns) + " |")
    trained = [results[c]["overall"] for c in columns[1:]]
    if trained:
        mean = sum(trained) / len(trained)
        print(f"\nmean overall of {len(trained)} run(s): {100 * mean:.1f}% (shipped {100 * results['shipped']['overall']:.1f}%)")
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    (Path(args.runs) / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
