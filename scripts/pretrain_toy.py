"""Pretrain the built-in toy model on rendered ToyShapes data (reproduces the shipped weights).

python scripts/pretrain_toy.py --steps 3000 --ship
"""

import sys

from flowrl.toy_pretraining import main

if __name__ == "__main__":
    sys.exit(main())
