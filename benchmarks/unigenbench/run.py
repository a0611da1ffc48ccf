"""`flowrl eval unigenbench`: prompts -> images -> judgments -> results and reports, in one run
directory that a rerun continues (images on disk and judgments in the store are not redone).

    OUT/images/{index}_{k}.png   OUT/judgments.sqlite   OUT/results.json|md|csv   OUT/report.html
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .aggregate import aggregate
from .download import resolve_prompt_file
from .generate import IMAGES_PER_PROMPT, generate_images, image_name
from .judge import Judge
from .prompts import load_prompts_report
from .report import write_reports
from .store import JudgmentStore

# Sampling defaults per backend: the toy model's own, and the papers' evaluation settings.
SAMPLING = {
    "toy": {"steps": 20, "guidance": 4.0, "shift": 1.0},
    "sd3": {"steps": 40, "guidance": 4.5, "shift": 3.0},
    "flux": {"steps": 28, "guidance": 3.5, "shift": 3.0},
}


@dataclass
class UniGenBenchRun:
    """Everything one evaluation needs; None sampling values take the backend's defaults."""

    prompts: str
    policy: str
    out: str
    images_per_prompt: int = IMAGES_PER_PROMPT
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    shift: float | None = None
    resolution: int | None = None
    batch_size: int = 4
    device: str = "auto"
    limit: int = 0  # evaluate only the first N prompts (0: all)
    on_bad_row: str = "stop"
    judge: dict = field(default_factory=dict)  # Judge keyword options (base_url, model, concurrency, ...)
    judge_only: bool = False  # judge and report images already on disk; load no model


def backend_of(policy) -> str:
    from flowrl.policies.flux import FluxPolicy
    from flowrl.policies.toy import ToyPolicy

    return "toy" if isinstance(policy, ToyPolicy) else ("flux" if isinstance(policy, FluxPolicy) else "sd3")


def generate_step(run: UniGenBenchRun, prompts: list, image_dir: Path, progress: bool) -> dict:
    """Load the policy and draw the missing images (generate_images skips those on disk)."""
    from flowrl.policies.loading import load_trained_policy

    device = (
        "cuda"
        if run.device == "auto" and torch.cuda.is_available()
        else ("cpu" if run.device == "auto" else run.device)
    )
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    policy = load_trained_policy(run.policy, device=device, dtype=dtype, resolution=run.resolution)
    sampling = dict(SAMPLING[backend_of(policy)])
    sampling.update({k: getattr(run, k) for k in sampling if getattr(run, k) is not None})
    return generate_images(
        policy,
        prompts,
        image_dir,
        run.images_per_prompt,
        run.seed,
        batch_size=run.batch_size,
        progress=progress,
        **sampling,
    )


def run_unigenbench(run: UniGenBenchRun, progress: bool = True) -> dict:
    """Run every stage that is not done yet and write the results; returns a summary with the
    counts of each stage and the report paths."""
    out = Path(run.out)
    image_dir = out / "images"
    loaded = load_prompts_report(resolve_prompt_file(run.prompts), on_error=run.on_bad_row)
    prompts = loaded.prompts[: run.limit] if run.limit else loaded.prompts
    if not prompts:
        raise ValueError(f"{run.prompts}: no prompts to evaluate")
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(vars(run), indent=2))
    started = time.time()
    expected = [(image_dir / image_name(p.index, k), p) for p in prompts for k in range(run.images_per_prompt)]
    present = sum(path.is_file() for path, _ in expected)
    if run.judge_only or present == len(expected):  # nothing to draw: load no model
        generated = {"generated": 0, "existing": present}
    else:
        generated = generate_step(run, prompts, image_dir, progress)
    items = [(path, prompt) for path, prompt in expected if path.is_file()]
    judge = Judge(**{"language": loaded.language, **run.judge})  # judge in the prompt file's language
    with JudgmentStore(out / "judgments.sqlite") as store:
        judged = judge.judge_all(items, store, progress=progress)
        wanted = {path.name for path, _ in items}
        verdicts = [v for v in store.verdicts() if v.image in wanted]
    meta = {
        "policy": run.policy,
        "prompts": str(run.prompts),
        "judge_model": judge.model,
        "judge_url": judge.base_url,
        "images_per_prompt": run.images_per_prompt,
        "seed": run.seed,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "skipped_rows": [f"row {s.line}: {s.reason}" for s in loaded.skipped],
    }
    results = aggregate(prompts, verdicts, images_per_prompt=run.images_per_prompt, meta=meta)
    paths = write_reports(results, prompts, verdicts, image_dir, out)
    return {
        "prompts": len(prompts),
        **generated,
        "judged": judged["judged"],
        "already_judged": judged["skipped"],
        "failed": judged["failed"],
        "overall": results.overall,
        "seconds": time.time() - started,
        "reports": {k: str(v) for k, v in paths.items()},
    }
