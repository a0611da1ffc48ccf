"""DeepSpeed ZeRO stages 1 and 2 for the trainer: the optimizer state (stage 1) and the gradients
(stage 2) are partitioned across processes; the weights stay whole on every process.

The trainer keeps its own loop: it calls the policy's transformer directly, passes each backward
through the DeepSpeed engine (which reduces the gradients) and steps the engine once per
minibatch. Checkpoints hold the full optimizer state in torch's own layout, so a ZeRO run and a
plain or FSDP run resume each other. Stage 3 partitions the weights too; `fsdp=true` does that.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .sharding import env_flag

ADAM_STATE = ("exp_avg", "exp_avg_sq")


def launched_with_deepspeed(environ: Mapping[str, str]) -> bool:
    """Whether accelerate was launched with `--use_deepspeed` (or a config that enables it)."""
    return env_flag(environ, "ACCELERATE_USE_DEEPSPEED")


def launch_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ZeRO settings a DeepSpeed launch of accelerate asks for: stage, optimizer offload device
    and gradient clipping (None where not given), from its flags or its DeepSpeed config file.
    Fails, naming the field, on settings the trainer would otherwise ignore."""
    settings: dict[str, Any] = {"stage": None, "offload": None, "clipping": None}
    file = environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    if file and file.lower() != "none":
        ds = json.loads(Path(file).read_text())
        for section in ("optimizer", "scheduler"):
            if section in ds:
                raise ValueError(
                    f"DeepSpeed config {file}: a {section!r} section is not supported; flowrl builds AdamW and its "
                    "learning-rate schedule from its own keys (lr, lr_warmup, lr_schedule, weight_decay, adam_betas)"
                )
        for precision in ("fp16", "bf16"):
            if ds.get(precision, {}).get("enabled") is True:
                raise ValueError(
                    f"DeepSpeed config {file}: {precision}.enabled=true is not supported; flowrl trains fp32 weights "
                    "with bf16 autocast of the model calls (mixed_precision=bf16, on by default on CUDA)"
                )
        zero = ds.get("zero_optimization", {})
        settings["stage"] = zero.get("stage")
        settings["offload"] = (zero.get("offload_optimizer") or {}).get("device")
        if ds.get("gradient_clipping", "auto") != "auto":
            settings["clipping"] = float(ds["gradient_clipping"])
    if environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        settings["stage"] = int(environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"])
    if environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"):
        settings["offload"] = environ["ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"]
    if environ.get("ACCELERATE_GRADIENT_CLIPPING", "none").lower() not in ("none", "auto", ""):
        settings["clipping"] = float(environ["ACCELERATE_GRADIENT_CLIPPING"])
    if str(settings["offload"]).lower() in ("none", ""):
        settings["offload"] = None
    offload_param = environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none").lower()
    if offload_param not in ("none", ""):
        raise ValueError(
            f"DeepSpeed offload_param_device={offload_param!r} needs ZeRO stage 3, which flowrl does not drive; "
            "use fsdp=true to shard the weights (accelerate's fsdp_offload_params is honoured there)"
        )
    return settings


@dataclass
class Zero:
    """A DeepSpeed engine over the transformer's trainable weights, and the torch optimizer's
    param_groups as they were before DeepSpeed flattened them (the checkpoint layout)."""

    engine: Any
    param_groups: list[dict]


def wrap(
    transformer: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    stage: int,
    max_grad_norm: float,
    offload: str | None,
    micro_batch: int,
) -> Zero:
    """Hand `optimizer` (AdamW over the transformer's trainable weights) to a DeepSpeed engine
    with ZeRO `stage` (1 or 2); the engine clips the gradient norm to `max_grad_norm` (0: off)."""
    try:
        import deepspeed
    except ImportError:
        raise ValueError("zero_stage needs DeepSpeed: pip install 'flowrl-toolkit[deepspeed]'") from None
    odd = sorted(
        {str(p.dtype) for group in optimizer.param_groups for p in group["params"] if p.dtype != torch.float32}
    )
    if odd:
        raise ValueError(
            f"zero_stage: the trained weights are {odd}, but DeepSpeed's fp32 mode needs float32 ones (weights_dtype=fp32, or LoRA)"
        )
    param_groups = optimizer.state_dict()["param_groups"]
    zero: dict[str, Any] = {"stage": stage}
    if offload:
        zero["offload_optimizer"] = {"device": offload}
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,  # bookkeeping only: the trainer sizes its own batches
        "gradient_accumulation_steps": 1,  # the trainer marks each step's last backward as the boundary
        "gradient_clipping": max_grad_norm,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # torch's AdamW
        # Offloaded, torch's AdamW steps the partitions on the CPU (DeepSpeed's CPU Adam needs a kernel build).
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if next(transformer.parameters()).device.type == "cpu":
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce kernel (minutes, needs a C++
        # compiler) for inference; ZeRO's reductions go through torch.distributed (gloo) either way.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    engine, *_ = deepspeed.initialize(model=transformer, optimizer=optimizer, config=config)
    return Zero(engine, param_groups)


def backward(zero: Zero, loss: torch.Tensor, last: bool) -> None:
    """Backward through the engine; `last` marks the step's final pass, after which the gradients
    are complete (stage 2 reduces them bucket by bucket in every pass, so every process must make
    the same number of passes)."""
    zero.engine.set_gradient_accumulation_boundary(last)
    zero.engine.backward(loss)


def step(zero: Zero) -> float:
    """Clip, step and zero the gradients; returns the global gradient norm before clipping."""
    zero.engine.step()
    norm = zero.engine.get_global_grad_norm()
    return float(norm) if norm is not None else 0.0


def _fragments(zero: Zero, params: list[torch.Tensor]):
    """Per parameter: (its slice in the flat parameter, the flat fp32 partition of this process,
    the slice there), or None where this process holds none of it."""
    partitions = zero.engine.optimizer.single_partition_of_fp32_groups
    for p in params:
        mapping = getattr(p, "_hp_mapping", None)
        if mapping is None:
            yield None
            continue
        lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address
        yield (
            slice(lp.start, lp.start + lp.numel),
            partitions[mapping.param_group_index],
            slice(hp.start, hp.start + hp.numel),
        )


def full_optimizer_state(zero: Zero, params: list[torch.Tensor]) -> dict:
    """The optimizer's state_dict as an unpartitioned torch AdamW over `params` would have it
    (every process must call this: each contributes its partition, in one all-reduce per state)."""
    import torch.distributed as dist

    optimizer = zero.engine.optimizer.optimizer  # torch's AdamW, now over the flat partitions
    groups = {"param_groups": [{**group} for group in zero.param_groups]}
    first = optimizer.state.get(zero.engine.optimizer.single_partition_of_fp32_groups[0])
    if not first:  # no step yet: every process alike
        return {"state": {}, **groups}
    fragments = list(_fragments(zero, params))
    offsets = [0]
    for p in params:
        offsets.append(offsets[-1] + p.numel())
    full = {}
    for key in ADAM_STATE:
        flat = torch.zeros(offsets[-1], dtype=torch.float32, device=params[0].device)
        for start, fragment in zip(offsets, fragments):
            if fragment is not None:
                lp, partition, hp = fragment
                flat[start + lp.start : start + lp.stop] = optimizer.state[partition][key][hp].to(flat.device)
        dist.all_reduce(flat)  # each element is held by exactly one process
        full[key] = flat.cpu()
    state = {
        index: {
            "step": first["step"].detach().cpu().clone(),
            **{key: full[key][offsets[index] : offsets[index + 1]].view_as(p).clone() for key in ADAM_STATE},
        }
        for index, p in enumerate(params)
    }
    return {"state": state, **groups}


@torch.no_grad()
def load_state(zero: Zero, params: list[torch.Tensor], optimizer_state: dict) -> None:
    """Put full weights (already copied into `params`) and a full optimizer state (the layout of
    full_optimizer_state) into this process's fp32 partitions."""
    optimizer = zero.engine.optimizer.optimizer
    entries = optimizer_state.get("state", {})
    for index, (p, fragment) in enumerate(zip(params, _fragments(zero, params))):
        if fragment is None:
            continue
        lp, partition, hp = fragment
        partition[hp] = p.detach().flatten()[lp].to(partition.device, partition.dtype)
        if not entries:
            continue
        entry = entries[index] if index in entries else entries[str(index)]
        slot = optimizer.state.setdefault(partition, {})
        for key in ADAM_STATE:
            if key not in slot:
                slot[key] = torch.zeros_like(partition)
            slot[key][hp] = entry[key].flatten()[lp].to(partition.device, partition.dtype)
        slot["step"] = entry["step"].clone()
    for group, saved in zip(optimizer.param_groups, optimizer_state.get("param_groups", [])):
        group.update({k: v for k, v in saved.items() if k != "params"})


def local_optimizer_numel(zero: Zero) -> int:
    """Elements of Adam state this process holds (per state tensor): its share of the trained weights."""
    return sum(int(p.numel()) for p in zero.engine.optimizer.single_partition_of_fp32_groups)
