"""Policies: velocity fields behind one interface (encode, velocity, decode)."""

from .base import FlowPolicy, TextConditioning
from .flux import FluxPolicy, load_flux
from .sd3 import SD3Policy, load_sd3
from .toy import ToyConfig, ToyModel, ToyPolicy, load_toy, save_toy

__all__ = [
    "FlowPolicy",
    "TextConditioning",
    "ToyConfig",
    "ToyModel",
    "ToyPolicy",
    "load_toy",
    "save_toy",
    "SD3Policy",
    "load_sd3",
    "FluxPolicy",
    "load_flux",
]
