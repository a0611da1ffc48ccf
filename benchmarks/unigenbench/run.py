"""`flowrl eval unigenbench`: prompts -> images -> judgments -> results and reports, in one run
directory that a rerun continues (images on disk and judgments in the store are not redone).

    OUT/images/{index}_{k}.png   OUT/judgments.sqlite   OUT/results.json|md|csv   OUT/report.html
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .aggregate import aggregate
from .download import resolve_prompt_file
from .generate import IMAGES_PER_PROMPT, generate_images, image_name
from .interop import write_official_results
from .judge import Judge
from .prompts import load_prompts_report
from .protocol import OfficialProtocol
from .report import write_reports
from .store import JudgmentStore

PROTOCOLS = ("official", "flowrl")
SAMPLINGS = ("flowrl", "official")  # our defaults per backend, or the official inference script's
OFFICIAL_RESOLUTION = 1024  # the official FLUX.1-dev inference: 30 steps, guidance 3.5, seeds 3407 + k
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
    protocol: str = "official"  # the official judging request and answer rule, or flowrl (our prompt)
    regenerate: bool = False  # settings changed: draw the images again (and judge them again)
    rejudge: bool = False  # judge settings changed: judge the images again
    sampling: str = "flowrl"  # or official: the official inference settings (published for FLUX.1-dev)
    images: str | None = None  # the image folder (default OUT/images), e.g. the official eval_data/<category>/<model>
    image_suffix: str = ".png"  # the images' file suffix (another than .png only with judge_only)


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
    official = run.sampling == "official"
    resolution = run.resolution or (OFFICIAL_RESOLUTION if official else None)
    policy = load_trained_policy(run.policy, device=device, dtype=dtype, resolution=resolution)
    backend = backend_of(policy)
    if official and backend != "flux":
        raise ValueError(
            f"--sampling official: the official inference settings are published for FLUX.1-dev only, not for "
            f"this {backend} checkpoint; use --sampling flowrl"
        )
    sampling = dict(SAMPLING[backend])
    if official:
        sampling.update(steps=30, guidance=3.5, shift=flux_dynamic_shift(policy, resolution))
    sampling.update({k: getattr(run, k) for k in sampling if getattr(run, k) is not None})
    return generate_images(
        policy,
        prompts,
        image_dir,
        run.images_per_prompt,
        run.seed,
        batch_size=run.batch_size,
        progress=progress,
        seeds="official" if official else "flowrl",
        grid="time_shift" if official else "scheduler",  # FLUX's pipeline: linspace(1, 1/N, N), shifted
        **sampling,
    )


def flux_dynamic_shift(policy, resolution: int) -> float:
    """FLUX's resolution-dependent shift as a constant one: exp(mu), mu linear in the number of
    image tokens between the scheduler's base and max settings (1.15 at 1024 px: shift 3.16)."""
    config = dict(getattr(getattr(getattr(policy, "pipeline", None), "scheduler", None), "config", {}) or {})
    low, high = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    tokens = (resolution // 16) ** 2  # 8x VAE, then 2x2 patches
    return math.exp(base + (top - base) * (tokens - low) / (high - low))


def fingerprint(run: UniGenBenchRun, prompt_file: Path, prompts: list, judge: Judge) -> dict:
    """What the images and the verdicts of a run folder were made with: a rerun that differs would
    mix results of two settings under one label."""
    listed = [[p.index, p.text, [[t.name, t.description] for t in p.testpoints]] for p in prompts]
    images = {
        "policy": run.policy,
        "prompt_file_sha256": hashlib.sha256(prompt_file.read_bytes()).hexdigest(),
        "prompts_sha256": hashlib.sha256(json.dumps(listed, ensure_ascii=False).encode()).hexdigest(),
        **{
            key: getattr(run, key)
            for key in ("images_per_prompt", "seed", "steps", "guidance", "shift", "resolution", "sampling")
        },
    }
    protocol = judge.protocol.fingerprint if judge.protocol is not None else "flowrl"
    instruction = hashlib.sha256(judge.instruction.encode()).hexdigest() if judge.protocol is None else None
    judging = {"judge_model": judge.model, "protocol": protocol, "instruction_sha256": instruction}
    return {"images": images, "judging": judging}


def check_folder(out: Path, images: Path, run: UniGenBenchRun, current: dict) -> dict:
    """The fingerprint to record: refuses a rerun whose settings differ from the folder's (naming
    what differs) unless asked to regenerate or re-judge, which clears what the change invalidates."""
    path = out / "fingerprint.json"
    stored = json.loads(path.read_text()) if path.is_file() else None
    store = out / "judgments.sqlite"
    if run.regenerate and images.resolve() != (out / "images").resolve():
        raise ValueError(f"--regenerate deletes images; it is refused for a folder outside --out ({images})")
    has_images = images.is_dir() and any(images.iterdir())
    if stored is None:
        if (has_images or store.is_file()) and not run.judge_only:
            if not run.regenerate:
                raise ValueError(
                    f"{out} holds images or verdicts made with unknown settings (no fingerprint.json); use a new "
                    "--out, --judge-only to judge those images, or --regenerate to draw them again"
                )
            store.unlink(missing_ok=True)
            shutil.rmtree(images, ignore_errors=True)
        return current
    if run.judge_only:  # the images are the folder's: keep what they were made with
        current = {**current, "images": stored["images"]}
    changed_images = sorted(k for k in current["images"] if current["images"][k] != stored["images"].get(k))
    changed_judging = sorted(k for k in current["judging"] if current["judging"][k] != stored["judging"].get(k))
    if changed_images and has_images and not run.regenerate:
        described = ", ".join(f"{k} {stored['images'].get(k)!r} -> {current['images'][k]!r}" for k in changed_images)
        raise ValueError(
            f"{out} holds images made with other settings ({described}); use a new --out, or --regenerate to draw "
            "and judge them again"
        )
    if (changed_images and run.regenerate) or (changed_judging and store.is_file()):
        if changed_judging and not changed_images and not run.rejudge:
            described = ", ".join(
                f"{k} {stored['judging'].get(k)!r} -> {current['judging'][k]!r}" for k in changed_judging
            )
            raise ValueError(
                f"{out} holds verdicts of another judge ({described}); use a new --out, or --rejudge to judge again"
            )
        store.unlink(missing_ok=True)
        if changed_images:
            shutil.rmtree(images, ignore_errors=True)
    return current


def prompt_source(sha256: str) -> str | None:
    """The official file a prompt file is (by its sha256): repository, commit and path; else None."""
    from .download import COMMIT, SHA256

    official = {digest: file for file, digest in SHA256.items()}
    return f"CodeGoat24/UniGenBench@{COMMIT}:data/{official[sha256]}" if sha256 in official else None


def run_unigenbench(run: UniGenBenchRun, progress: bool = True) -> dict:
    """Run every stage that is not done yet and write the results; returns a summary with the
    counts of each stage and the report paths."""
    out = Path(run.out)
    image_dir = Path(run.images) if run.images else out / "images"
    if run.image_suffix != ".png" and not run.judge_only:
        raise ValueError(f"image_suffix {run.image_suffix!r}: images are drawn as .png; other suffixes with judge_only")
    prompt_file = resolve_prompt_file(run.prompts)
    loaded = load_prompts_report(prompt_file, on_error=run.on_bad_row)
    prompts = loaded.prompts[: run.limit] if run.limit else loaded.prompts
    if not prompts:
        raise ValueError(f"{run.prompts}: no prompts to evaluate")
    if run.protocol not in PROTOCOLS or run.sampling not in SAMPLINGS:
        raise ValueError(
            f"need protocol in {PROTOCOLS} and sampling in {SAMPLINGS}, got {run.protocol!r}, {run.sampling!r}"
        )
    protocol = OfficialProtocol.load(loaded.language) if run.protocol == "official" else None
    # judge in the prompt file's language; built before any image is drawn, so a bad option fails first
    judge = Judge(**{"language": loaded.language, **run.judge, "protocol": protocol})
    out.mkdir(parents=True, exist_ok=True)
    recorded = check_folder(out, image_dir, run, fingerprint(run, prompt_file, prompts, judge))
    (out / "fingerprint.json").write_text(json.dumps(recorded, indent=2))
    (out / "run.json").write_text(json.dumps(vars(run), indent=2))
    started = time.time()
    expected = [
        (image_dir / image_name(p.index, k).replace(".png", run.image_suffix), p)
        for p in prompts
        for k in range(run.images_per_prompt)
    ]
    present = sum(path.is_file() for path, _ in expected)
    with JudgmentStore(out / "judgments.sqlite") as store:
        judged_before = store.done_images()
    # images to judge ahead (drawn by this run, or on disk): the judge must answer before any work
    if any(p.name not in judged_before and (p.is_file() or not run.judge_only) for p, _ in expected):
        judge.check_server()
    if run.judge_only or present == len(expected):  # nothing to draw: load no model
        generated = {"generated": 0, "existing": present}
    else:
        generated = generate_step(run, prompts, image_dir, progress)
    items = [(path, prompt) for path, prompt in expected if path.is_file()]
    with JudgmentStore(out / "judgments.sqlite") as store:
        judged = judge.judge_all(items, store, progress=progress)
        wanted = {path.name for path, _ in items}
        verdicts = [v for v in store.verdicts() if v.image in wanted]
    meta = {
        "policy": recorded["images"]["policy"],
        "prompts": str(run.prompts),
        "prompt_file_sha256": recorded["images"]["prompt_file_sha256"],
        "prompt_file_source": prompt_source(recorded["images"]["prompt_file_sha256"]),
        "judge_model": judge.model,
        "judge_url": judge.base_url,
        "protocol": run.protocol,
        "protocol_sha256": recorded["judging"]["protocol"] if protocol is not None else None,
        "images_per_prompt": run.images_per_prompt,
        "seed": run.seed,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "skipped_rows": [
            f"index {s.index}: {s.reason}" if s.index is not None else f"row {s.line}: {s.reason}"
            for s in loaded.skipped
        ],
        "missing_images": len(expected) - len(items),
        "fixed_rows": loaded.fixed,
        "judge_usage": dict(judge.usage),  # this run's requests and tokens (not those of earlier runs)
    }
    results = aggregate(prompts, verdicts, images_per_prompt=run.images_per_prompt, meta=meta, suffix=run.image_suffix)
    paths = write_reports(results, prompts, verdicts, image_dir, out)
    with JudgmentStore(out / "judgments.sqlite") as store:  # the official per-image file, for side-by-side checks
        paths["official_csv"] = write_official_results(
            out / "official_results.csv", prompts, verdicts, store, image_dir
        )
    return {
        "prompts": len(prompts),
        **generated,
        "judged": judged["judged"],
        "already_judged": judged["skipped"],
        "failed": judged["failed"],
        "missing": len(expected) - len(items),
        "usage": dict(judge.usage),
        "overall": results.overall if verdicts else None,
        "seconds": time.time() - started,
        "reports": {k: str(v) for k, v in paths.items()},
    }
