"""Rewards by name: the built-ins, user registrations, installed plug-ins and `module:object`.

`load("pickscore", device="cuda")` builds a reward. A name resolves, in order, to a reward
registered in this process (`register_reward`), a built-in, an entry point of the
`flowrl.rewards` group of an installed package, `remote:http://host:port` (a served reward),
`pairwise:NAME` (Bradley-Terry comparisons from a pointwise reward), or `package.module:object`.
Built-ins are imported only when loaded, so listing them costs nothing.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

import torch

from flowrl.registry import Registry

from .base import is_pairwise

ENTRY_POINT_GROUP = "flowrl.rewards"

# name -> (target "module:object", fixed options, one-line description)
BUILTIN: dict[str, tuple[str, dict, str]] = {
    "toyshapes": (
        "flowrl.rewards.toyshapes:ToyShapesReward",
        {},
        "ToyShapes verifier, partial credit per object and attribute",
    ),
    "toyshapes_binary": (
        "flowrl.rewards.toyshapes:ToyShapesReward",
        {"binary": True},
        "ToyShapes verifier, 1 only when the image is exactly right",
    ),
    "hpsv2": (
        "flowrl.rewards.hps:HPSReward",
        {"version": "v2.1"},
        "HPSv2.1 human preference score (open_clip ViT-H-14), as Flow-GRPO, DanceGRPO and Pref-GRPO use",
    ),
    "hpsv2.0": (
        "flowrl.rewards.hps:HPSReward",
        {"version": "v2.0"},
        "HPSv2.0 human preference score (open_clip ViT-H-14)",
    ),
    "hpsv2.1": (
        "flowrl.rewards.hps:HPSReward",
        {"version": "v2.1"},
        "HPSv2.1 human preference score (open_clip ViT-H-14)",
    ),
    "pickscore": ("flowrl.rewards.pickscore:PickScoreReward", {}, "PickScore (transformers CLIPModel)"),
    "imagereward": (
        "flowrl.rewards.image_reward:ImageRewardReward",
        {},
        "ImageReward (BLIP; the official checkpoint, loaded natively)",
    ),
    "clip": ("flowrl.rewards.clip_score:CLIPScoreReward", {}, "CLIP image-text similarity (open_clip)"),
    "aesthetic": ("flowrl.rewards.aesthetic:AestheticReward", {}, "LAION aesthetic predictor (CLIP ViT-L/14 + MLP)"),
    "ocr": ("flowrl.rewards.ocr:OCRReward", {}, "text accuracy of the quoted text in the prompt (rapidocr)"),
    "geneval": (
        "flowrl.rewards.geneval:GenEvalReward",
        {},
        "GenEval-style compositional check: OWLv2 detector + CLIP colours (partial or strict)",
    ),
    "jpeg_compressibility": ("flowrl.rewards.jpeg:JPEGReward", {"sign": -1.0}, "minus the JPEG size in kB (DDPO)"),
    "jpeg_incompressibility": ("flowrl.rewards.jpeg:JPEGReward", {"sign": 1.0}, "the JPEG size in kB (DDPO)"),
    "vlm_judge": (
        "flowrl.rewards.vlm_judge:VLMJudge",
        {},
        "pairwise VLM judge over an OpenAI-compatible API (UnifiedReward-Think)",
    ),
}

# Rewards registered in this process; a reward's options are its constructor's keyword arguments,
# checked against its signature before any weights load (check_options).
REWARDS = Registry("reward")


def register_reward(name: str) -> Callable:
    """Decorator: make a reward class, factory or function loadable by `name` in this process."""
    if name in BUILTIN:
        raise ValueError(f"a reward named {name!r} is already registered")
    return REWARDS.register(name)


def check_options(name: str, options: dict) -> None:
    """Fail when `options` are not keyword arguments the reward `name` takes (nothing is built)."""
    if not options or name.startswith(("remote:", "pairwise:")):
        return
    target, fixed = resolve(name)
    if not (isinstance(target, type) or (callable(target) and _is_factory(target))):
        raise ValueError(f"reward {name!r} takes no options, got {sorted(options)}")
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        known = sorted(
            k for k, p in parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and k not in fixed
        )
        raise ValueError(f"reward {name!r} has no option(s) {unknown}; known options: {known}")


def _plugins() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> dict[str, str]:
    """Every loadable reward name with a one-line description (built-ins, registered, plug-ins)."""
    names = {name: description for name, (_, _, description) in BUILTIN.items()}
    for name, target in REWARDS.items():
        names[name] = (inspect.getdoc(target) or "registered in this process").splitlines()[0]
    for name, ep in _plugins().items():
        names.setdefault(name, f"plug-in {ep.value} (package {ep.dist.name if ep.dist else '?'})")
    return names


class FunctionReward:
    """A plain function of (images, prompts) -> scores, seen as a pointwise reward."""

    def __init__(self, fn: Callable, name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function")

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return torch.as_tensor(self.fn(images, list(prompts)), dtype=torch.float32).flatten()


def _accepts(target: Callable, key: str) -> bool:
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return key in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def instantiate(target: object, name: str, device=None, dtype=None, **options):
    """A reward object from what a name resolved to: an object with score/compare is used as
    is, a class or factory is called with the options (and device/dtype where it takes them), a
    plain function becomes a FunctionReward."""
    if not isinstance(target, type) and _is_reward(target):  # a ready object
        if options:
            raise ValueError(f"reward {name!r} is an object; it takes no options, got {sorted(options)}")
        return target
    if isinstance(target, type) or (callable(target) and _is_factory(target)):
        extra = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None and _accepts(target, k)}
        try:
            reward = target(**options, **extra)
        except TypeError as error:
            raise ValueError(f"reward {name!r}: bad options {sorted(options)} ({error})") from None
        if not _is_reward(reward):
            raise ValueError(
                f"reward {name!r}: {target!r} built {type(reward).__name__}, which has neither score(images, prompts) nor compare(images_a, images_b, prompts)"
            )
        if not getattr(reward, "name", None):
            try:
                reward.name = name
            except AttributeError:
                pass
        return reward
    if callable(target):
        if options:
            raise ValueError(f"reward {name!r} is a plain function; it takes no options, got {sorted(options)}")
        return FunctionReward(target, name)
    raise ValueError(
        f"reward {name!r} resolved to {type(target).__name__}, which is neither a reward, a class, nor a function"
    )


def _is_reward(target: object) -> bool:
    return callable(getattr(target, "score", None)) or callable(getattr(target, "compare", None))


def _is_factory(target: Callable) -> bool:
    """A function that builds a reward takes no required positional arguments; a reward function
    takes (images, prompts)."""
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    required = [
        p for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return not required


def import_here_too(module_name: str) -> Any:
    """importlib.import_module, also finding a module in the current folder as `python -m` would
    (the `flowrl` console script does not put it on sys.path)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        here = os.getcwd()
        top = module_name.split(".")[0]
        if error.name != top or here in sys.path or "" in sys.path:
            raise
        if not (os.path.isfile(os.path.join(here, top + ".py")) or os.path.isdir(os.path.join(here, top))):
            raise
        sys.path.insert(0, here)
        return importlib.import_module(module_name)


