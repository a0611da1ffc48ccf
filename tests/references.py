"""Reference implementations written from the papers, shared by several test files."""

import math

import torch


def dpmpp_2m_reference(velocity, x, sigmas, history=None):
    """Lu et al. 2022 (arXiv 2211.01095) Alg. 2 with alpha = 1 - sigma, lambda = log(alpha / sigma).

    x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (e^{-h_i} - 1) D_i, D_i = (1 + 1/(2 r_i)) x0_{i-1}
    - 1/(2 r_i) x0_{i-2}, r_i = h_{i-1} / h_i, with first order (D = x0) where a log-SNR step is
    infinite (sigma = 1 or 0) and on the first step. x0 = x - sigma v is the data prediction.
    history: (x0, sigma) of a step before sigmas[0] (a multistep solver's memory), or None.
    """
    lam = lambda s: math.log((1 - s) / s) if 0 < s < 1 else (math.inf if s == 0 else -math.inf)  # noqa: E731
    prev_x0, prev_h = None, None
    if history is not None:
        prev_x0, prev_h = history[0], lam(float(sigmas[0])) - lam(float(history[1]))
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = x - s * velocity(x, torch.full((x.shape[0],), s, dtype=x.dtype))
        h = lam(s_next) - lam(s)
        if prev_x0 is None or math.isinf(h) or math.isinf(prev_h):
            data = x0
        else:
            r = prev_h / h
            data = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev_x0
        if s_next == 0:
            x = data
        else:
            x = (s_next / s) * x - (1 - s_next) * (math.exp(-h) - 1) * data
        prev_x0, prev_h = x0, h
    return x
