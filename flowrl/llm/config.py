"""The checks of a text run's config, before any model loads."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .method import TEXT_METHODS
from .rewards import resolve


def text_method_options(config: Any):
    """The text method's options object of this run."""
    return TEXT_METHODS.configure(config.method, config.method_options)


def validate_text(config: Any) -> None:
    """Text runs: a text method and objective, a prompt source, rewards that resolve."""
    from flowrl.advantage import ADVANTAGES
    from flowrl.objectives import OBJECTIVES

    def need(condition: bool, key: str, what: str) -> None:
        if not condition:
            raise ValueError(f"config key {key}={getattr(config, key)!r}: {what}")

    need(config.method in TEXT_METHODS, "method", f"a text policy trains with a text method: {sorted(TEXT_METHODS)}")
    try:
        options = text_method_options(config)
    except ValueError as error:
        raise ValueError(f"method {config.method!r}: {error}") from None
    ADVANTAGES.lookup(options.advantage)
    need(
        getattr(OBJECTIVES.lookup(config.objective), "modality", "image") == "text",
        "objective",
        "a text policy trains with objective=tokens",
    )
    OBJECTIVES.configure(config.objective, config.objective_options)
    if config.fsdp:
        need(
            config.micro_batch <= config.max_batch,
            "micro_batch",
            f"with fsdp=true must not exceed max_batch={config.max_batch}: one model call per micro-batch everywhere",
        )
    if config.zero_stage:
        need(config.zero_stage in (1, 2), "zero_stage", "expected 0 (off), 1 or 2; fsdp=true partitions the weights")
        need(not config.fsdp, "zero_stage", "fsdp=true already shards the optimizer state; use one of the two")
        need(
            importlib.util.find_spec("deepspeed") is not None,
            "zero_stage",
            "DeepSpeed is not installed (pip install 'flowrl-toolkit[deepspeed]')",
        )
    spec = config.prompts
    need(
        spec.startswith("task:") or (spec.endswith(".jsonl") and Path(spec).is_file()),
        "prompts",
        "expected task:NAME (e.g. task:mul3x2) or an existing .jsonl file",
    )
    from .task import ArithmeticTask

    if spec.startswith("task:"):
        ArithmeticTask(spec.split(":", 1)[1])
    evaluation = config.eval_prompts
    need(
        not config.eval_every or bool(evaluation) or spec.startswith("task:"),
        "eval_prompts",
        "a JSONL prompt file has no held-out split: name evaluation rows (a JSONL file or task:NAME) or set eval_every=0",
    )
    if evaluation:
        need(
            evaluation.startswith("task:") or (evaluation.endswith(".jsonl") and Path(evaluation).is_file()),
            "eval_prompts",
            "expected task:NAME or an existing .jsonl file",
        )
        if evaluation.startswith("task:"):
            ArithmeticTask(evaluation.split(":", 1)[1])
    names = [config.reward] if isinstance(config.reward, str) else list(config.reward)
    for name in names:
        try:
            resolve(name.removeprefix("shuffled:"))
        except ValueError as error:
            raise ValueError(f"config key reward={config.reward!r}: {error}") from None
    unknown = sorted(set(config.reward_options) - set(names))
    need(not unknown, "reward_options", f"options for {unknown}, which reward={config.reward!r} does not name")