def import_object(spec: str) -> object:
    """`package.module:object` (dotted attributes allowed after the colon)."""
    module_name, _, attribute = spec.partition(":")
    try:
        target = import_here_too(module_name)
    except ImportError as error:
        raise ValueError(
            f"reward {spec!r}: cannot import {module_name!r} ({error}); the module must be importable where flowrl "
            "runs: a file in the current folder, a folder on PYTHONPATH, or an installed package"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"reward {spec!r}: module {module_name!r} has no {attribute!r}")
        target = getattr(target, part)
    return target


def resolve(name: str) -> tuple[object, dict]:
    """(target, fixed options) for a reward name, without building it; unknown names fail
    listing what is known."""
    if name in REWARDS:
        return REWARDS[name], {}
    if name in BUILTIN:
        target, fixed, _ = BUILTIN[name]
        return import_object(target), dict(fixed)
    plugins = _plugins()
    if name in plugins:
        try:
            return plugins[name].load(), {}
        except Exception as error:  # a broken plug-in must say which one
            raise ValueError(f"reward plug-in {name!r} ({plugins[name].value}) failed to load: {error}") from error
    if name.startswith(("remote:", "pairwise:")):
        raise ValueError(f"reward {name!r}: use load() for remote: and pairwise: rewards")
    if ":" in name:
        return import_object(name), {}
    raise ValueError(
        f"unknown reward {name!r}; known: {sorted(available())}, or remote:http://host:port, pairwise:NAME, package.module:object"
    )


def check(name: str) -> None:
    """Fail as load() would on a bad name, without building anything (no weights, no requests);
    a plain reward function is also called once on a dummy batch, so a broken one fails now."""
    if name.startswith("remote:"):
        if not name[len("remote:") :].startswith(("http://", "https://")):
            raise ValueError(f"reward {name!r}: expected remote:http://host:port")
    elif name.startswith("pairwise:"):
        check(name[len("pairwise:") :])
    else:
        target, _ = resolve(name)
        if name not in BUILTIN and _is_plain_function(target):
            dry_call(target, name)


def _is_plain_function(target: object) -> bool:
    return callable(target) and not isinstance(target, type) and not _is_reward(target) and not _is_factory(target)


def dry_call(function: Callable, name: str) -> None:
    """Call a reward function on 2 random 16 x 16 images; fail naming what it did wrong."""
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = "a reward function takes (images [B, 3, H, W] in [0, 1], prompts: list of B str) and returns B numbers"
    try:
        values = torch.as_tensor(function(images, ["a red circle", "a blue square"]), dtype=torch.float32).flatten()
    except Exception as error:  # noqa: BLE001  (anything a user's function raises)
        raise ValueError(
            f"reward {name!r} failed on a dummy batch of 2 images ({type(error).__name__}: {error}); {expected}"
        ) from None
    if values.numel() != 2:
        raise ValueError(f"reward {name!r} returned {values.numel()} values for 2 images; {expected}")


def load(name: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None, **options):
    """A ready reward object by name (see the module docstring for what a name may be)."""
    if name.startswith("remote:"):
        from .remote import RemoteReward

        return RemoteReward(name[len("remote:") :], **options)
    if name.startswith("pairwise:"):
        from .pairwise import BradleyTerry

        temperature = options.pop("temperature", 1.0)  # the comparison's own option; the rest build the inner reward
        inner = load(name[len("pairwise:") :], device=device, dtype=dtype, **options)
        if is_pairwise(inner):
            raise ValueError(f"reward {name!r}: {inner.name!r} is already pairwise")
        return BradleyTerry(inner, temperature=temperature)
    target, fixed = resolve(name)
    return instantiate(target, name, device=device, dtype=dtype, **{**fixed, **options})
