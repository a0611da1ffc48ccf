"""Launch: the device, the accelerate process group and the sharding a launch asked for."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import torch

from . import zero as deepspeed_zero
from .config import TrainConfig, validate
from .sharding import check_sharding_world, env_flag, launched_with_fsdp

# accelerate's launcher sets these for engines the trainer does not drive (FSDP and DeepSpeed ZeRO
# 1-2 it does: sharding.py, zero.py).
UNSUPPORTED_BACKENDS = {"ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}


def refuse_sharded_backends(environ: dict[str, str]) -> None:
    """Fail before any model loads when accelerate was launched with Megatron-LM: the trainer
    would silently run without it, with none of the memory savings the launch asked for."""
    asked = [name for key, name in UNSUPPORTED_BACKENDS.items() if env_flag(environ, key)]
    if asked:
        raise ValueError(
            f"accelerate was launched with {' and '.join(asked)}, which flowrl does not support. For sharded training "
            "use FSDP (`accelerate launch --use_fsdp --num_processes N -m flowrl train ...`, or fsdp=true in any multi-process "
            "launch) or DeepSpeed ZeRO 1-2 (`--use_deepspeed --zero_stage 2`, or zero_stage=2); for data parallel "
            "`accelerate launch --multi_gpu --num_processes N -m flowrl train ...`. LoRA (lora_rank > 0) and "
            "gradient_checkpointing=true keep the memory per process small."
        )


def adopt_launch(config: TrainConfig, environ: dict[str, str]) -> tuple[TrainConfig, str | None]:
    """The config with the sharding an accelerate launch asked for (--use_fsdp: fsdp=true;
    --use_deepspeed: its ZeRO stage, 2 when not given), and the DeepSpeed optimizer offload device."""
    changes: dict[str, Any] = {}
    offload = None
    if launched_with_fsdp(environ) and not config.fsdp:
        changes["fsdp"] = True
    if deepspeed_zero.launched_with_deepspeed(environ):
        settings = deepspeed_zero.launch_settings(environ)
        stage = 2 if settings["stage"] is None else int(settings["stage"])
        if config.zero_stage and config.zero_stage != stage:
            raise ValueError(
                f"config key zero_stage={config.zero_stage}, but accelerate was launched with DeepSpeed ZeRO stage {stage}; make them agree"
            )
        if stage not in (1, 2):
            raise ValueError(
                f"accelerate was launched with DeepSpeed ZeRO stage {stage}; flowrl drives stages 1 and 2 "
                "(stage 3 partitions the weights: use --use_fsdp, or fsdp=true)"
            )
        if settings["clipping"] is not None and settings["clipping"] != config.max_grad_norm:
            raise ValueError(
                f"accelerate was launched with DeepSpeed gradient clipping {settings['clipping']}, but config key "
                f"max_grad_norm={config.max_grad_norm}; flowrl clips by max_grad_norm: set it, or drop the launch's value"
            )
        changes["zero_stage"] = stage
        offload = settings["offload"]
    if not changes:
        return config, offload
    config = dataclasses.replace(config, **changes)
    validate(config)
    return config, offload


def choose_device(config: TrainConfig) -> torch.device:
    """cuda when available and device=auto, else what the config names (refused when absent)."""
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cpu" and is_large_model(config.policy):
            print(
                f"note: no CUDA device here, so {config.policy} trains on the CPU, which takes hours per iteration; "
                "device=cpu says that is meant",
                file=sys.stderr,
            )
        return device
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"config key device={config.device!r}: no CUDA device is available here (torch.cuda.is_available() is "
            "False); use device=auto or device=cpu"
        )
    return torch.device(config.device)


def is_large_model(policy: str) -> bool:
    """A diffusers pipeline (SD3, FLUX), as opposed to the toy model or a text policy."""
    from .llm.policy import is_text_source
    from .policies.loading import is_toy_source

    return not is_toy_source(policy) and not is_text_source(policy)


def uses_autocast(config: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast of the model calls: on CUDA by default, on the CPU when asked (fast with AMX)."""
    return config.mixed_precision == "bf16" or (config.mixed_precision == "auto" and device.type == "cuda")


class Processes:
    """The accelerate process group of a run: rank, world size and object gathering."""

    def __init__(self, config: TrainConfig, device: torch.device, log_dir: str) -> None:
        from accelerate import Accelerator

        self.trackers = [t for t in config.log_with.split(",") if t]
        self.accelerator = Accelerator(cpu=device.type == "cpu", log_with=self.trackers or None, project_dir=log_dir)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        if config.fsdp or config.zero_stage:
            check_sharding_world(self.world, os.environ, "fsdp" if config.fsdp else "zero_stage")

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value` (picklable), in rank order; [value] in a single process."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def start_trackers(self, config: TrainConfig) -> None:
        """tensorboard / wandb, with the config as flat scalars (trackers take numbers and strings)."""
        if self.trackers:
            import json

            flat = {
                k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in config.to_dict().items()
            }
            self.accelerator.init_trackers("flowrl", config=flat)

    def log(self, record: dict[str, Any]) -> None:
        self.accelerator.log({k: v for k, v in record.items() if k != "iteration"}, step=record["iteration"])

    def log_image(self, name: str, path: Path, step: int) -> None:
        """An image file (an evaluation's sample grid) to the trackers that take images."""
        if not self.trackers or not path.is_file():
            return
        import numpy as np
        from PIL import Image

        array = np.asarray(Image.open(path).convert("RGB"))
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({name: array[None]}, step=step, dataformats="NHWC")
            elif hasattr(tracker, "log_images"):  # wandb: one wandb.Image per array
                tracker.log_images({name: [array]}, step=step)

    def end(self) -> None:
        """Every process takes the group down together: one leaving while a peer still worked on
        collectives aborted now and then ("terminate called without an active exception")."""
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()


def load_policy(config: TrainConfig, device: torch.device):
    """The policy named by config.policy. Diffusers weights load in bf16 on CUDA when only LoRA
    adapters train (weights_dtype=auto), and in float32 otherwise: full fine-tuning keeps float32
    master weights for AdamW."""
    from .policies.loading import load_policy as load

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    dtype = dtypes.get(config.weights_dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" and config.lora_rank > 0 else torch.float32
    return load(config.policy, device=device, dtype=dtype, resolution=config.resolution)
