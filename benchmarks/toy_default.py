"""Measure the default run: train the toy recipe with each seed, then evaluate the shipped model
and every trained model on held-out ToyShapes; prints a per-category before/after table.

    python benchmarks/toy_default.py --seeds 0 1 2 --per-category 32      # trains 3 runs
    python benchmarks/toy_default.py --seeds 0 --skip-train --runs runs/bench   # reuse runs
    python benchmarks/toy_default.py --base runs/pretrain_toy/ema --split train --eta 0.3   # another base,
                                              # judged on the training prompts with DanceGRPO's SDE
    python benchmarks/toy_default.py --seeds --supervised-steps 500 --supervised-split train
                                              # RL's own effect: continued pretraining of the base

Seeds change prompts, noise and shuffling, so their spread is the honest error bar of one run.
Each run is also paired with the base image by image (same prompts and starting noise): its
overall difference with a 95% interval and an exact McNemar p-value (benchmarks/paired.py).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from flowrl.benchmarks.report import format_difference, format_interval, format_p, format_score_interval
from flowrl.benchmarks.toyshapes.evaluate import EvalReport
from flowrl.benchmarks.toyshapes.prompts import SPLITS
from flowrl.benchmarks.toyshapes.report import paired_toyshapes, paired_toyshapes_scores
from flowrl.cli_args import non_negative_float, non_negative_int
from flowrl.toy_pretraining import PRETRAINING_SPLITS


def evaluate(
    directory: str | None, per_category: int, split: str = "heldout", eta: float = 0.0
) -> tuple[dict, EvalReport]:
    """Overall and per-category accuracy and the mean dense score of a toy model directory (None:
    the shipped model), and the full report (its per-image records pair runs with the base)."""
    from flowrl.benchmarks.toyshapes.evaluate import evaluate_toyshapes
    from flowrl.generate import sampler
    from flowrl.policies import load_toy

    steps = 20 if eta == 0 else 10  # the SDE evaluation uses the toy recipes' 10-step grid
    sample = sampler(load_toy(directory), steps, 4.0, eta=eta, batch_size=128)
    report, _ = evaluate_toyshapes(sample, per_category, steps=steps, guidance=4.0, eta=eta, split=split)
    return {"overall": report.overall, **report.accuracy, "mean_score": report.mean_score}, report


def continue_pretraining(base: str | None, steps: int, split: str, runs: str, threads: int) -> Path:
    """Continue the base's flow-matching pretraining on fresh renders (RL's budget spent on
    supervised training instead); returns the directory of its EMA weights."""
    from flowrl.policies.toy import SHIPPED_DIR
    from flowrl.toy_pretraining import build_parser as pretraining_parser
    from flowrl.toy_pretraining import run_pretraining

    out = Path(runs) / f"supervised_{split}"
    settings = pretraining_parser().parse_args(
        [
            f"--init={base or SHIPPED_DIR}",
            f"--out={out}",
            f"--steps={steps}",
            f"--warmup={max(1, steps // 10)}",
            "--lr=4e-4",  # the fourth stage's (docs/results.md)
            f"--ema={max(0.0, 1 - 5 / steps):.4f}",  # an average over about the last fifth of the run
            f"--split={split}",
            "--seed=41",  # renders the base's own pretraining did not draw
            f"--threads={threads}",
        ]
    )
    ema, _ = run_pretraining(settings)
    return ema


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0], help="RL runs (none: controls only)")
    parser.add_argument("--per-category", type=int, default=32, help="evaluation images per category")
    parser.add_argument(
        "--base",
        default=None,
        help="toy model directory to train from and compare against (default: the shipped model)",
    )
    parser.add_argument(
        "--split", choices=SPLITS, default="heldout", help="evaluation prompts (held-out: the standard figure)"
    )
    parser.add_argument(
        "--eta",
        type=non_negative_float,
        default=0.0,
        help="evaluate with DanceGRPO's SDE at this noise level (10 steps); 0: 20 Euler steps",
    )
    parser.add_argument("--runs", default="runs/toy_default_bench", help="where the runs go")
    parser.add_argument("--skip-train", action="store_true", help="evaluate existing runs only")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--supervised-steps",
        type=non_negative_int,
        default=0,
        help="also continue the base's pretraining for this many steps (about 1.2 s each on 2 cores), as a column",
    )
    parser.add_argument(
        "--supervised-split",
        choices=PRETRAINING_SPLITS,
        default="all",
        help="the continued pretraining renders the whole world, or only RL's training prompts",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the toy recipe")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from flowrl.cli_args import resolve_recipe
    from flowrl.config import load_config
    from flowrl.trainer import train

    if args.base is not None and not (Path(args.base) / "config.json").is_file():
        parser.error(f"--base {args.base}: not a toy model directory (no config.json)")
    judged = {"per_category": args.per_category, "split": args.split, "eta": args.eta}
    base = "shipped" if args.base is None else "base"
    results, reports = {}, {}
    results[base], reports[base] = evaluate(args.base, **judged)
    policy = [] if args.base is None else [f"policy={args.base}"]
    for seed in args.seeds:
        out = Path(args.runs) / f"seed{seed}"
        if not args.skip_train:
            train(load_config(resolve_recipe("toy"), [f"out={out}", f"seed={seed}", *policy, *args.overrides]))
        results[f"seed {seed}"], reports[f"seed {seed}"] = evaluate(str(out / "final"), **judged)
    if args.supervised_steps > 0:
        column = f"supervised, {args.supervised_split}"
        ema = continue_pretraining(args.base, args.supervised_steps, args.supervised_split, args.runs, args.threads)
        results[column], reports[column] = evaluate(str(ema), **judged)
    columns = list(results)
    rows = [k for k in results[base] if k not in ("overall", "mean_score")] + ["overall"]
    print("| category | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for row in rows:
        print(f"| {row} | " + " | ".join(f"{100 * results[c][row]:.1f}%" for c in columns) + " |")
    print("| mean dense score | " + " | ".join(f"{results[c]['mean_score']:.3f}" for c in columns) + " |")
    trained = [results[c]["overall"] for c in columns[1:]]
    paired, paired_scores = {}, {}
    if trained:
        mean = sum(trained) / len(trained)
        print(
            f"\nmean overall of {len(trained)} run(s): {100 * mean:.1f}% ({base} {100 * results[base]['overall']:.1f}%)"
        )
        print(f"paired with the {base} model image by image (same prompts and starting noise):")
        for column in columns[1:]:
            tests, _ = paired_toyshapes(reports[base], reports[column])
            paired[column] = {t.name: {**asdict(t), "interval": list(t.interval)} for t in tests}
            overall = tests[-1]
            print(
                f"  {column}: {format_difference(overall.difference)} overall, 95% interval {format_interval(overall)}, "
                f"p {format_p(overall.p_value)} ({overall.b_only} images only the run got right, {overall.a_only} only the {base})"
            )
            tests, why_not = paired_toyshapes_scores(reports[base], reports[column])
            paired_scores[column] = {t.name: {**asdict(t), "interval": list(t.interval)} for t in tests}
            if tests:
                overall = tests[-1]
                print(
                    f"  {column}: dense score {overall.difference:+.3f} overall, 95% interval {format_score_interval(overall)}, "
                    f"p {format_p(overall.p_value)}"
                )
            else:
                print(f"  {column}: {why_not}")
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    record = {
        "settings": {**judged, "base": args.base or "shipped", "overrides": args.overrides},
        "results": results,
        "paired": paired,
        "paired_scores": paired_scores,
    }
    (Path(args.runs) / "results.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
