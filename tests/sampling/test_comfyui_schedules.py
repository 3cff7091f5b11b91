"""ComfyUI's schedulers against their formulas, as read in comfy/samplers.py and comfy/k_diffusion/sampling.py.

The expected lists are computed here in float64 from the formulas (our own code, not ComfyUI's), over
ComfyUI's table σ_k = shift(k / 1000), k = 1 .. 1000; `beta`'s quantiles come from mpmath at 30
digits, independently of the scipy call the library makes (as ComfyUI does).
"""

import math

import mpmath
import numpy as np
import pytest
import torch

from sd3.errors import ConfigurationError
from sd3.sampling import sigmas
from sd3.sampling.comfyui_schedules import SCHEDULERS

STEPS = [1, 2, 3, 4, 7, 10, 28, 50]
SHIFTS = [1.0, 3.0, 6.0]


def flow_shift(a: float, t):
    return a * t / (1 + (a - 1) * t)


def table(shift: float) -> np.ndarray:
    return flow_shift(shift, np.arange(1, 1001, dtype=np.float64) / 1000)


def expected(name: str, n: int, shift: float) -> list[float]:
    s = table(shift)
    low, high = s[0], s[-1]
    if name == "simple":  # every (1000 / n)-th entry from the top
        return [s[999 - int(i * 1000 / n)] for i in range(n)] + [0.0]
    if name in ("normal", "sgm_uniform"):  # evenly spaced timesteps 1000 high .. 1000 low, then shifted
        ts = np.linspace(1000 * high, 1000 * low, n + 1)[:-1] if name == "sgm_uniform" else np.linspace(1000 * high, 1000 * low, n)
        return [flow_shift(shift, t / 1000) for t in ts] + [0.0]
    if name == "karras":
        ramp = np.linspace(0, 1, n)
        return list((high ** (1 / 7) + ramp * (low ** (1 / 7) - high ** (1 / 7))) ** 7) + [0.0]
    if name == "exponential":
        return list(np.exp(np.linspace(math.log(high), math.log(low), n))) + [0.0]
    if name == "ddim_uniform":  # entries 1, 1 + 1000 // n, ... from the bottom, a 0 below, reversed
        return ([0.0] + [s[k] for k in range(1, 1000, max(1000 // n, 1))])[::-1]
    if name == "beta":
        with mpmath.workdps(30):
            quantile = [mpmath.findroot(lambda x: mpmath.betainc(0.6, 0.6, 0, x, regularized=True) - p, (0, 1),
                                        solver="anderson") if 0 < p < 1 else mpmath.mpf(p)
                        for p in (1 - i / n for i in range(n))]
        indices = [int(np.rint(float(q * 999))) for q in quantile]
        kept = [k for i, k in enumerate(indices) if i == 0 or k != indices[i - 1]]
        return [s[k] for k in kept] + [0.0]
    if name == "linear_quadratic":  # Mochi: linear to 0.025 over n // 2 steps, then quadratic to 1
        if n == 1:
            return [1.0, 0.0]
        lin = n // 2
        quad, diff = n - lin, lin - 0.025 * n
        a, b = diff / (lin * quad**2), 0.025 / lin - 2 * diff / quad**2
        rising = [i * 0.025 / lin for i in range(lin)] + [a * i * i + b * i + a * lin * lin for i in range(lin, n)]
        return [(1 - x) * high for x in rising + [1.0]]
    if name == "kl_optimal":  # evenly spaced in arctan
        f = np.arange(n) / (n - 1)
        return list(np.tan(f * math.atan(low) + (1 - f) * math.atan(high))) + [0.0]
    raise AssertionError(name)


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_gives_comfyuis_sigmas(name, steps, shift):
    if name == "kl_optimal" and steps == 1:
        pytest.skip("kl_optimal needs two steps (refused below)")
    got = sigmas(name, steps, shift)
    want = torch.tensor(expected(name, steps, shift), dtype=torch.float64)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.allclose(got.double(), want, atol=1e-6, rtol=0), (got - want).abs().max()


def test_the_names_and_their_order_are_comfyuis():
    assert list(SCHEDULERS) == ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                                "linear_quadratic", "kl_optimal"]


@pytest.mark.parametrize("steps", [4, 8, 10, 20, 25, 40, 50])
def test_simple_is_candles_schedule_when_the_steps_divide_1000(steps):
    assert torch.allclose(sigmas("simple", steps, 3.0), sigmas("candle", steps, 3.0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("steps", [4, 28, 50])
def test_normal_is_stabilitys_schedule(steps):
    assert torch.allclose(sigmas("normal", steps, 3.0), sigmas("stability", steps, 3.0), atol=1e-6, rtol=0)


def test_sgm_uniform_is_not_simple():
    """The issue's measurement: 0.003 apart in σ at 4 steps, shift 3 (so no other preset gives it)."""
    gap = (sigmas("sgm_uniform", 4, 3.0) - sigmas("simple", 4, 3.0)).abs().max()
    assert 0.002 < gap < 0.004


def test_beta_rounds_the_middle_quantile_half_to_even_and_drops_repeats():
    """ppf(0.5) = 0.5 exactly, 499.5 rounds to entry 500; 2000 steps give fewer than 2000 distinct σs."""
    assert float(sigmas("beta", 2, 3.0)[1]) == pytest.approx(float(flow_shift(3.0, 501 / 1000)), abs=1e-7)
    many = sigmas("beta", 2000, 3.0)
    assert len(many) - 1 < 2000 and bool((many[1:] < many[:-1]).all())


def test_kl_optimal_refuses_one_step():
    with pytest.raises(ConfigurationError, match="kl_optimal scheduler needs at least 2 `steps`"):
        sigmas("kl_optimal", 1, 3.0)
