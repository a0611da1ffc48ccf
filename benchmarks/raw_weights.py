"""Export a finished run's raw (non-EMA) weights beside the EMA export, to tell what the EMA hides.

    python benchmarks/raw_weights.py runs/toy runs/toy_raw
    flowrl eval toyshapes --checkpoint runs/toy_raw/final

The trainer is rebuilt from RUN/config.json, resumes from a copy of RUN/checkpoint in OUT, drops
its EMA and exports as usual, so OUT/final has the same format as RUN/final.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path


def export_raw_weights(run: str | Path, out: str | Path) -> Path:
    """Write the raw weights of `run`'s last checkpoint to `out`/final; returns that directory."""
    from flowrl.config import load_config
    from flowrl.trainer import Trainer

    run, out = Path(run), Path(out)
    if not (run / "checkpoint").is_dir() or not (run / "config.json").is_file():
        raise ValueError(f"{run} is not a run directory: it needs config.json and checkpoint/")
    if out.resolve() == run.resolve():
        raise ValueError(f"the output directory must differ from the run directory {run}")
    shutil.copytree(run / "checkpoint", out / "checkpoint", dirs_exist_ok=True)
    trainer = Trainer(dataclasses.replace(load_config(run / "config.json"), out=str(out)))
    try:
        if not trainer.checkpoints.resume():
            raise ValueError(f"{run}/checkpoint could not be resumed")
        trainer.ema = None
        return trainer.export()
    finally:
        trainer.close()  # out is free for another run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory (config.json and checkpoint/)")
    parser.add_argument("out", help="where the raw export goes (OUT/final)")
    args = parser.parse_args(argv)
    try:
        print(export_raw_weights(args.run, args.out))
    except ValueError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
