"""Sharded data parallel training (PyTorch FSDP2, `fully_shard`) of the policy's transformer.

Each process keeps 1/world of the trained weights, their gradients and the optimizer state; a
forward all-gathers one transformer block at a time and a backward reduce-scatters (averages) the
gradients. Collectives need every process to make the same calls, so the trainer keeps its update
in lockstep and runs rollouts and rank-0 evaluation inside `unsharded`, where the weights are
all-gathered once and the forwards are local.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

# Block lists of the networks we shard, one FSDP unit each (SD3 and the toy model; FLUX adds its
# single-stream blocks; Llama-style causal LMs keep theirs in model.layers, GPT-2 in transformer.h).
# The root unit holds what is left (embeddings, final norm and projection or LM head).
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "model.layers", "transformer.h")


def block_list(network: torch.nn.Module, path: str) -> list[torch.nn.Module]:
    """The blocks at a dotted attribute path of `network` (none when it has no such path)."""
    value = network
    for name in path.split("."):
        value = getattr(value, name, None)
        if value is None:
            return []
    return list(value) if isinstance(value, torch.nn.ModuleList) else []


def env_flag(environ: Mapping[str, str], key: str, default: bool = False) -> bool:
    """A boolean setting of accelerate's launcher ("true"/"false") in `environ`."""
    return environ.get(key, str(default)).lower() in ("1", "true", "yes")


def launched_with_fsdp(environ: Mapping[str, str]) -> bool:
    """Whether accelerate was launched with `--use_fsdp` (or a config that enables FSDP)."""
    return env_flag(environ, "ACCELERATE_USE_FSDP")


def check_sharding_world(world: int, environ: Mapping[str, str], key: str = "fsdp") -> None:
    """Fail unless this process is one of 2 or more joined processes (before any model loads);
    `key` names the sharding setting (fsdp or zero_stage) in the message."""
    if world >= 2:
        return
    launched = int(environ.get("WORLD_SIZE", "1"))
    if launched > world:  # accelerate's --use_fsdp forms no process group without CUDA
        advice = (
            "accelerate's --use_fsdp joins processes on CUDA only; on the CPU launch with --multi_gpu and fsdp=true (they join over gloo)"
            if key == "fsdp"
            else "launch with accelerate launch --multi_gpu (or --use_deepspeed) --num_processes N"
        )
        raise ValueError(
            f"{key}: {launched} processes were launched but they did not join (this one sees {world}); {advice}"
        )
    raise ValueError(
        f"{key} shards across processes, but this run has {world}; launch 2 or more (accelerate launch --num_processes N ...)"
    )


@dataclass
class Sharded:
    """A transformer sharded in place: its FSDP units (blocks first, root last) and the setting
    they return to after `unsharded`."""

    units: list[torch.nn.Module]
    reshard_after_forward: bool


def reshard_after_forward(environ: Mapping[str, str]) -> bool:
    """accelerate's FSDP_RESHARD_AFTER_FORWARD: true/false (FSDP2) or an FSDP-1 sharding strategy
    (FULL_SHARD and HYBRID_SHARD free the weights after forward; SHARD_GRAD_OP and NO_SHARD keep them)."""
    value = environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").strip().lower()
    return value not in ("false", "0", "no", "shard_grad_op", "no_shard", "2", "3")


def shard_transformer(transformer: torch.nn.Module, device: torch.device, environ: Mapping[str, str]) -> Sharded:
    """Shard `transformer` in place across the processes of the default process group, one FSDP
    unit per block plus the root. Honours accelerate's FSDP launch settings
    FSDP_RESHARD_AFTER_FORWARD (default true) and FSDP_OFFLOAD_PARAMS (default false)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    reshard = reshard_after_forward(environ)
    options = {
        "mesh": init_device_mesh(device.type, (dist.get_world_size(),)),
        "reshard_after_forward": reshard,
        "offload_policy": CPUOffloadPolicy() if env_flag(environ, "FSDP_OFFLOAD_PARAMS") else OffloadPolicy(),
    }
    units = []
    for path in BLOCK_LISTS:
        for block in block_list(transformer, path):
            fully_shard(block, **options)
            units.append(block)
    fully_shard(transformer, **options)
    return Sharded([*units, transformer], reshard)


@contextlib.contextmanager
def unsharded(sharded: Sharded | None) -> Iterator[None]:
    """Hold every unit's full weights (one all-gather on every process) so that the forwards inside
    need no collectives: rollouts of uneven size, or an evaluation on rank 0 only. No gradients."""
    if sharded is None:
        yield
        return
    for unit in sharded.units:
        unit.set_reshard_after_forward(False)
        unit.unshard()
    try:
        with torch.no_grad():
            yield
    finally:
        for unit in sharded.units:
            unit.reshard()
            unit.set_reshard_after_forward(sharded.reshard_after_forward)


def is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensors(values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain CPU copies of `values`, sharded ones all-gathered (every process must call this)."""
    return {n: (t.full_tensor() if is_sharded(t) else t).detach().cpu().contiguous() for n, t in values.items()}


