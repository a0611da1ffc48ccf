"""Policy losses: surrogates on importance ratios, KL to the reference, aggregation modes.

Pure tensor functions shared by the image trainer (per-step ratios of SDE transitions) and the
LLM adapter (per-token or per-sequence ratios). Surrogates live in a registry (`register_loss`).
"""

from .aggregate import AGGREGATIONS, aggregate
from .kl import KL_ESTIMATORS, KL_FORMS, flow_grpo_kl, gaussian_kl, kl_estimate
from .policy import policy_loss
from .registry import LOSSES, get_loss, register_loss
from .surrogate import clipped_surrogate, gspo_surrogate, regression_surrogate, sequence_log_ratio

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "KL_FORMS",
    "flow_grpo_kl",
    "LOSSES",
    "aggregate",
    "clipped_surrogate",
    "gaussian_kl",
    "get_loss",
    "gspo_surrogate",
    "kl_estimate",
    "policy_loss",
    "register_loss",
    "regression_surrogate",
    "sequence_log_ratio",
]
