"""Euler and DPM-Solver++(2M) on an ODE with a known solution: their orders of accuracy.

For data x0 ~ N(0, 1) noised as x = x0 + sigma * noise, the exact denoiser is D(x, sigma) =
x / (1 + sigma^2), the velocity (x - D) / sigma, and the probability-flow ODE
dx/dsigma = x sigma / (1 + sigma^2) has the solution x(sigma) = x(1) sqrt((1 + sigma^2) / 2).
Doubling the steps should divide the error by ~2 for Euler (first order) and ~4 for DPM++(2M).
"""

import math

import pytest
import torch

from sd3.errors import ConfigurationError
from sd3.sampling import dpmpp_2m, euler
from sd3.sampling.samplers import sampler


def velocity(x, sigma, step):
    return (x - x / (1 + sigma**2)) / sigma


def _error(method, steps: int) -> float:
    end = 0.05
    schedule = torch.logspace(0, math.log10(end), steps + 1, dtype=torch.float64)
    x = torch.ones(1, dtype=torch.float64)
    got = method(velocity, x, schedule)
    want = math.sqrt((1 + end**2) / 2)
    return abs(got.item() - want)


@pytest.mark.parametrize("method, order", [(euler, 1), (dpmpp_2m, 2)])
def test_order_of_accuracy(method, order):
    ratios = [_error(method, n) / _error(method, 2 * n) for n in (32, 64, 128)]
    assert all(2**order * 0.85 < r < 2**order * 1.15 for r in ratios), ratios


def test_dpmpp_2m_is_exact_for_a_constant_denoiser():
    """D(x, sigma) = x0: every step lands on x0 + sigma_next * (the starting noise)."""
    x0, noise = torch.randn(3), torch.randn(3)
    schedule = torch.tensor([1.0, 0.7, 0.4, 0.1, 0.0])
    seen = []

    def constant(x, sigma, step):
        seen.append(x.clone())
        return (x - x0) / sigma

    out = dpmpp_2m(constant, x0 + noise, schedule)
    for x, sigma in zip(seen, schedule):
        assert torch.allclose(x, x0 + sigma * noise, atol=1e-6)
    assert torch.allclose(out, x0, atol=1e-6)


def test_round_to_rounds_every_step():
    schedule = torch.tensor([1.0, 0.5, 0.0])
    x = torch.full((4,), 1.0 + 2**-12)
    out = euler(lambda x, s, i: torch.zeros_like(x), x, schedule, round_to=torch.bfloat16)
    assert out.dtype == torch.float32 and torch.equal(out, torch.ones(4))


def test_step_callback_counts_steps():
    calls = []
    euler(lambda x, s, i: x, torch.ones(1), torch.tensor([1.0, 0.6, 0.2, 0.0]), on_step=lambda i, n, x: calls.append((i, n, x.item())))
    assert calls == [(1, 3, pytest.approx(0.6)), (2, 3, pytest.approx(0.36)), (3, 3, pytest.approx(0.288))]


def test_unknown_sampler():
    with pytest.raises(ConfigurationError, match="euler, dpmpp_2m"):
        sampler("ddim")


@pytest.mark.parametrize("scheduler", ["simple", "sgm_uniform", "karras", "beta"])
def test_comfyuis_dpmpp_2m_on_a_flow_model_is_ours(scheduler):
    """ComfyUI runs k-diffusion's `sample_dpmpp_2m` on the denoised prediction x − σ v, in t = −log σ
    (comfy/k_diffusion/sampling.py), written out here: the same update as Stability's, so `dpmpp_2m`
    is ComfyUI's sampler of that name too."""
    from sd3.sampling import sigmas as schedule

    sigmas = schedule(scheduler, 12, 3.0)
    weights = torch.randn(4, 4, generator=torch.Generator().manual_seed(1)) / 4

    def velocity(x, sigma, i):  # a smooth, non-linear stand-in for the MMDiT
        return torch.tanh(x @ weights) * (1 + sigma) - x * sigma

    x0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    x, old = x0.clone(), None
    t = lambda s: s.log().neg()  # noqa: E731
    for i in range(len(sigmas) - 1):
        denoised = x - sigmas[i] * velocity(x, sigmas[i], i)
        h = t(sigmas[i + 1]) - t(sigmas[i])
        if old is None or sigmas[i + 1] == 0:
            x = (torch.exp(-t(sigmas[i + 1])) / torch.exp(-t(sigmas[i]))) * x - torch.expm1(-h) * denoised
        else:
            r = (t(sigmas[i]) - t(sigmas[i - 1])) / h
            x = (torch.exp(-t(sigmas[i + 1])) / torch.exp(-t(sigmas[i]))) * x - torch.expm1(-h) * (
                (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old)
        old = denoised
    assert torch.allclose(dpmpp_2m(velocity, x0, sigmas), x, atol=1e-6, rtol=0)