@torch.no_grad()
def load_full(targets: Mapping[str, torch.Tensor], values: Mapping[str, torch.Tensor]) -> None:
    """Copy full tensors `values` into `targets` in place, each process keeping its own shard."""
    from torch.distributed.tensor import distribute_tensor

    for n, target in targets.items():
        value = values[n].to(target.device, target.dtype)
        if is_sharded(target):
            # Every process holds the whole value (read from the same checkpoint): slice, no broadcast.
            value = distribute_tensor(value, target.device_mesh, target.placements, src_data_rank=None)
        target.copy_(value)


def total_norm(norm: torch.Tensor) -> float:
    """The float of a gradient norm from clip_grad_norm_, which is a DTensor for sharded grads."""
    return float(norm.full_tensor() if is_sharded(norm) else norm)


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() with every sharded state tensor all-gathered to a plain CPU tensor,
    so sharded and unsharded runs write the same checkpoint (every process must call this)."""
    state = optimizer.state_dict()

    def gathered(entry: dict) -> dict:
        return {**entry, **full_tensors({k: v for k, v in entry.items() if isinstance(v, torch.Tensor)})}

    return {**state, "state": {i: gathered(s) for i, s in state["state"].items()}}


def shard_optimizer_state(state: dict, params: list[torch.Tensor]) -> dict:
    """A full optimizer state (as written by full_optimizer_state) cut to this process's shards of
    `params` (the optimizer's parameters, in order), ready for optimizer.load_state_dict."""
    from torch.distributed.tensor import distribute_tensor

    def cut(value, param):
        if is_sharded(param) and isinstance(value, torch.Tensor) and value.shape == param.shape:
            return distribute_tensor(
                value.to(param.device, param.dtype), param.device_mesh, param.placements, src_data_rank=None
            )
        return value

    return {**state, "state": {i: {k: cut(v, params[int(i)]) for k, v in s.items()} for i, s in state["state"].items()}}


def plain_replica(transformer: torch.nn.Module) -> torch.nn.Module:
    """An unsharded copy of a sharded `transformer` inside `unsharded` (same class, config, LoRA
    adapters, weights and dtypes), for the diffusers, toy and transformers exporters, which expect
    plain modules.
    Built on the meta device and then given copies of the gathered tensors: no second random init."""
    from torch.distributed.fsdp import FSDPModule

    original = next(c for c in type(transformer).__mro__ if not issubclass(c, FSDPModule))
    tensors = {n: t.detach() for n, t in [*transformer.named_parameters(), *transformer.named_buffers()]}
    if any(is_sharded(t) for t in tensors.values()):
        raise RuntimeError("plain_replica needs the transformer's weights gathered (call it inside sharding.unsharded)")
    text = getattr(transformer, "flowrl_peft_layers", False) or not hasattr(original, "from_config")
    with torch.device("meta"):
        # diffusers and the toy build from a config with from_config, transformers with _from_config
        replica = original._from_config(transformer.config) if text else original.from_config(transformer.config)
        for name, adapter in getattr(transformer, "peft_config", {}).items():
            if getattr(transformer, "flowrl_peft_layers", False):  # peft's own injection, as adapters.add_lora
                from peft import inject_adapter_in_model

                inject_adapter_in_model(adapter, replica, adapter_name=name)
                replica.flowrl_peft_layers = True
            else:
                replica.add_adapter(adapter, adapter_name=name)
    names = [n for n, _ in replica.named_parameters()] + [n for n, _ in replica.named_buffers()]
    if sorted(names) != sorted(tensors):
        raise RuntimeError(
            f"the replica's tensors differ from the transformer's: {sorted(set(names) ^ set(tensors))[:5]}"
        )
    for name in names:
        module_name, _, leaf = name.rpartition(".")
        module = replica.get_submodule(module_name)
        value = tensors[name].clone()
        if leaf in module._parameters:
            module._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
        else:
            module._buffers[leaf] = value
    if text and getattr(transformer.config, "tie_word_embeddings", False):
        replica.tie_weights()  # the head shares the embedding again (tied tensors are listed once)
    return replica
