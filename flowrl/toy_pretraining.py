"""Pretrain the toy text-to-image model with the rectified-flow loss on rendered ToyShapes scenes.

Data are rendered on the fly from a seed per step, and checkpoints hold model, EMA and
optimizer, so an interrupted run resumes exactly where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import signal
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from flowrl.benchmarks.toyshapes.prompts import CATEGORIES, prompts_for, vocabulary
from flowrl.benchmarks.toyshapes.render import render_batch

from .adapters import warmed_up_decay
from .cli_args import non_negative_int
from .interrupts import StopRequests, exit_code
from .policies.base import TextConditioning
from .policies.sd3_velocity import sd3_velocity
from .policies.toy import SHIPPED_DIR, ToyConfig, ToyModel, load_toy, save_toy
from .run_files import lock_run_directory, truncate_metrics
from .schedules import learning_rate
from .shipping import ship

CHECKPOINT_NAME = "checkpoint.pt"
PRETRAINING_SPLITS = ("all", "train")  # the whole world, or only RL's training prompts


def training_batch(
    step: int, batch_size: int, seed: int, resolution: int, caption_dropout: float, split: str = "all"
) -> tuple[list[str], torch.Tensor]:
    """The prompts and images [B, 3, H, W] in [-1, 1] of one step, a function of (seed, step) only.

    Categories are drawn uniformly, then a prompt of the category from the split: by default the
    whole world (the held-out split is for RL evaluation, not hidden from pretraining); "train"
    keeps to RL's training prompts, the supervised control of what those prompts can teach.
    """
    rng = random.Random(seed * 1_000_003 + step)
    pools = {c: prompts_for(split, (c,)) for c in CATEGORIES}
    prompts = [rng.choice(pools[rng.choice(CATEGORIES)]) for _ in range(batch_size)]
    images, _ = render_batch(prompts, resolution, seed=rng.randrange(2**31))
    texts = ["" if rng.random() < caption_dropout else p.text for p in prompts]
    return texts, images * 2 - 1


def flow_matching_loss(model: ToyModel, texts: list[str], x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mean squared error between predicted and true velocity (noise - x0) at logit-normal sigmas."""
    noise = torch.randn(x0.shape, generator=generator)
    sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=generator))  # SD3's logit-normal
    s = sigma.view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    embeds, pooled = model.text_encoder(model.text_encoder.tokenize(texts))
    cond = TextConditioning(embeds, pooled, embeds[:1], pooled[:1])
    v = sd3_velocity(model.transformer, x_t, sigma, cond)
    return torch.nn.functional.mse_loss(v, noise - x0)


def _save_checkpoint(path: Path, model, ema, optimizer, step: int) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp
    )
    tmp.replace(path)  # atomic: a crash never leaves a half-written checkpoint


def _initial_model(args: argparse.Namespace) -> ToyModel:
    """A fresh model of the requested size, or with --init the weights (and architecture) of a
    toy model directory, to train an existing model further on fresh renders."""
    if not args.init:
        layers, heads = (4 if n is None else n for n in (args.layers, args.heads))
        return ToyModel(ToyConfig(vocabulary=list(vocabulary()), num_layers=layers, num_heads=heads))
    model = load_toy(args.init).model.train()  # float32 weights; load_toy leaves it in eval mode
    asked = {"layers": (args.layers, model.config.num_layers), "heads": (args.heads, model.config.num_heads)}
    conflicts = [
        f"--{name} {given} but the model has {has}"
        for name, (given, has) in asked.items()
        if given is not None and given != has
    ]
    if conflicts:
        raise ValueError(
            f"--init {args.init}: the architecture comes from its config.json ({', '.join(conflicts)}); drop --layers/--heads"
        )
    if set(model.config.vocabulary) != set(vocabulary()):
        raise ValueError(
            f"--init {args.init}: its vocabulary {model.config.vocabulary} is not the ToyShapes vocabulary"
        )
    return model


def pretrain(args: argparse.Namespace) -> Path:
    """Run (or resume) pretraining; returns the directory of the final EMA weights."""
    return run_pretraining(args)[0]


def run_pretraining(args: argparse.Namespace) -> tuple[Path, int | None]:
    """Run (or resume) pretraining: the directory of the EMA weights, and the signal (Ctrl-C,
    SIGTERM) that ended it early after a checkpoint, None when it ran its course."""
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_run_directory(out, "--out")
    try:
        return _pretrain(args, out)
    finally:
        if lock is not None:
            lock.close()


