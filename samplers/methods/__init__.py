"""Methods: one small module each, turning a config into a plan and naming its credit rule.

`get_method(name)` returns a Method; `METHODS` lists them all in registration order.
"""

from . import branch_grpo, dance_grpo, flow_grpo, g2rpo, mix_grpo, tempflow_grpo, tree_rpo  # noqa: F401,E402  (registration)
from .registry import METHODS, Method, get_method, register_method

__all__ = ["METHODS", "Method", "get_method", "register_method"]
