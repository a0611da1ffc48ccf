"""The training backend across processes: replicated data parallel (one process or DP), FSDP2
(fsdp=true) or DeepSpeed ZeRO 1-2 (zero_stage). It owns how gradients are reduced, how the
optimizer steps and how the optimizer state is gathered for a checkpoint and cut on resume."""

from __future__ import annotations

import contextlib
import os

import torch

from . import zero as deepspeed_zero
from .config import TrainConfig
from .sharding import (
    full_optimizer_state,
    plain_replica,
    shard_optimizer_state,
    shard_transformer,
    total_norm,
    unsharded,
)


class TrainingBackend:
    """Built on the trained network before its parameters are collected (FSDP shards it in
    place), then `attach`ed to the parameters and their optimizer (ZeRO wraps it)."""

    def __init__(self, config: TrainConfig, network: torch.nn.Module, device: torch.device, world: int) -> None:
        self.config, self.network, self.world = config, network, world
        self.sharded = (
            shard_transformer(network, device, os.environ) if config.fsdp else None
        )  # the FSDP units, or None
        self.zero = None  # the DeepSpeed engine under ZeRO
        self.params: dict[str, torch.nn.Parameter] = {}
        self.optimizer: torch.optim.Optimizer | None = None

    def attach(
        self, params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer, offload: str | None
    ) -> None:
        self.params, self.optimizer = params, optimizer
        if self.config.zero_stage:  # the engine partitions this optimizer's state (and the gradients)
            self.zero = deepspeed_zero.wrap(
                self.network,
                optimizer,
                self.config.zero_stage,
                self.config.max_grad_norm,
                offload,
                self.config.micro_batch,
            )

    @property
    def lockstep(self) -> bool:
        """Whether backward passes hold collectives, so every process must make the same number."""
        return self.sharded is not None or self.zero is not None

    def unsharded(self) -> contextlib.AbstractContextManager:
        """The whole weights on every process (one all-gather when sharded)."""
        return unsharded(self.sharded)

    def zero_grad(self) -> None:
        if self.zero is None:  # the engine zeroes its own (its offloaded partitions keep their buffers)
            self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """loss.backward(), through the DeepSpeed engine under ZeRO (`last`: the step's final pass)."""
        if self.zero is not None:
            deepspeed_zero.backward(self.zero, loss, last)
        else:
            loss.backward()

    def step(self) -> float | None:
        """Average the gradients over processes, clip them to max_grad_norm and step; returns the
        norm before clipping (None when clipping is off)."""
        if self.zero is not None:  # the engine clips by max_grad_norm and steps
            norm = deepspeed_zero.step(self.zero)
            return norm if self.config.max_grad_norm > 0 else None
        self.average_gradients()
        norm = None
        if self.config.max_grad_norm > 0:
            norm = total_norm(torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.config.max_grad_norm))
        self.optimizer.step()
        return norm

    def average_gradients(self) -> None:
        """All-reduce the gradients (mean over processes) in one flat buffer; a parameter without
        a gradient on some process counts as zero there, so every process joins the same call."""
        if self.world == 1 or self.lockstep:  # FSDP's and ZeRO's backward passes reduce (average) them themselves
            return
        import torch.distributed as dist

        params = list(self.params.values())
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def full_optimizer_state(self) -> dict:
        """The optimizer state as one process holding everything would have it (every process calls it)."""
        if self.zero is not None:  # each process holds a partition of the optimizer state
            return deepspeed_zero.full_optimizer_state(self.zero, list(self.params.values()))
        return full_optimizer_state(self.optimizer)

    def load_optimizer_state(self, state: dict) -> None:
        if self.zero is not None:
            deepspeed_zero.load_state(self.zero, list(self.params.values()), state)
        else:
            self.optimizer.load_state_dict(shard_optimizer_state(state, list(self.params.values())))

    def exportable(self) -> torch.nn.Module:
        """The network with whole weights to export: a plain copy of the gathered weights when
        sharded (call inside `unsharded`), else the network itself."""
        return plain_replica(self.network) if self.sharded is not None else self.network
