"""The `flowrl` command: sample, evaluate, pretrain and train the models of the toolkit."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .cli_args import non_negative_float, resolve_recipe


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="toy model directory (config.json + model.safetensors); default: the shipped weights",
    )
    parser.add_argument("--steps", type=_positive_int, default=20, help="sampler steps (default 20)")
    parser.add_argument(
        "--guidance", type=float, default=4.0, help="classifier-free guidance scale (1 = none; default 4)"
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed; image i uses seed + i")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def cmd_sample(args: argparse.Namespace) -> int:
    from .generate import generate
    from .images import save_grid
    from .policies.toy import load_toy

    policy = load_toy(args.checkpoint, args.device)
    images = generate(
        policy,
        [args.prompt] * args.n,
        [args.seed + i for i in range(args.n)],
        steps=args.steps,
        guidance=args.guidance,
        progress=True,
    )
    path = save_grid(images, args.out, nrow=min(args.n, 8), scale=args.scale)
    print(f"wrote {args.n} samples of {args.prompt!r} to {path}")
    return 0


def cmd_eval_toyshapes(args: argparse.Namespace) -> int:
    from flowrl.benchmarks.toyshapes.evaluate import evaluate_toyshapes

    from .generate import sampler
    from .images import save_grid
    from .policies.toy import load_toy

    if args.prompt is None and args.images_per_prompt is not None:
        raise ValueError("--images-per-prompt goes with --prompt; a split's evaluation takes --images-per-category")
    if args.prompt is not None and (args.images_per_category is not None or args.split is not None):
        raise ValueError(
            "--prompt judges the prompts given, so --split and --images-per-category do not apply; use --images-per-prompt"
        )
    if args.prompt is not None:
        from flowrl.benchmarks.toyshapes.prompts import parse_prompt

        for text in args.prompt:  # before the model loads
            parse_prompt(text)
    policy = load_toy(args.checkpoint, args.device)
    per_group = (args.images_per_category or 32) if args.prompt is None else (args.images_per_prompt or 32)
    sample = sampler(policy, args.steps, args.guidance, eta=args.eta, batch_size=args.batch_size, progress=True)
    report, images = evaluate_toyshapes(
        sample,
        per_group,
        steps=args.steps,
        guidance=args.guidance,
        eta=args.eta,
        seed=args.seed,
        split=args.split or "heldout",
        prompts=args.prompt,
    )
    print(report.table() if args.prompt is None else report.prompt_table())
    print("\nwhere images fail (fractions of each category's images; shapes and objects need the exact count):")
    print(report.breakdown_table())
    if args.json:
        print(f"wrote {report.save(args.json)}")
    if args.grid:
        print(f"wrote {save_grid(images, args.grid, nrow=16, scale=2)}")
    if args.report:
        from flowrl.benchmarks.toyshapes.report import write_toyshapes_reports

        paths = write_toyshapes_reports(report, args.report, images=images)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_eval_unigenbench_protocol(args: argparse.Namespace) -> int:
    from flowrl.benchmarks.unigenbench.protocol import COMMIT, REPOSITORY, download_protocol

    path = download_protocol()
    print(f"the official judging protocol of {REPOSITORY} at {COMMIT[:12]} is in {path}")
    return 0


def cmd_eval_unigenbench(args: argparse.Namespace) -> int:
    import yaml

    from flowrl.benchmarks.unigenbench.run import UniGenBenchRun, run_unigenbench

    judge = {"concurrency": args.judge_concurrency, "timeout": args.judge_timeout}
    if args.requests_per_minute is not None:
        judge["requests_per_minute"] = args.requests_per_minute
    if args.judge_url:
        judge["base_url"] = args.judge_url
    if args.judge_model:
        judge["model"] = args.judge_model
    for text in args.judge_option:
        key, _, value = text.partition("=")
        judge[key] = yaml.safe_load(value)
    folder = args.images or str(Path(args.out) / "images")
    policy = args.checkpoint or (f"images in {folder}" if args.judge_only else "toy")
    run = UniGenBenchRun(
        prompts=args.prompts,
        policy=policy,
        out=args.out,
        images_per_prompt=args.images_per_prompt,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        shift=args.shift,
        resolution=args.resolution,
        batch_size=args.batch_size,
        device=args.device,
        limit=args.limit,
        on_bad_row=args.on_bad_row,
        judge=judge,
        judge_only=args.judge_only,
        protocol=args.protocol,
        regenerate=args.regenerate,
        rejudge=args.rejudge,
        sampling=args.sampling,
        images=args.images,
        image_suffix=args.image_suffix,
    )
    summary = run_unigenbench(run)
    print(Path(summary["reports"]["markdown"]).read_text())
    print(Path(summary["reports"]["leaderboard"]).read_text())
    print(
        f"{summary['prompts']} prompts: {summary['generated']} images drawn ({summary['existing']} already there), "
        f"{summary['judged']} judged ({summary['already_judged']} already judged); reports in {args.out}"
    )
    usage = summary["usage"]
    if usage["requests"]:
        print(
            f"judge: {usage['requests']} requests, {usage['prompt_tokens']} prompt and "
            f"{usage['completion_tokens']} completion tokens"
        )
    if summary["failed"]:
        print(
            f"{len(summary['failed'])} images failed to be judged (rerun the same command to judge only those); first: "
            f"{next(iter(summary['failed'].items()))}",
            file=sys.stderr,
        )
        return 1
    if summary["missing"]:
        print(
            f"{summary['missing']} images are missing from {Path(args.out) / 'images'}: the results cover only the "
            "others" + ("" if summary["overall"] is not None else " (none was judged: overall is null)"),
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_eval_compare(args: argparse.Namespace) -> int:
    import json

    kinds = []
    for path in (args.a, args.b):
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable results file ({error})") from None
        kinds.append("unigenbench" if "primary_dimensions" in data else "toyshapes")
    if kinds[0] != kinds[1]:
        raise ValueError(
            f"{args.a} is a {kinds[0]} result and {args.b} a {kinds[1]} one; compare results of one benchmark"
        )
    if kinds[0] == "unigenbench":
        from flowrl.benchmarks.unigenbench.report import compare_results

        print(compare_results(args.a, args.b, out_dir=args.out))
    else:
        from flowrl.benchmarks.toyshapes.report import compare_toyshapes

        print(compare_toyshapes(args.a, args.b, out_dir=args.out))
    return 0


def cmd_prompts(args: argparse.Namespace) -> int:
    from flowrl.benchmarks.toyshapes.prompts import CATEGORIES, prompts_for

    for prompt in prompts_for(args.split, tuple(args.category) if args.category else CATEGORIES):
        print(f"{prompt.category:<14} {prompt.text}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from flowrl.samplers.methods import METHODS

    width = max(len(name) for name in METHODS)
    for method in METHODS.values():
        print(f"{method.name:<{width}}  {method.description} ({method.paper})")
        if args.verbose:
            config = method.configure()
            plan = method.plan(config)
            options = ", ".join(f"{key}={value!r}" for key, value in vars(config).items())
            print(f"{'':<{width}}  defaults: {options}")
            print(
                f"{'':<{width}}  plan: {plan.num_steps} steps, trained {plan.trained_steps()}, {plan.group_size} roots per prompt"
            )
    if args.verbose:
        from flowrl.objectives import OBJECTIVES
        from flowrl.registry import options_dict
        from flowrl.samplers.sde import DEFAULT_NOISE_LEVEL

        forms = ", ".join(f"{form} (noise level {level})" for form, level in DEFAULT_NOISE_LEVEL.items())
        sde = ", ".join(f"{k}={v!r}" for k, v in options_dict(OBJECTIVES.entry("sde").options()).items())
        print(f"\nSDE forms of every chain and tree method (method.sde=NAME; cps: arXiv 2509.05952): {forms}")
        print(f"objective=sde options (objective.KEY=VALUE; guard: GRPO-Guard, arXiv 2510.22319): {sde}")
    return 0


def cmd_objectives(args: argparse.Namespace) -> int:
    """The objectives and the advantage estimators, each with its options and their defaults."""
    from flowrl.advantage import ADVANTAGES
    from flowrl.objectives import OBJECTIVES
    from flowrl.registry import options_dict

    for title, registry in (
        ("objectives (objective=NAME, objective.KEY=VALUE)", OBJECTIVES),
        ("advantage estimators of chain methods (method.advantage=NAME)", ADVANTAGES),
    ):
        print(title)
        width = max(len(name) for name in registry)
        for name, entry in registry.entries.items():
            defaults = ", ".join(f"{k}={v!r}" for k, v in options_dict(entry.options()).items()) or "no options"
            note = " (not for image methods: keeps per-prompt state)" if entry.traits.get("stateful") else ""
            print(f"  {name:<{width}}  {entry.description}{note}\n  {'':<{width}}  {defaults}")
    return 0


def cmd_rewards(args: argparse.Namespace) -> int:
    from flowrl.rewards.registry import available

    names = available()
    width = max(len(name) for name in names)
    for name, description in sorted(names.items()):
        print(f"{name:<{width}}  {description}")
    print(
        f"{'':<{width}}  also: remote:http://host:port (a served reward), pairwise:NAME (Bradley-Terry from a pointwise reward),"
    )
    print(f"{'':<{width}}  package.module:object, and weighted sums such as '0.7*pickscore+0.3*ocr'")
    return 0


def cmd_judge_protocol(args: argparse.Namespace) -> int:
    from flowrl.rewards.judge_protocols import PRESETS, download_judge_protocol, repository_of

    path = download_judge_protocol(args.name)
    print(
        f"the judge protocol {args.name} ({repository_of(args.name)} at {PRESETS[args.name]['commit'][:12]}) is in {path}"
    )
    return 0


def cmd_serve_reward(args: argparse.Namespace, rest: list[str]) -> int:
    from flowrl.rewards.serve import main as serve_main

    return serve_main(rest)


def paired_with_start(samples: Path) -> str | None:
    """Lines comparing a run's last ToyShapes evaluation with its first (iteration 0: the starting
    model) image by image: each category's accuracy before -> after, then the overall accuracy and
    the mean dense score (the reward the toy recipe trains on), each change with its interval and
    p; None without both evaluations."""
    from flowrl.benchmarks.report import format_difference, format_interval, format_p, format_score_interval
    from flowrl.benchmarks.toyshapes.report import load_report, paired_toyshapes, paired_toyshapes_scores

    reports = sorted(samples.glob("iter_*.json"))
    if len(reports) < 2 or reports[0].name != "iter_00000.json":
        return None
    start, end = load_report(reports[0]), load_report(reports[-1])
    tests, _ = paired_toyshapes(start, end)
    if not tests:
        return None
    *categories, overall = tests
    lines = [f"vs iteration 0 (the starting model), image by image on the same {overall.n} images:"]
    for test in categories:
        before, after = start.accuracy[test.name], end.accuracy[test.name]
        lines.append(
            f"  {test.name:<14} {100 * before:5.1f}% -> {100 * after:5.1f}%  {format_difference(test.difference)} "
            f"(95% interval {format_interval(test)}, p {format_p(test.p_value)})"
        )
    lines.append(
        f"  {'overall':<14} {100 * start.overall:5.1f}% -> {100 * end.overall:5.1f}%  "
        f"{format_difference(overall.difference)} (95% interval {format_interval(overall)}, p {format_p(overall.p_value)})"
    )
    scores, _ = paired_toyshapes_scores(start, end)
    if scores:
        score = scores[-1]
        lines.append(
            f"  {'dense score':<14} {start.mean_score:.3f} -> {end.mean_score:.3f}  {score.difference:+.3f} "
            f"(95% interval {format_score_interval(score)}, p {format_p(score.p_value)})"
        )
    lines.append(
        "before_after.png shows the same prompts and noise; for finer figures evaluate both with "
        "flowrl eval toyshapes and pair them with flowrl eval compare"
    )
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import describe, load_config
    from .interrupts import exit_code

    recipe, overrides = args.recipe, list(args.overrides)
    if recipe is not None and "=" in recipe:  # `flowrl train key=value` without a recipe
        recipe, overrides = None, [recipe, *overrides]
    config = load_config(resolve_recipe(recipe or "toy"), overrides)
    if args.help_config:  # the values that would run, with the recipe's and the overrides' marked
        print(describe(config))
        return 0
    from .trainer import train

    summary = train(config)
    last = summary["last"]
    if summary["rank"] != 0:  # one report per launch, from process 0
        return 0
    if summary["trained_now"] == 0:
        note = " (already complete: nothing to train" + (
            f"; the figures are from its last evaluation, iteration {last['iteration']})" if last else ")"
        )
    elif summary["stopped_by"] is not None:
        name = signal.Signals(summary["stopped_by"]).name
        note = f" (stopped by {name} with a checkpoint; rerun the same command to continue)"
    else:
        note = " (stopped at the time limit; rerun to continue)" if summary["stopped_early"] else ""
    print(f"done: {summary['iterations']} iterations in {config.out}{note}")
    if "eval/overall" in last:
        print(
            f"held-out ToyShapes accuracy {100 * last['eval/overall']:.1f}% (mean score {last['eval/mean_score']:.3f}); model in {config.out}/final"
        )
        against_start = paired_with_start(Path(config.out) / "samples")
        if against_start:
            print(against_start)
    elif "eval/accuracy" in last:  # a text run: exact match of greedy answers to held-out prompts
        print(text_run_summary(Path(config.out), last))
    elif "eval/reward" in last:
        print(f"evaluation reward {last['eval/reward']:.4f}; trained weights in {config.out}/final")
    return exit_code(summary["stopped_by"])


def text_run_summary(out: Path, last: dict) -> str:
    """The held-out exact match of a text run at its end, beside the starting model's."""
    from .run_files import read_metrics

    first = next((r for r in read_metrics(out / "metrics.jsonl") if "eval/accuracy" in r), None)
    earlier = first is not None and first["iteration"] != last["iteration"]
    start = f" (the starting model: {100 * first['eval/accuracy']:.1f}%)" if earlier else ""
    return f"held-out exact match {100 * last['eval/accuracy']:.1f}%{start}; model in {out}/final"


