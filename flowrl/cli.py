"""The `flowrl` command: sample, evaluate, pretrain and train the models of the toolkit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, help="toy model directory (config.json + model.safetensors); default: the shipped weights")
    parser.add_argument("--steps", type=_positive_int, default=20, help="Euler steps (default 20)")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (1 = none; default 4)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; image i uses seed + i")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def cmd_sample(args: argparse.Namespace) -> int:
    from .generate import generate
    from .images import save_grid
    from .policies.toy import load_toy

    policy = load_toy(args.checkpoint, args.device)
    images = generate(policy, [args.prompt] * args.n, [args.seed + i for i in range(args.n)], steps=args.steps, guidance=args.guidance, progress=True)
    path = save_grid(images, args.out, nrow=min(args.n, 8), scale=args.scale)
    print(f"wrote {args.n} samples of {args.prompt!r} to {path}")
    return 0


def cmd_eval_toyshapes(args: argparse.Namespace) -> int:
    from benchmarks.toyshapes.evaluate import evaluate_toyshapes

    from .images import save_grid
    from .policies.toy import load_toy

    policy = load_toy(args.checkpoint, args.device)
    report, images = evaluate_toyshapes(policy, args.images_per_category, args.steps, args.guidance, args.seed, args.batch_size)
    print(report.table())
    if args.json:
        print(f"wrote {report.save(args.json)}")
    if args.grid:
        print(f"wrote {save_grid(images, args.grid, nrow=16, scale=2)}")
    return 0


def cmd_prompts(args: argparse.Namespace) -> int:
    from benchmarks.toyshapes.prompts import CATEGORIES, prompts_for

    for prompt in prompts_for(args.split, tuple(args.category) if args.category else CATEGORIES):
        print(f"{prompt.category:<14} {prompt.text}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from samplers.methods import METHODS

    width = max(len(name) for name in METHODS)
    for method in METHODS.values():
        print(f"{method.name:<{width}}  {method.description} ({method.paper})")
        if args.verbose:
            config = method.configure()
            plan = method.plan(config)
            options = ", ".join(f"{key}={value!r}" for key, value in vars(config).items())
            print(f"{'':<{width}}  defaults: {options}")
            print(f"{'':<{width}}  plan: {plan.num_steps} steps, trained {plan.trained_steps()}, {plan.group_size} roots per prompt")
    return 0


def cmd_rewards(args: argparse.Namespace) -> int:
    from rewards.registry import available

    names = available()
    width = max(len(name) for name in names)
    for name, description in sorted(names.items()):
        print(f"{name:<{width}}  {description}")
    print(f"{'':<{width}}  also: remote:http://host:port (a served reward), pairwise:NAME (Bradley-Terry from a pointwise reward),")
    print(f"{'':<{width}}  package.module:object, and weighted sums such as '0.7*pickscore+0.3*ocr'")
    return 0


def cmd_serve_reward(args: argparse.Namespace, rest: list[str]) -> int:
    from rewards.serve import main as serve_main

    return serve_main(rest)


def resolve_recipe(name: str | None) -> Path | None:
    """A recipe path: an existing file, or the name of a shipped recipe (flowrl/recipes/NAME.yaml)."""
    if name is None:
        return None
    path = Path(name)
    if path.is_file():
        return path
    shipped = Path(__file__).resolve().parent / "recipes" / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    known = sorted(p.stem for p in shipped.parent.glob("*.yaml"))
    raise ValueError(f"recipe {name!r} is neither a file nor a shipped recipe; shipped: {known}")


def cmd_train(args: argparse.Namespace) -> int:
    from .config import describe, load_config

    if args.help_config:
        print(describe())
        return 0
    recipe, overrides = args.recipe, list(args.overrides)
    if recipe is not None and "=" in recipe:  # `flowrl train key=value` without a recipe
        recipe, overrides = None, [recipe, *overrides]
    config = load_config(resolve_recipe(recipe or "toy"), overrides)
    from .trainer import train

    summary = train(config)
    last = summary["last"]
    if summary["rank"] != 0:  # one report per launch, from process 0
        return 0
    print(f"done: {summary['iterations']} iterations in {config.out}" + (" (stopped at the time limit; rerun to continue)" if summary["stopped_early"] else ""))
    if "eval/overall" in last:
        print(f"held-out ToyShapes accuracy {100 * last['eval/overall']:.1f}% (mean score {last['eval/mean_score']:.3f}); model in {config.out}/final")
    elif "eval/reward" in last:
        print(f"evaluation reward {last['eval/reward']:.4f}; trained weights in {config.out}/final")
    return 0


def cmd_pretrain_toy(args: argparse.Namespace, rest: list[str]) -> int:
    from .toy_pretraining import main as pretrain_main

    pretrain_main(rest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from benchmarks.toyshapes.prompts import CATEGORIES

    parser = argparse.ArgumentParser(prog="flowrl", description="RL for flow-matching text-to-image models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sample = sub.add_parser("sample", help="draw a grid of samples for one prompt")
    sample.add_argument("--prompt", required=True, help='e.g. "a red circle and a blue square"')
    sample.add_argument("--out", default="samples.png", help="PNG path of the grid (default samples.png)")
    sample.add_argument("--n", type=_positive_int, default=8, help="number of samples (default 8)")
    sample.add_argument("--scale", type=_positive_int, default=4, help="upscaling of the saved grid (default 4)")
    _add_sampling_args(sample)
    sample.set_defaults(func=cmd_sample)

    evaluate = sub.add_parser("eval", help="evaluate a model on a benchmark")
    benches = evaluate.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    benches.required = True
    toy = benches.add_parser("toyshapes", help="GenEval-style accuracy on held-out ToyShapes prompts")
    toy.add_argument("--json", default=None, help="write the report (table and per-image records) here")
    toy.add_argument("--grid", default=None, help="write a PNG grid of all evaluated samples here")
    toy.add_argument("--images-per-category", type=_positive_int, default=32, help="images per category, cycling its held-out prompts (default 32)")
    toy.add_argument("--batch-size", type=_positive_int, default=128, help="images per model call (default 128)")
    _add_sampling_args(toy)
    toy.set_defaults(func=cmd_eval_toyshapes)

    prompts = sub.add_parser("prompts", help="list ToyShapes prompts")
    prompts.add_argument("--split", default="all", choices=["train", "heldout", "all"])
    prompts.add_argument("--category", action="append", choices=CATEGORIES, help="repeatable; default all")
    prompts.set_defaults(func=cmd_prompts)

    methods = sub.add_parser("methods", help="list the RL methods (plans of the solver layer) with their papers")
    methods.add_argument("--verbose", "-v", action="store_true", help="also show each method's default options and plan")
    methods.set_defaults(func=cmd_methods)

    train = sub.add_parser("train", help="RL fine-tuning (default: the toy recipe on the CPU)")
    train.add_argument("recipe", nargs="?", default=None, help="a YAML recipe path or a shipped recipe name (default: toy)")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. lr=1e-5 method.window=3")
    train.add_argument("--help-config", action="store_true", help="list every config key with its default and meaning")
    train.set_defaults(func=cmd_train)

    rewards = sub.add_parser("rewards", help="list the reward models (built-in, registered and installed plug-ins)")
    rewards.set_defaults(func=cmd_rewards)

    serve = sub.add_parser("serve-reward", help="serve a reward over HTTP (see flowrl serve-reward --help)", add_help=False)
    serve.set_defaults(func=cmd_serve_reward)

    pretrain = sub.add_parser("pretrain-toy", help="pretrain the toy model (see scripts/pretrain_toy.py --help)", add_help=False)
    pretrain.set_defaults(func=cmd_pretrain_toy)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in ("pretrain-toy", "serve-reward"):
        return args.func(args, rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"flowrl {args.command}: error: {error}", file=sys.stderr)
        return 2
