"""The solver layer: sigma grids and ODE/SDE steps over a velocity field."""

from .grid import flow_sigmas
from .ode import euler_step, sample_euler

__all__ = ["flow_sigmas", "euler_step", "sample_euler"]
