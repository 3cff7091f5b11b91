"""Flow-matching noise schedules: the timestep shift and the three references' sigma lists.

Rectified flow (arXiv 2403.03206, §2 and §3.1) moves x_sigma = (1 - sigma) x_0 + sigma * noise from
sigma = 1 to 0. SD3 shifts the schedule towards high noise for high resolutions (§5.3,
"Resolution-dependent shifting of timestep schedules"): shift(t) = a t / (1 + (a - 1) t).
The references discretise it differently
(docs/reference.md §5):

- candle: sigma_i = shift(i / N) for i = N .. 0 (N + 1 values, ending at exactly 0);
  candle-examples/examples/stable-diffusion-3/sampling.rs.
- diffusers: shift(linspace(1, shift(1/1000), N)) in float64, then 0 (the smallest training sigma is
  shifted twice); FlowMatchEulerDiscreteScheduler.set_timesteps.
- stability: the same values computed in float32; sd3_impls.py `ModelSamplingDiscreteFlow`.

ComfyUI's schedulers (simple, normal, sgm_uniform, karras, ...) are named here too; they pick from
its table of 1000 training σs (sampling/comfyui_schedules.py). Any of the twelve names is a
`scheduler`, whatever the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sd3.errors import ConfigurationError
from sd3.sampling.comfyui_schedules import SCHEDULERS as COMFYUI_SCHEDULERS

TRAINING_TIMESTEPS = 1000


def time_snr_shift(shift: float, t):
    """shift * t / (1 + (shift - 1) * t), for floats, numpy arrays or tensors."""
    return shift * t / (1 + (shift - 1) * t)


def candle_sigmas(steps: int, shift: float) -> torch.Tensor:
    """shift(i / N) for i = N .. 0: N + 1 values ending at exactly 0."""
    values = time_snr_shift(shift, np.arange(steps, -1, -1, dtype=np.float64) / steps)
    return torch.tensor(values, dtype=torch.float32)


def diffusers_sigmas(steps: int, shift: float) -> torch.Tensor:
    """shift(linspace(1, shift(1/1000), N)) in float64, then 0."""
    # sigma_min is computed in float32 at construction, the rest in float64 over timesteps (x1000).
    smallest = float(time_snr_shift(shift, torch.tensor(1.0, dtype=torch.float32) / TRAINING_TIMESTEPS))
    timesteps = np.linspace(TRAINING_TIMESTEPS, smallest * TRAINING_TIMESTEPS, steps)
    values = time_snr_shift(shift, timesteps / TRAINING_TIMESTEPS)
    return torch.cat([torch.tensor(values, dtype=torch.float32), torch.zeros(1)])


def stability_sigmas(steps: int, shift: float) -> torch.Tensor:
    """The same values as diffusers', computed in float32."""
    smallest = time_snr_shift(shift, torch.tensor(1 / TRAINING_TIMESTEPS, dtype=torch.float32))
    timesteps = torch.linspace(1.0, float(smallest), steps, dtype=torch.float32)
    return torch.cat([time_snr_shift(shift, timesteps), torch.zeros(1)])


SCHEDULES = {"candle": candle_sigmas, "diffusers": diffusers_sigmas, "stability": stability_sigmas, **COMFYUI_SCHEDULERS}


def sigmas(schedule: str, steps: int, shift: float = 3.0) -> torch.Tensor:
    """The sigmas (float32, from at most 1 down to 0) of an N-step schedule: N + 1 of them, or fewer
    where ComfyUI's `beta` drops repeats."""
    if steps < 1:
        raise ConfigurationError(f"`steps` must be at least 1, got {steps}")
    if shift <= 0:
        raise ConfigurationError(f"`shift` must be positive, got {shift}")
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ConfigurationError(f"unknown `scheduler` '{schedule}'; choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[schedule](steps, shift)


def explicit_sigmas(values: Sequence[float]) -> torch.Tensor:
    """A caller's own schedule: strictly decreasing, ending at 0 (appended if missing)."""
    tensor = torch.tensor(list(values), dtype=torch.float32)
    if tensor.ndim != 1 or len(tensor) < 1:
        raise ConfigurationError("explicit `sigmas` need at least one value")
    if tensor[-1] != 0:
        tensor = torch.cat([tensor, torch.zeros(1)])
    if not (tensor[1:] < tensor[:-1]).all() or tensor[0] > 1 or tensor[-1] < 0:
        raise ConfigurationError(f"`sigmas` must decrease strictly from at most 1 to 0, got {tensor.tolist()}")
    return tensor
