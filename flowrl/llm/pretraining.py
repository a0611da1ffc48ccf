"""Supervised pretraining of the tiny causal LM on an arithmetic task, with the held-out greedy
accuracy curve that shows where supervised training levels off (the base RL starts from).

    flowrl pretrain-llm-toy --task mul3x2 --minutes 10 --out runs/llm_base [--ship]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch

from ..adapters import Ema, warmed_up_decay
from ..shipping import ship
from .policy import SHIPPED, load_text_policy
from .task import ArithmeticTask
from .tiny import save_tiny


def supervised_batch(tokenizer, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention, labels) [B, L], right-padded: BOS + prompt + answer + EOS, the loss on the
    answer and EOS only (positions start at 0 as in left-padded generation with cumsum positions)."""
    sequences, answer_starts = [], []
    for row in rows:
        prompt = tokenizer(row["prompt"])["input_ids"]  # BOS + prompt
        answer = tokenizer(row["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        sequences.append(prompt + answer)
        answer_starts.append(len(prompt))
    width = max(len(s) for s in sequences)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for i, (sequence, start) in enumerate(zip(sequences, answer_starts)):
        ids[i, : len(sequence)] = torch.tensor(sequence)
        attention[i, : len(sequence)] = 1
        labels[i, start : len(sequence)] = ids[i, start : len(sequence)]
    return ids, attention, labels


def greedy_accuracy(policy, rows: list[dict], max_new_tokens: int) -> float:
    """Exact-match share of greedy completions."""
    completions = policy.sample([r["prompt"] for r in rows], 1, max_new_tokens=max_new_tokens, greedy=True)
    return sum(c.strip() == r["answer"] for c, r in zip(completions.texts, rows)) / len(rows)


def supervised_lr(lr: float, progress: float, continued: bool) -> float:
    """Cosine from lr to lr / 10 over a run, so it ends settled; a continued run goes on at the
    rate its base ended with (a restart at lr would first undo part of the base's settling)."""
    if continued:
        return 0.1 * lr
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def pretrain(
    task_name: str,
    out: str | Path,
    minutes: float,
    train_rows: int,
    hidden: int,
    layers: int,
    lr: float,
    batch: int = 64,
    seed: int = 0,
    eval_every: float = 30.0,
    eval_rows: int = 1000,
    start_from: str | None = None,
    teacher_error: float = 0.0,
    ema: float = 0.0,
) -> dict:
    """Train from random weights for `minutes` (or, with `start_from`, continue that model on its
    own labelled rows at its final learning rate: the supervised control beside an RL run); returns
    the held-out curve and writes the model to out. With `ema` > 0 the curve and the saved model
    are a moving average of the weights, without the step-to-step swing of the last update."""
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema must lie in [0, 1), got {ema}")
    task = ArithmeticTask(task_name)
    out = Path(out)
    if start_from is None:
        save_tiny(out, hidden=hidden, layers=layers, seed=seed)
    elif Path(start_from).resolve() != out.resolve():
        shutil.copytree(start_from, out, dirs_exist_ok=True)
    policy = load_text_policy(str(out))
    rows = task.train(train_rows, seed=seed, teacher_error=teacher_error)
    held_out = task.held_out(eval_rows)
    optimizer = torch.optim.AdamW(policy.network.parameters(), lr=lr, weight_decay=0.01)
    params = dict(policy.network.named_parameters())
    average = Ema(params, ema) if ema > 0 else None
    rng = random.Random(seed)
    curve, start, next_eval, steps = [], time.perf_counter(), 0.0, 0
    while True:
        elapsed = time.perf_counter() - start
        done = elapsed >= 60 * minutes
        if elapsed >= next_eval or (done and curve[-1]["steps"] != steps):  # the curve ends at the saved model
            with average.swapped_in(params) if average else contextlib.nullcontext():
                accuracy = greedy_accuracy(policy, held_out, task.answer_length + 1)
            curve.append({"seconds": round(elapsed, 1), "steps": steps, "held_out_greedy": accuracy})
            print(f"{elapsed:7.1f}s  step {steps:6d}  held-out greedy {accuracy:.3f}", file=sys.stderr)
            next_eval += eval_every
        if done:
            break
        for group in optimizer.param_groups:
            group["lr"] = supervised_lr(lr, elapsed / (60 * minutes), continued=start_from is not None)
        ids, attention, labels = supervised_batch(policy.tokenizer, rng.sample(rows, min(batch, len(rows))))
        loss = policy.network(input_ids=ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
        if average:
            average.update(params, warmed_up_decay(steps, ema, warmup=True))
    with average.swapped_in(params) if average else contextlib.nullcontext():
        policy.network.save_pretrained(out)
    policy.tokenizer.save_pretrained(out)
    report = {
        "task": task_name,
        "hidden": hidden,
        "layers": layers,
        "train_rows": train_rows,
        "lr": lr,
        "minutes": minutes,
        "seed": seed,
        "teacher_error": teacher_error,
        "ema": ema,
        "continued_from": str(start_from) if start_from else None,
        "curve": curve,
    }
    (out / "pretraining.json").write_text(json.dumps(report, indent=2))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowrl pretrain-llm-toy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mul3x2")
    parser.add_argument("--out", default="runs/llm_base")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--teacher-error",
        type=float,
        default=0.0,
        help="addition tasks: the labels drop the units carry with this probability (an imperfect teacher)",
    )
    parser.add_argument(
        "--ema", type=float, default=0.0, help="evaluate and save a moving average of the weights with this decay"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--ship", action="store_true", help="copy the result into the package as policy=llm_toy")
    parser.add_argument(
        "--continue-from",
        default=None,
        help="continue a pretrained model (llm_toy or a folder) on its own labelled rows, with its settings",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.train_rows < 1:
        parser.error("--minutes and --train-rows must be positive")
    if not 0.0 <= args.ema < 1.0:
        parser.error(f"--ema must lie in [0, 1), got {args.ema}")
    if args.threads < 0:
        parser.error(f"--threads must be 0 or more, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.continue_from:
        base = SHIPPED if args.continue_from == "llm_toy" else Path(args.continue_from)
        settings = json.loads((base / "pretraining.json").read_text())
        pretrain(
            settings["task"],
            args.out,
            args.minutes,
            settings["train_rows"],
            settings["hidden"],
            settings["layers"],
            settings["lr"],
            seed=settings["seed"],
            start_from=str(base),
            teacher_error=settings.get("teacher_error", 0.0),
            ema=settings.get("ema", 0.0),
        )
        return 0
    report = pretrain(
        args.task,
        args.out,
        args.minutes,
        args.train_rows,
        args.hidden,
        args.layers,
        args.lr,
        seed=args.seed,
        teacher_error=args.teacher_error,
        ema=args.ema,
    )
    if args.ship:
        ship(Path(args.out), SHIPPED, report["curve"][-1]["steps"] if report["curve"] else 0)
    return 0
