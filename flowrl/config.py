"""The training config: one flat dataclass, YAML recipes and `key=value` overrides.

Everything is validated before any model loads: an unknown key or a bad value fails naming the
key, the value and what is allowed. Method hyperparameters go under `method_options` (override
them as `method.window=3`), the objective's under `objective_options` (`objective.clip_low=1e-4`);
each is checked by its registry entry's options dataclass.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def option(default: Any, help: str, choices: tuple | None = None, **kwargs) -> Any:
    metadata = {"help": help, "choices": choices}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=metadata)
    return field(default=default, metadata=metadata, **kwargs)


@dataclass
class TrainConfig:
    # run
    out: str = option("runs/train", "run directory (config, metrics, samples, checkpoints)")
    seed: int = option(0, "seed of prompts, noise and shuffling: the same seed reruns the same run")
    iterations: int = option(60, "training iterations (rollout + update)")
    minutes: float = option(0.0, "stop (resumably, with a checkpoint) after this many minutes; 0: no limit")
    resume: bool = option(
        True,
        "continue from out/checkpoint when it exists; false (or no checkpoint) starts over, removing an earlier run's metrics, "
        "checkpoint and samples from out",
    )
    device: str = option("auto", "auto (cuda when available), cpu or cuda")
    mixed_precision: str = option(
        "auto",
        "bf16 autocast of the model calls: auto (on CUDA only), no, or bf16 (also on the CPU, where AMX makes it fast)",
        choices=("auto", "no", "bf16"),
    )
    threads: int = option(0, "torch CPU threads (0: torch's default)")
    fsdp: bool = option(
        False,
        "shard the transformer's weights, gradients and optimizer state across processes (PyTorch FSDP2, one unit per block); "
        "also on when accelerate is launched with --use_fsdp",
    )
    zero_stage: int = option(
        0,
        "DeepSpeed ZeRO across processes: 1 partitions the optimizer state, 2 also the gradients (weights stay whole; "
        "fsdp=true shards those); 0: off. Set from accelerate's --use_deepspeed launch",
    )
    # policy
    policy: str = option(
        "toy", "toy (the shipped model), a toy model directory, or an SD3/SD3.5/FLUX.1 diffusers hub id or folder"
    )
    resolution: int = option(512, "image resolution of SD3/FLUX policies (the toy model is fixed at 32)")
    weights_dtype: str = option(
        "auto",
        "dtype of SD3/FLUX weights: auto (bf16 on CUDA with LoRA, else fp32), fp32, bf16 or fp16",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    lora_rank: int = option(0, "LoRA rank on the transformer; 0 trains all its weights")
    lora_alpha: float = option(0.0, "LoRA alpha (0: equal to the rank)")
    lora_targets: list = option(["to_q", "to_k", "to_v", "to_out.0"], "transformer modules that get LoRA adapters")
    guidance: float = option(4.0, "classifier-free guidance scale in rollouts, training and evaluation")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (CUDA memory knob)")
    # method
    method: str = option("flow_grpo", "the solver-layer method (flowrl methods lists them)")
    method_options: dict = option({}, "the method's hyperparameters (flowrl methods -v shows them)")
    # data and reward
    prompts: str = option(
        "toyshapes:train",
        "toyshapes:SPLIT (train, heldout or all), toyshapes:SPLIT:CATEGORY,... to train on some "
        "categories only (drawn balanced among them), or a text file with one prompt per line",
    )
    prompts_per_iteration: int = option(6, "prompts per iteration; each gets the method's group of samples")
    reward: str = option(
        "toyshapes",
        "a reward name (flowrl rewards lists them), remote:http://host:port, pairwise:NAME, package.module:object, or a weighted sum like '0.7*pickscore+0.3*ocr'",
    )
    reward_options: dict = option(
        {}, "keyword options per reward name, e.g. {hpsv2: {checkpoint: /path/HPS_v2_compressed.pt}}"
    )
    reward_invalid: str = option(
        "error",
        "a NaN/inf reward: error (stop, naming the samples) or drop (leave those samples' prompts out of the update)",
        choices=("error", "drop"),
    )
    # advantages and loss
    advantage_clip: float = option(5.0, "clamp advantages to [-c, c] (Flow-GRPO uses 5); 0: no clamp")
    drop_zero_variance: bool = option(
        True, "leave groups whose rewards are all equal out of the update (DAPO's dynamic sampling)"
    )
    objective: str = option(
        "sde",
        "how advantages become a loss: sde (the ratio of the rollout's SDE transition log-probs; Flow-GRPO and the rest), "
        "matching (Advantage Weighted Matching: the flow-matching error of each final sample, freshly noised at the trained steps' levels; chain methods only), "
        "nft (DiffusionNFT: the same points, a bounded negative-aware flow-matching loss instead of a ratio; chain methods only), "
        "or a registered name (flowrl objectives lists them)",
    )
    objective_options: dict = option(
        {}, "the objective's options, e.g. objective.clip_low=1e-4 (flowrl objectives shows them)"
    )
    loss: str = option("clip", "policy surrogate: clip, reg, or a registered name")
    beta: float = option(0.0, "weight of the KL to the reference (adapters disabled, or the initial weights)")
    # optimisation
    lr: float = option(3e-5, "AdamW learning rate")
    lr_warmup: int = option(0, "iterations of linear learning-rate warm-up")
    lr_schedule: str = option(
        "constant",
        "after warm-up: constant, or cosine decay to 10% of lr at the last iteration",
        choices=("constant", "cosine"),
    )
    weight_decay: float = option(0.0, "AdamW weight decay")
    adam_betas: list = option([0.9, 0.999], "AdamW betas")
    max_grad_norm: float = option(1.0, "gradient clipping norm; 0: off")
    inner_epochs: int = option(1, "passes over each iteration's transitions")
    train_batch: int = option(0, "transitions per optimizer step (0: all of the iteration's in one step)")
    micro_batch: int = option(64, "transitions per forward/backward (gradient accumulation inside a step)")
    ema: float = option(0.0, "EMA decay of the trained weights used for evaluation and export; 0: off")
    ema_every: int = option(1, "update the EMA every this many optimizer steps (Flow-GRPO's code: 8)")
    ema_warmup: bool = option(
        False,
        "warm the EMA up as Flow-GRPO's and DiffusionNFT's code do: at optimizer step k its decay is min((1 + k) / (10 + k), ema), "
        "so early averages follow the trained weights instead of holding on to the initial ones",
    )
    # evaluation and checkpoints
    eval_every: int = option(
        0,
        "evaluate at iteration 0, every this many iterations and at the end; 0: never (judge the export with flowrl eval)",
    )
    eval_prompts: str = option(
        "",
        "prompts for periodic evaluation (a text file); empty: the ToyShapes held-out split for ToyShapes prompts, else the first 16 training prompts",
    )
    eval_per_category: int = option(8, "held-out ToyShapes images per category at each evaluation")
    eval_steps: int = option(20, "ODE steps of evaluation sampling")
    log_with: str = option(
        "", "also log metrics to tensorboard, wandb or both (comma-separated); metrics.jsonl is always written"
    )
    checkpoint_every: int = option(10, "checkpoint every this many iterations (and at the end)")
    keep_checkpoints: int = option(2, "checkpoints kept: the last in checkpoint/, earlier ones in checkpoints/")
    stall_iterations: int = option(
        5, "stop (with a checkpoint) after this many iterations that train nothing; 0: never"
    )
    max_batch: int = option(256, "rows per model call in rollouts and scoring (memory knob)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _expected(name: str) -> type:
    hint = typing.get_type_hints(TrainConfig)[name]
    return typing.get_origin(hint) or hint


def check_value(name: str, value: Any) -> Any:
    """value converted to the field's type, or a ValueError naming the key, value and type."""
    if name not in FIELDS:
        raise ValueError(
            f"unknown config key {name!r}; known keys: {', '.join(sorted(FIELDS))} (and method.<option>, objective.<option>)"
        )
    expected = _expected(name)
    if expected in (int, float) and isinstance(value, str):  # YAML reads 1e-4 as a string
        try:
            value = expected(value)
        except ValueError:
            pass
    choices = FIELDS[name].metadata.get("choices")
    if expected is str and isinstance(value, bool) and choices and ("yes" if value else "no") in choices:
        value = "yes" if value else "no"  # YAML 1.1 reads a bare no / yes as a boolean
    ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ValueError(f"config key {name}={value!r}: expected {expected.__name__} ({FIELDS[name].metadata['help']})")
    if choices and value not in choices:
        raise ValueError(f"config key {name}={value!r}: expected one of {choices}")
    return value


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {key!r} appears twice (YAML would silently keep the last)",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str) -> Any:
    """YAML from a recipe; a syntax error or a repeated key names the file and line."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ValueError(f"{where}{line}: {problem}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """'key=value' with value read as YAML ('3' -> 3, 'true' -> True, '[1, 2]' -> list)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        column = f" at character {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(
            f"override {text!r}: the value is not valid YAML ({problem}{column}); quote it to pass a string"
        ) from None
    return key.strip(), value


