"""ComfyUI's schedulers by name, for flow models: each σ list as ComfyUI computes it, ending at 0.

ComfyUI (comfy/model_sampling.py, `ModelSamplingDiscreteFlow`) keeps a table of 1000 training σs,
σ_k = shift(k / 1000) for k = 1 .. 1000 in float32, with the SD3 shift
shift(t) = a t / (1 + (a − 1) t) (arXiv 2403.03206, §5.3; a = 1 leaves t as it is). Its schedulers
(comfy/samplers.py `SCHEDULER_HANDLERS`, comfy/k_diffusion/sampling.py) pick or interpolate from it:

- simple: every (1000 / N)-th table entry from the top, σ_max first (equals Candle's schedule
  when N divides 1000);
- normal: N timesteps evenly spaced from 1000 σ_max to 1000 σ_min, each shifted;
- sgm_uniform: N + 1 such timesteps with the last one dropped;
- karras: Karras et al. (arXiv 2206.00364, eq. 5), ρ = 7, between σ_min and σ_max;
- exponential: evenly spaced in log σ;
- ddim_uniform: every (1000 // N)-th entry from the bottom (k = 1, 1 + 1000 // N, ...), reversed;
- beta: the Beta(0.6, 0.6) quantiles of 1, 1 − 1/N, ... (arXiv 2407.12173) as table indices, rounded
  half to even, repeats dropped (so it can give fewer than N steps); scipy's `beta.ppf`, as ComfyUI;
- linear_quadratic: Mochi's schedule, linear to 0.025 for the first half of the steps, then quadratic;
- kl_optimal: evenly spaced in arctan σ (needs at least 2 steps).

Here σ_min = σ_1 (shift(0.001)) and σ_max = σ_1000 (1.0). The schedules that do not begin at σ = 1
(ddim_uniform) start from σ0·noise + (1 − σ0)·(the empty latent) under `--reference comfyui`, as
ComfyUI's `noise_scaling` does (sampling/run.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sd3.errors import ConfigurationError

TABLE_SIZE = 1000  # ComfyUI's `timesteps`, and its `multiplier` (σ -> timestep)
BETA_ALPHA = BETA_BETA = 0.6  # ComfyUI's defaults for `beta_scheduler`
KARRAS_RHO = 7.0
LINEAR_QUADRATIC_THRESHOLD = 0.025


def _shift(shift: float, t: torch.Tensor) -> torch.Tensor:
    """ComfyUI's `time_snr_shift`: a t / (1 + (a − 1) t), or t itself when a = 1."""
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def sigma_table(shift: float) -> torch.Tensor:
    """(1000,) float32: σ_k = shift(k / 1000), k = 1 .. 1000, computed in ComfyUI's order of operations."""
    timesteps = (torch.arange(1, TABLE_SIZE + 1, 1) / TABLE_SIZE) * TABLE_SIZE
    return _shift(shift, timesteps / TABLE_SIZE)


def _with_zero(values) -> torch.Tensor:
    return torch.cat([torch.as_tensor(values, dtype=torch.float32), torch.zeros(1)])


def simple(steps: int, shift: float) -> torch.Tensor:
    table, stride = sigma_table(shift), TABLE_SIZE / steps
    return _with_zero([float(table[-(1 + int(i * stride))]) for i in range(steps)])


def normal(steps: int, shift: float, *, sgm: bool = False) -> torch.Tensor:
    table = sigma_table(shift)
    start, end = table[-1] * TABLE_SIZE, table[0] * TABLE_SIZE
    if sgm:
        timesteps, zero = torch.linspace(start, end, steps + 1)[:-1], True
    else:  # a table reaching σ = 0 gets one more timestep instead of an appended 0
        zero = not math.isclose(float(_shift(shift, end / TABLE_SIZE)), 0, abs_tol=1e-5)
        timesteps = torch.linspace(start, end, steps if zero else steps + 1)
    values = [float(_shift(shift, t / TABLE_SIZE)) for t in timesteps]
    return _with_zero(values) if zero else torch.tensor(values, dtype=torch.float32)


def sgm_uniform(steps: int, shift: float) -> torch.Tensor:
    return normal(steps, shift, sgm=True)


def karras(steps: int, shift: float) -> torch.Tensor:
    table = sigma_table(shift)
    lowest, highest = float(table[0]) ** (1 / KARRAS_RHO), float(table[-1]) ** (1 / KARRAS_RHO)
    return _with_zero((highest + torch.linspace(0, 1, steps) * (lowest - highest)) ** KARRAS_RHO)


def exponential(steps: int, shift: float) -> torch.Tensor:
    table = sigma_table(shift)
    return _with_zero(torch.linspace(math.log(float(table[-1])), math.log(float(table[0])), steps).exp())


def ddim_uniform(steps: int, shift: float) -> torch.Tensor:
    table = sigma_table(shift)
    reaches_zero = math.isclose(float(table[1]), 0, abs_tol=1e-5)
    stride = max(TABLE_SIZE // (steps + 1 if reaches_zero else steps), 1)
    values = ([] if reaches_zero else [0.0]) + [float(table[k]) for k in range(1, TABLE_SIZE, stride)]
    return torch.tensor(values[::-1], dtype=torch.float32)


def beta(steps: int, shift: float) -> torch.Tensor:
    try:
        from scipy.stats import beta as beta_distribution
    except ImportError:
        raise ConfigurationError('the beta scheduler needs scipy (ComfyUI computes it with scipy\'s '
                                 'beta.ppf): pip install -e ".[comfyui]"') from None
    table = sigma_table(shift)
    quantiles = beta_distribution.ppf(1 - np.linspace(0, 1, steps, endpoint=False), BETA_ALPHA, BETA_BETA)
    indices = np.rint(quantiles * (TABLE_SIZE - 1))
    kept = [int(k) for i, k in enumerate(indices) if i == 0 or k != indices[i - 1]]
    return _with_zero([float(table[k]) for k in kept])


def linear_quadratic(steps: int, shift: float) -> torch.Tensor:
    if steps == 1:
        values = [1.0, 0.0]
    else:  # genmoai/models, src/mochi_preview/infer.py (linear_quadratic_schedule)
        threshold, linear = LINEAR_QUADRATIC_THRESHOLD, steps // 2
        quadratic = steps - linear
        step_difference = linear - threshold * steps
        a = step_difference / (linear * quadratic**2)
        b = threshold / linear - 2 * step_difference / quadratic**2
        c = a * linear**2
        rising = [i * threshold / linear for i in range(linear)] + [a * i**2 + b * i + c for i in range(linear, steps)]
        values = [1.0 - x for x in rising + [1.0]]
    return torch.tensor(values, dtype=torch.float32) * sigma_table(shift)[-1]


def kl_optimal(steps: int, shift: float) -> torch.Tensor:
    if steps < 2:
        raise ConfigurationError(f"the kl_optimal scheduler needs at least 2 `steps`, got {steps}")
    table = sigma_table(shift)
    fractions = torch.arange(steps, dtype=torch.float32).div_(steps - 1)
    angles = fractions * math.atan(float(table[0])) + (1 - fractions) * math.atan(float(table[-1]))
    return _with_zero(angles.tan_())


SCHEDULERS = {
    "simple": simple,
    "sgm_uniform": sgm_uniform,
    "karras": karras,
    "exponential": exponential,
    "ddim_uniform": ddim_uniform,
    "beta": beta,
    "normal": normal,
    "linear_quadratic": linear_quadratic,
    "kl_optimal": kl_optimal,
}
"""ComfyUI's scheduler names, in its own order (`KSampler.SCHEDULERS`)."""
