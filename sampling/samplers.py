"""Samplers over a sigma schedule: Euler (Candle, diffusers) and DPM-Solver++(2M) (Stability).

Both take a velocity function v(x, sigma, step) and float32 latents, and return the latents at
the schedule's last sigma (0). Legend: b batch, c latent channels, h w latent size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sd3.errors import ConfigurationError

Velocity = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor], None]  # (step, steps, latents after it)
AfterStep = Callable[[int, torch.Tensor], torch.Tensor]  # (step index, latents) -> latents (inpainting's blend)


def euler(
    velocity: Velocity,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    round_to: torch.dtype | None = None,
    on_step: StepCallback | None = None,
    after_step: AfterStep | None = None,
) -> torch.Tensor:
    """x <- x + v * (sigma_next - sigma): the flow ODE's Euler step (arXiv 2403.03206, eq. 1).

    Args:
        round_to: round the latents to this dtype after every step, as diffusers does with the
            model's dtype; None keeps them float32 throughout, as Stability does.
        after_step: replaces the latents after step i (inpainting's blend, sampling/img2img.py).
    """
    steps = len(sigmas) - 1
    for i in range(steps):
        v = velocity(x, sigmas[i], i)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
        if round_to is not None:
            x = x.to(round_to).float()
        if after_step is not None:
            x = after_step(i, x)
        if on_step is not None:
            on_step(i + 1, steps, x)
    return x


def dpmpp_2m(
    velocity: Velocity,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    round_to: torch.dtype | None = None,
    on_step: StepCallback | None = None,
    after_step: AfterStep | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al., arXiv 2211.01095, Alg. 2) on the denoised prediction x0 = x - sigma v.

    With lambda = -log(sigma) and h = lambda_next - lambda, each step is
    x <- (sigma_next / sigma) x - expm1(-h) * D, where D is x0 for the first and the last step and
    otherwise the second-order blend (1 + 1/(2r)) x0 - 1/(2r) x0_previous, r = h_previous / h.
    As Stability's sd3_impls.py `sample_dpmpp_2m` applies it to SD3.
    """
    steps = len(sigmas) - 1
    previous = None
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = x - sigma * velocity(x, sigma, i)
        if sigma_next == 0:
            x = denoised
        else:
            h = torch.log(sigma) - torch.log(sigma_next)
            blend = denoised
            if previous is not None:
                r = (torch.log(sigmas[i - 1]) - torch.log(sigma)) / h
                blend = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
            x = (sigma_next / sigma) * x - torch.expm1(-h) * blend
        previous = denoised
        if round_to is not None:
            x = x.to(round_to).float()
        if after_step is not None:
            x = after_step(i, x)
        if on_step is not None:
            on_step(i + 1, steps, x)
    return x


SAMPLERS = {"euler": euler, "dpmpp_2m": dpmpp_2m}


def sampler(name: str):
    """The sampler function named `name` ("euler" or "dpmpp_2m")."""
    if name not in SAMPLERS:
        raise ConfigurationError(f"unknown `sampler_name` '{name}'; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