def cmd_pretrain_llm_toy(args: argparse.Namespace, rest: list[str]) -> int:
    from .llm.pretraining import main as pretrain_main

    return pretrain_main(rest)


def cmd_pretrain_toy(args: argparse.Namespace, rest: list[str]) -> int:
    from .toy_pretraining import main as pretrain_main

    return pretrain_main(rest)


def build_parser() -> argparse.ArgumentParser:
    from flowrl.benchmarks.toyshapes.prompts import CATEGORIES

    parser = argparse.ArgumentParser(prog="flowrl", description="RL for flow-matching text-to-image models.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also FLOWRL_DEBUG=1)")
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
    toy.add_argument(
        "--images-per-category",
        type=_positive_int,
        default=None,
        help="images per category, cycling its prompts of --split (default 32)",
    )
    toy.add_argument("--batch-size", type=_positive_int, default=128, help="images per model call (default 128)")
    toy.add_argument(
        "--split",
        choices=("heldout", "train"),
        default=None,
        help="prompts to evaluate: held-out (the standard figure, default) or the RL training split",
    )
    toy.add_argument(
        "--prompt",
        action="append",
        default=None,
        metavar="TEXT",
        help="judge this ToyShapes prompt instead of a split (repeat for several); prints a row per prompt",
    )
    toy.add_argument(
        "--images-per-prompt",
        type=_positive_int,
        default=None,
        help="with --prompt: images of each prompt, seeds seed + i in order (default 32)",
    )
    toy.add_argument(
        "--eta",
        type=non_negative_float,
        default=0.0,
        help="SDE noise level of the sampler (dance_grpo form, as DanceGRPO rollouts; default 0: deterministic Euler)",
    )
    _add_sampling_args(toy)
    toy.add_argument(
        "--report",
        default=None,
        help="write results.md, results.csv, results.json and report.html (with grids) into this folder",
    )
    toy.set_defaults(func=cmd_eval_toyshapes)

    unigen = benches.add_parser(
        "unigenbench", help="UniGenBench: generate, judge with a VLM over an OpenAI-compatible API, report"
    )
    unigen.add_argument(
        "prompts",
        help="a UniGenBench prompt file (data/test_prompts_en.csv of the release), or en, en_long, zh, zh_long to download the official one (cached)",
    )
    unigen.add_argument(
        "--checkpoint",
        default=None,
        help="what to evaluate: toy, a toy model folder, an SD3/FLUX hub id or folder, or a flowrl train run directory (default toy)",
    )
    unigen.add_argument(
        "--out",
        required=True,
        help="run folder: images/, judgments.sqlite, results.*, report.html; a rerun continues it",
    )
    unigen.add_argument(
        "--images-per-prompt",
        type=_positive_int,
        default=4,
        help="images per prompt (default 4, the official protocol)",
    )
    unigen.add_argument("--seed", type=int, default=0, help="base seed of the images (default 0)")
    unigen.add_argument(
        "--steps", type=_positive_int, default=None, help="sampling steps (default: toy 20, SD3 40, FLUX 28)"
    )
    unigen.add_argument("--guidance", type=float, default=None, help="guidance (default: toy 4, SD3 4.5, FLUX 3.5)")
    unigen.add_argument("--shift", type=float, default=None, help="timestep shift (default: toy 1, SD3/FLUX 3)")
    unigen.add_argument(
        "--resolution", type=_positive_int, default=None, help="SD3/FLUX image size (default: the run's, else 512)"
    )
    unigen.add_argument("--batch-size", type=_positive_int, default=4, help="images per model call (default 4)")
    unigen.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    unigen.add_argument("--limit", type=int, default=0, help="only the first N prompts (default: all)")
    unigen.add_argument(
        "--on-bad-row",
        choices=["stop", "skip", "fix"],
        default="stop",
        help="a malformed prompt row: stop, skip it with a warning, or fix: repair the public files' known "
        "defects (en_long index 509: a missing comma) and stop on others",
    )
    unigen.add_argument(
        "--judge-url",
        default=None,
        help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1 (default $FLOWRL_JUDGE_URL)",
    )
    unigen.add_argument("--judge-model", default=None, help="the served judge model name")
    unigen.add_argument("--judge-concurrency", type=_positive_int, default=8, help="images judged at once (default 8)")
    unigen.add_argument("--judge-timeout", type=float, default=300.0, help="seconds per judge request (default 300)")
    unigen.add_argument(
        "--requests-per-minute", type=float, default=None, help="judge requests started per minute at most"
    )
    unigen.add_argument(
        "--judge-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more Judge options (retries, max_tokens, language, ...)",
    )
    unigen.add_argument(
        "--judge-only", action="store_true", help="judge and report the images already in OUT/images; load no model"
    )
    unigen.add_argument(
        "--protocol",
        choices=["official", "flowrl"],
        default="official",
        help="official: the request the evaluation models were trained on and the official answer rule (needs "
        "`flowrl eval unigenbench-protocol` once); flowrl: our own prompt and lenient parsing",
    )
    unigen.add_argument(
        "--sampling",
        choices=["flowrl", "official"],
        default="flowrl",
        help="official: the official inference settings (FLUX.1-dev: 1024 px, 30 steps, guidance 3.5, dynamic "
        "shift, seeds 3407+k); flowrl: our per-backend defaults",
    )
    unigen.add_argument(
        "--images",
        default=None,
        help="the image folder (default OUT/images); with --judge-only, e.g. the official eval_data/en/MODEL, judged in place",
    )
    unigen.add_argument("--image-suffix", default=".png", help="the images' suffix, e.g. .jpg (with --judge-only)")
    unigen.add_argument("--regenerate", action="store_true", help="OUT's images were made otherwise: draw them again")
    unigen.add_argument("--rejudge", action="store_true", help="OUT's verdicts came from another judge: judge again")
    unigen.set_defaults(func=cmd_eval_unigenbench)

    fetch_protocol = benches.add_parser(
        "unigenbench-protocol",
        help="download UniGenBench's official judging template (pinned commit, checked hash) into the cache",
    )
    fetch_protocol.set_defaults(func=cmd_eval_unigenbench_protocol)

    compare = benches.add_parser(
        "compare",
        help="two results.json files (UniGenBench or ToyShapes) side by side with differences; ToyShapes also gets paired tests of accuracy and dense score per category",
    )
    compare.add_argument("a", help="the base results (e.g. the pretrained model's)")
    compare.add_argument("b", help="the results to compare (e.g. the fine-tuned model's)")
    compare.add_argument("--out", default=None, help="also write comparison.md/.csv/.html into this folder")
    compare.set_defaults(func=cmd_eval_compare)

    prompts = sub.add_parser("prompts", help="list ToyShapes prompts")
    prompts.add_argument("--split", default="all", choices=["train", "heldout", "all"])
    prompts.add_argument("--category", action="append", choices=CATEGORIES, help="repeatable; default all")
    prompts.set_defaults(func=cmd_prompts)

    methods = sub.add_parser("methods", help="list the RL methods (plans of the solver layer) with their papers")
    methods.add_argument(
        "--verbose", "-v", action="store_true", help="also show each method's default options and plan"
    )
    methods.set_defaults(func=cmd_methods)

    objectives = sub.add_parser(
        "objectives",
        help="list the objectives (how advantages become a loss) and advantage estimators with their options",
    )
    objectives.set_defaults(func=cmd_objectives)

    train = sub.add_parser("train", help="RL fine-tuning (default: the toy recipe on the CPU)")
    train.add_argument(
        "recipe", nargs="?", default=None, help="a YAML recipe path or a shipped recipe name (default: toy)"
    )
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. lr=1e-5 method.window=3")
    train.add_argument(
        "--help-config",
        action="store_true",
        help="list every config key with the value that would run (the recipe's, default: toy) and its meaning",
    )
    train.set_defaults(func=cmd_train)

    rewards = sub.add_parser("rewards", help="list the reward models (built-in, registered and installed plug-ins)")
    rewards.set_defaults(func=cmd_rewards)

    judge_protocol = sub.add_parser(
        "judge-protocol",
        help="download a named vlm_judge protocol's template (pinned commit, hash-checked) into the cache",
    )
    judge_protocol.add_argument("name", choices=["pref_grpo", "pref_grpo_v1", "unifiedreward_think"])
    judge_protocol.set_defaults(func=cmd_judge_protocol)

    serve = sub.add_parser(
        "serve-reward", help="serve a reward over HTTP (see flowrl serve-reward --help)", add_help=False
    )
    serve.set_defaults(func=cmd_serve_reward)

    pretrain = sub.add_parser(
        "pretrain-toy", help="pretrain the toy model (see scripts/pretrain_toy.py --help)", add_help=False
    )
    pretrain.set_defaults(func=cmd_pretrain_toy)
    pretrain_llm = sub.add_parser(
        "pretrain-llm-toy",
        help="pretrain the tiny causal LM of llm_toy (flowrl pretrain-llm-toy --help)",
        add_help=False,
    )
    pretrain_llm.set_defaults(func=cmd_pretrain_llm_toy)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in ("pretrain-toy", "pretrain-llm-toy", "serve-reward"):
        return args.func(args, rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        if debugging(args):
            raise
        print(f"flowrl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # one line for every failure; the traceback on request
        if debugging(args):
            raise
        print(
            f"flowrl {args.command}: error: {type(error).__name__}: {error} (flowrl --debug {args.command} ... shows the traceback)",
            file=sys.stderr,
        )
        return 1


def debugging(args: argparse.Namespace) -> bool:
    return bool(args.debug) or os.environ.get("FLOWRL_DEBUG", "") not in ("", "0")