# The parts whose options nest under PART_options (override prefix PART.): the key PART names the entry.
PARTS = ("method", "objective")


def part_registry(part: str):
    if part == "method":
        from flowrl.samplers.methods import METHODS

        return METHODS
    from flowrl.objectives import OBJECTIVES

    return OBJECTIVES


def part_options(part: str, value: Any) -> dict[str, Any]:
    """The `{part}_options` mapping (None is empty), or a ValueError naming the key."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(
            f"config key {part}_options={value!r}: expected a mapping such as {{name: value}} (or {part}.name=value)"
        )
    return dict(value)


def build_config(values: dict[str, Any], overrides: list[str] = ()) -> TrainConfig:
    """A validated TrainConfig from a dict (a recipe) and key=value overrides (applied after)."""
    values = dict(values)
    recipe_options = {part: part_options(part, values.pop(f"{part}_options", None)) for part in PARTS}
    recipe_names = {part: values.get(part, getattr(TrainConfig, part)) for part in PARTS}
    cli_options: dict[str, dict[str, Any]] = {part: {} for part in PARTS}
    for text in overrides:
        key, value = parse_override(text)
        prefix, _, rest = key.partition(".")
        if prefix in PARTS and rest:
            cli_options[prefix][rest] = value
        elif key.endswith("_options") and key.removesuffix("_options") in PARTS:
            part = key.removesuffix("_options")
            cli_options[part].update(part_options(part, value))
        else:
            values[key] = value
    options = {}
    for part in PARTS:
        chosen = values.get(part, recipe_names[part])
        kept = recipe_options[part]
        if chosen != recipe_names[part]:
            # Another method or objective than the recipe's: keep the recipe's options the new one
            # also has (the grid, the group), drop the rest, and say so.
            known = set(registry_option_names(part, str(chosen)))
            dropped = sorted(set(kept) - known)
            kept = {k: v for k, v in kept.items() if k in known}
            if dropped:
                print(
                    f"note: {part} {chosen!r} has no {dropped} (options of the recipe's {recipe_names[part]!r}); ignoring them",
                    file=sys.stderr,
                )
        options[f"{part}_options"] = {**kept, **cli_options[part]}
    checked = {name: check_value(name, value) for name, value in values.items()}
    config = TrainConfig(**checked, **options)
    validate(config)
    return config


def registry_option_names(part: str, name: str) -> list[str]:
    """The option names of a method or objective (a text method when `name` is one)."""
    from flowrl.llm.method import TEXT_METHODS
    from flowrl.registry import option_names

    registry = TEXT_METHODS if part == "method" and name in TEXT_METHODS else part_registry(part)
    return option_names(registry.entry(name).options)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """The config of a YAML recipe (or the defaults) with overrides; validated."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        values = load_yaml(path.read_text(), str(path)) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a recipe must be a mapping of keys to values, got {type(values).__name__}")
        for key in ("prompts", "eval_prompts"):  # a recipe's own prompt files live beside it
            value = values.get(key)
            if isinstance(value, str) and value and not Path(value).is_absolute() and (path.parent / value).is_file():
                values[key] = str((path.parent / value).resolve())
    return build_config(values, overrides)


