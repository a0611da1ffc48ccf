"""Worker for the distributed test: train with key=value overrides, then write this process's
trainable parameters to OUT/params_rank{rank}.safetensors."""

import sys
from pathlib import Path

from safetensors.torch import save_file

from flowrl.config import build_config
from flowrl.trainer import Trainer

if __name__ == "__main__":
    config = build_config({}, sys.argv[1:])
    trainer = Trainer(config)
    trainer.train()
    params = {name: p.detach().contiguous() for name, p in trainer.params.items()}
    save_file(params, str(Path(config.out) / f"params_rank{trainer.rank}.safetensors"))
