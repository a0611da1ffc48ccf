"""Methods: one small module each, turning a config into a plan and naming its credit rule.

`get_method(name)` returns a Method; `METHODS` lists them all in registration order.
"""

from .registry import METHODS, Method, get_method, register_method

# isort: off
# Registration in the order `flowrl methods` lists them: Flow-GRPO and the methods built on it.
from . import flow_grpo, dance_grpo, mix_grpo, branch_grpo, tree_rpo, tempflow_grpo, g2rpo  # noqa: F401,E402
# isort: on

__all__ = ["METHODS", "Method", "get_method", "register_method"]