def validate(config: TrainConfig) -> None:
    """Cross-field and range checks, including the method's options, before anything loads."""
    from flowrl.advantage import check_credit
    from flowrl.losses import get_loss
    from flowrl.objectives import OBJECTIVES
    from flowrl.samplers.methods import get_method
    from flowrl.samplers.plan import identical_groups

    from .prompt_source import toyshapes_prompt_spec

    def need(condition: bool, key: str, what: str) -> None:
        if not condition:
            raise ValueError(f"config key {key}={getattr(config, key)!r}: {what}")

    for key, value in vars(config).items():  # nan passes no comparison, inf trains nothing
        if isinstance(value, float):
            need(math.isfinite(value), key, "must be a finite number")
    for key in (
        "iterations",
        "prompts_per_iteration",
        "inner_epochs",
        "micro_batch",
        "max_batch",
        "eval_steps",
        "eval_per_category",
        "checkpoint_every",
        "ema_every",
        "keep_checkpoints",
    ):
        need(getattr(config, key) >= 1, key, "must be at least 1")
    for key in (
        "minutes",
        "lora_rank",
        "lora_alpha",
        "beta",
        "lr",
        "weight_decay",
        "max_grad_norm",
        "advantage_clip",
        "train_batch",
        "eval_every",
        "threads",
        "lr_warmup",
        "stall_iterations",
    ):
        need(getattr(config, key) >= 0, key, "must not be negative")
    need(config.lr > 0, "lr", "must be positive")
    need(0 <= config.ema < 1, "ema", "must be in [0, 1)")
    need(
        config.device in ("auto", "cpu", "cuda") or config.device.startswith("cuda:"),
        "device",
        "expected auto, cpu, cuda or cuda:N",
    )
    text = is_text_source(config.policy)
    if not text:
        check_reward_spec(config)
    need(
        len(config.adam_betas) == 2 and all(0 <= b < 1 for b in config.adam_betas),
        "adam_betas",
        "expected two numbers in [0, 1)",
    )
    get_loss(config.loss)
    need(config.resolution >= 8, "resolution", "must be at least 8")
    policy_path = Path(config.policy).expanduser()
    if config.policy != "toy" and policy_path.exists():
        from flowrl.policies.loading import is_toy_source

        need(
            is_toy_source(config.policy) or (policy_path / "model_index.json").is_file(),
            "policy",
            "this path is neither a toy model directory (config.json + model.safetensors) nor a diffusers pipeline folder (model_index.json)",
        )
    elif config.policy not in ("toy", "llm_toy"):
        need(
            config.policy.count("/") == 1 and not config.policy.startswith((".", "/", "~")),
            "policy",
            "no such directory, and not a hub id of the form org/name",
        )
    for tracker in filter(None, config.log_with.split(",")):
        need(
            tracker in ("tensorboard", "wandb"),
            "log_with",
            f"unknown tracker {tracker!r}; expected tensorboard, wandb or tensorboard,wandb",
        )
        need(
            importlib.util.find_spec(tracker) is not None,
            "log_with",
            f"{tracker} is not installed (pip install 'flowrl-toolkit[tracking]')",
        )
    if config.eval_prompts and not text:
        need(
            Path(config.eval_prompts).is_file(),
            "eval_prompts",
            "expected an existing text file with one prompt per line",
        )
    need(not Path(config.out).is_file(), "out", "names a file; expected a run directory (made when missing)")
    from flowrl.policies.loading import is_toy_source as toy_source

    if not text and toy_source(config.policy):  # toy prompts are checked word by word before any model loads
        from flowrl.policies.toy import check_toy_prompts

        for key in ("prompts", "eval_prompts"):
            value = getattr(config, key)
            if value and not value.startswith("toyshapes:") and Path(value).is_file():
                check_toy_prompts(None if config.policy == "toy" else config.policy, value, key)
    if text:
        from flowrl.llm.config import validate_text

        validate_text(config)
        return
    if config.prompts.startswith("toyshapes:"):
        toyshapes_prompt_spec(config.prompts)
    elif not Path(config.prompts).is_file():
        raise ValueError(
            f"config key prompts={config.prompts!r}: expected toyshapes:SPLIT[:CATEGORY,...] or an existing text file"
        )
    method = get_method(config.method)
    try:
        options = method.configure(**config.method_options)
        check_credit(method, options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"method {config.method!r}: {error}") from None
    objective = OBJECTIVES.lookup(config.objective)
    need(
        getattr(objective, "modality", "image") == "image",
        "objective",
        "objective=tokens trains text policies (policy=llm_toy or a transformers causal-LM folder)",
    )
    try:
        objective_options = OBJECTIVES.configure(config.objective, config.objective_options)
    except ValueError as error:
        raise ValueError(f"config key objective_options={config.objective_options!r}: {error}") from None
    if config.fsdp:
        need(objective.supports_sharding, "objective", "fsdp=true supports objective=sde only")
        need(
            config.micro_batch <= config.max_batch,
            "micro_batch",
            f"with fsdp=true must not exceed max_batch={config.max_batch}, so that every process makes one model call per micro-batch",
        )
    if config.zero_stage:
        need(
            config.zero_stage in (1, 2),
            "zero_stage",
            "expected 0 (off), 1 or 2; stage 3 partitions the weights, which fsdp=true does",
        )
        need(
            not config.fsdp,
            "zero_stage",
            "fsdp=true already shards the optimizer state and gradients; use one of the two",
        )
        need(objective.supports_sharding, "objective", "zero_stage supports objective=sde only")
        need(
            importlib.util.find_spec("deepspeed") is not None,
            "zero_stage",
            "DeepSpeed is not installed (pip install 'flowrl-toolkit[deepspeed]')",
        )
    try:
        plan = method.plan(options, 0)
    except ValueError as error:
        raise ValueError(f"method {config.method!r} with method_options={config.method_options!r}: {error}") from None
    need(
        not identical_groups(plan),
        "method_options",
        f"the {config.method} plan's {plan.group_size} samples of a prompt would be identical (every reward ties, nothing trains): they share "
        "their starting noise and no step adds noise (every step is an ODE step or an SDE step at noise level 0); "
        "set method.share_noise=false or give the SDE steps a positive noise level",
    )
    objective.check(objective_options, config, plan, config.method)


