"""Write the GenEval-template prompt lists of the geneval reward (no arguments):

    python scripts/make_geneval_prompts.py

flowrl/recipes/prompts/geneval_eval.txt: 64 prompts, seed 1; geneval_train.txt: 1000 prompts,
seed 0, none of them in the eval list. Both are balanced over GenEval's six tags (see
rewards.geneval_prompts.training_prompts); rerunning rewrites the same files.
"""

from __future__ import annotations

from pathlib import Path

from flowrl.rewards.geneval_prompts import training_prompts

OUT = Path(__file__).resolve().parent.parent / "flowrl" / "recipes" / "prompts"
TRAIN, EVAL = ("geneval_train.txt", 1000, 0), ("geneval_eval.txt", 64, 1)


def main() -> None:
    evaluation = training_prompts(EVAL[1], seed=EVAL[2])
    train = training_prompts(TRAIN[1], seed=TRAIN[2], exclude=evaluation)
    for (name, _, _), prompts in ((EVAL, evaluation), (TRAIN, train)):
        (OUT / name).write_text("".join(p + "\n" for p in prompts), encoding="utf-8")
        print(f"wrote {len(prompts)} prompts to {OUT / name}")


if __name__ == "__main__":
    main()