def _pretrain(args: argparse.Namespace, out: Path) -> tuple[Path, int | None]:
    model = _initial_model(args)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    start = 0
    checkpoint = out / CHECKPOINT_NAME
    if checkpoint.exists() and not args.restart:
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
        print(f"resuming from {checkpoint} at step {start}")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"toy model: {n_params / 1e6:.2f}M parameters; writing to {out}")
    deadline = time.time() + 60 * args.minutes if args.minutes else math.inf
    # Steps past the checkpoint (logged before an interruption) are redone; --restart redoes all.
    truncate_metrics(out / "log.jsonl", start - 1, key="step")
    log = (out / "log.jsonl").open("a")
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="pretrain")
    done = start
    with StopRequests("step") as stop:  # Ctrl-C / SIGTERM: end after this step, with a checkpoint
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, args.lr, args.warmup, args.steps, "cosine")
            texts, x0 = training_batch(
                step, args.batch, args.seed, model.config.resolution, args.caption_dropout, args.split
            )
            generator = torch.Generator().manual_seed(args.seed * 7_919 + step)
            loss = flow_matching_loss(model, texts, x0, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            with torch.no_grad():
                decay = warmed_up_decay(step, args.ema, warmup=True)  # short EMA early, as is usual
                for p_ema, p in zip(ema.parameters(), model.parameters()):
                    p_ema.lerp_(p, 1 - decay)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if step % 25 == 0:
                log.write(
                    json.dumps(
                        {
                            "step": step,
                            "loss": loss.item(),
                            "grad_norm": grad_norm.item(),
                            "lr": optimizer.param_groups[0]["lr"],
                            "time": time.time(),
                        }
                    )
                    + "\n"
                )
                log.flush()
            done = step + 1
            out_of_time = time.time() > deadline
            if done % args.checkpoint_every == 0 or done == args.steps or out_of_time or stop.requested:
                _save_checkpoint(checkpoint, model, ema, optimizer, done)
                save_toy(ema, out / "ema")
            if done < args.steps and (out_of_time or stop.requested):
                why = (
                    f"time budget of {args.minutes} min reached"
                    if out_of_time
                    else f"stopped by {signal.Signals(stop.signal).name}"
                )
                print(f"{why} at step {done} of {args.steps}, with a checkpoint; rerun the same command to continue")
                break
    bar.close()
    log.close()
    final = save_toy(ema, out / "ema")
    if args.ship and done >= args.steps:
        ship(out / "ema", SHIPPED_DIR, done)
    elif args.ship:
        print(f"not shipped: step {done} of {args.steps}; the run ships when it completes")
    stopped_by = stop.signal if done < args.steps else None
    return final, stopped_by


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Pretrain the built-in toy text-to-image model on ToyShapes renders.")
    parser.add_argument("--out", default="runs/pretrain_toy", help="run directory (checkpoint, log, EMA weights)")
    parser.add_argument("--steps", type=non_negative_int, default=3400, help="optimizer steps in total")
    parser.add_argument("--batch", type=int, default=64, help="images per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up steps")
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay of the shipped weights")
    parser.add_argument("--caption-dropout", type=float, default=0.1, help="share of empty prompts (for guidance)")
    parser.add_argument(
        "--layers", type=int, default=None, help="transformer layers (default 4; with --init, the model's)"
    )
    parser.add_argument(
        "--heads", type=int, default=None, help="attention heads of 32 channels (default 4; with --init, the model's)"
    )
    parser.add_argument(
        "--init",
        default=None,
        help="start from this toy model directory (e.g. flowrl/assets/toy_t2i) instead of random "
        "weights; give a --seed other than its run's to draw fresh renders",
    )
    parser.add_argument(
        "--split",
        choices=PRETRAINING_SPLITS,
        default="all",
        help="the prompts rendered: the whole world, or only RL's training prompts (a supervised control)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--minutes", type=float, default=0, help="stop (resumably) after this many minutes")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    parser.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--ship", action="store_true", help="also write the weights into the package")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _, stopped_by = run_pretraining(args)
    except (ValueError, FileNotFoundError) as error:  # a bad --init: a message, not a traceback
        parser.error(str(error))
    return exit_code(stopped_by)
