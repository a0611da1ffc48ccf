"""Policies: velocity fields behind one interface (encode, velocity, decode)."""

from .base import FlowPolicy, TextConditioning
from .toy import ToyConfig, ToyModel, ToyPolicy, load_toy, save_toy

__all__ = ["FlowPolicy", "TextConditioning", "ToyConfig", "ToyModel", "ToyPolicy", "load_toy", "save_toy"]
