"""Worker for the distributed test: train with key=value overrides, then write this process's
trainable parameters (whole, gathered when sharded) to OUT/params_rank{rank}.safetensors and
what it held locally to OUT/local_rank{rank}.json: elements per parameter, elements of each Adam state
tensor (ZeRO partitions them) and idle passes (FSDP and ZeRO keep the processes in step)."""

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from flowrl.config import build_config
from flowrl.sharding import full_tensors, is_sharded
from flowrl.trainer import Trainer
from flowrl.zero import local_optimizer_numel

if __name__ == "__main__":
    config = build_config({}, sys.argv[1:])
    trainer = Trainer(config)
    idle = []
    original = trainer.objective.idle_loss
    trainer.objective.idle_loss = lambda *args, **kwargs: (
        idle.append(trainer.progress.iteration),
        original(*args, **kwargs),
    )[1]

    def dump():
        params = full_tensors(trainer.params)  # a collective when sharded: while the process group is up
        save_file(params, str(Path(config.out) / f"params_rank{trainer.rank}.safetensors"))
        local = {n: (p.to_local() if is_sharded(p) else p).numel() for n, p in trainer.params.items()}
        optimizer = local_optimizer_numel(trainer.backend.zero) if trainer.backend.zero else None
        (Path(config.out) / f"local_rank{trainer.rank}.json").write_text(
            json.dumps({"numel": local, "optimizer_numel": optimizer, "idle_passes": idle})
        )

    export = trainer.export
    trainer.export = lambda: (export(), dump())[0]  # the last step of train() before end_training
    trainer.train()
