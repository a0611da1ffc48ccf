"""Train a policy with RL: the same as `flowrl train` (a recipe name or YAML path, then key=value).

python scripts/train.py                       # the toy default on the CPU
python scripts/train.py toy method=mix_grpo lr=1e-4
accelerate launch --multi_gpu --num_processes 8 scripts/train.py my_recipe.yaml
"""

import sys

from flowrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