def check_reward_spec(config: TrainConfig) -> None:
    """The reward spec parses and every name resolves (nothing is built or downloaded)."""
    from flowrl.rewards.combine import parse_reward_spec
    from flowrl.rewards.registry import check, check_options

    try:
        terms = parse_reward_spec(config.reward)
        for name, _ in terms:
            check(name)
    except ValueError as error:
        raise ValueError(f"config key reward={config.reward!r}: {error}") from None
    unknown = sorted(set(config.reward_options) - {name for name, _ in terms})
    if unknown:
        raise ValueError(
            f"config key reward_options={config.reward_options!r}: options for {unknown}, which reward={config.reward!r} does not name"
        )
    bad = [name for name, value in config.reward_options.items() if not isinstance(value, dict)]
    if bad:
        raise ValueError(
            f"config key reward_options={config.reward_options!r}: the options of {bad} must be mappings of keyword to value"
        )
    for name, options in config.reward_options.items():
        try:
            check_options(name, options)
        except ValueError as error:
            raise ValueError(f"config key reward_options={config.reward_options!r}: {error}") from None


def is_text_source(policy: str) -> bool:
    """Whether `policy` names a causal language model (a text run)."""
    from flowrl.llm.policy import is_text_source as text_source

    return text_source(policy)


def method_config(config: TrainConfig):
    """The method's own config object for this run."""
    from flowrl.samplers.methods import get_method

    if is_text_source(config.policy):
        from flowrl.llm.config import text_method_options

        return text_method_options(config)

    return get_method(config.method).configure(**config.method_options)


def describe(config: TrainConfig | None = None) -> str:
    """Every key with the value that will run (the default, or `config`'s, marked * where the
    recipe or an override set it) and its help, for `flowrl train [RECIPE] --help-config`."""
    lines = []
    for name, f in FIELDS.items():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = default if config is None else getattr(config, name)
        mark = "*" if value != default else " "
        lines.append(f"{mark} {name:24s} {value!r:28s} {f.metadata['help']}")
    if config is not None:
        lines.append("* set by the recipe or an override; the rest are the defaults")
    return "\n".join(lines)
