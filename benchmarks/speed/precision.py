"""The toy default run's iteration cost in float32 against bf16 autocast (`mixed_precision`).

    python -m flowrl.benchmarks.speed.precision [--iterations 4] [--threads 2] [key=value ...]

Both settings train the toy recipe (with any overrides) for a few iterations in this one process,
with the same prompts and noise, so the time ratios mean something on any machine; bf16 pays on
CPUs with AMX (`lscpu | grep amx`). Also printed: how far bf16 moves the ratio of the first
update from 1 (rollout and re-scoring round differently), against the recipe's clip range.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

PHASES = ("time/rollout", "time/update")


def run(precision: str, iterations: int, overrides: list[str], directory: Path) -> list[dict]:
    """metrics.jsonl records (one per iteration) of a fresh toy run at `precision`."""
    from flowrl.cli_args import resolve_recipe
    from flowrl.config import load_config
    from flowrl.trainer import train

    out = directory / precision
    settings = [
        f"out={out}",
        f"iterations={iterations}",
        "eval_every=0",
        "checkpoint_every=1000",
        "minutes=0",
        f"mixed_precision={precision}",
    ]
    train(load_config(resolve_recipe("toy"), [*settings, *overrides]))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "time/rollout" in r]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--iterations", type=int, default=4, help="iterations per setting; the first is not timed (warm-up)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the toy recipe")
    args = parser.parse_args(argv)
    if args.iterations < 2:
        parser.error(f"--iterations {args.iterations}: need at least 2 (the first is warm-up)")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        records = {p: run(p, args.iterations, args.overrides, Path(tmp)) for p in ("no", "bf16")}
    median = {p: {k: statistics.median(r[k] for r in rs[1:]) for k in PHASES} for p, rs in records.items()}
    print("| phase | float32 (s) | bf16 (s) | float32 / bf16 |")
    print("|---|---|---|---|")
    for key in PHASES + ("total",):
        a, b = ((sum(median[p].values()) if key == "total" else median[p][key]) for p in ("no", "bf16"))
        print(f"| {key} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    first = records["bf16"][0]
    print(
        f"\nbf16, first update: ratio in [{first['ratio/min']:.5f}, {first['ratio/max']:.5f}], clip fraction {first['clip_fraction']:.3f}"
        f" (float32: [{records['no'][0]['ratio/min']:.5f}, {records['no'][0]['ratio/max']:.5f}])"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
