"""Samplers over a sigma schedule: Euler (Candle, diffusers) and DPM-Solver++(2M) (Stability).

Both take a velocity function v(x, sigma, step) and float32 latents, and return the latents at
the schedule's last sigma (0). Legend: b batch, c latent channels, h w latent size.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sd3.errors import ConfigurationError

Velocity = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
AfterStep = Callable[[int, torch.Tensor], torch.Tensor]  # (step index, latents) -> latents (inpainting's blend)


@dataclass(frozen=True)
class Step:
    """What one sampler step saw and did, handed to `on_step` right after it.

    Rectified flow (arXiv 2403.03206, §2) puts the latents at x_σ = (1 − σ) x0 + σ ε and the model
    predicts the velocity v = ε − x0, so its view of the clean image is x0 = x_σ − σ v.

    Attributes:
        step: the step just taken, 1 .. `steps`; steps: the schedule's number of steps.
        sigma: the σ the model was evaluated at (the step's start), in [0, 1] (1 is pure noise).
        sigma_next: the σ the latents are at now.
        latents: (b, 16, h, w) float32, model space, after the step (rounded or blended as the
            reference and inpainting say).
        x0: (b, 16, h, w) float32, model space: the clean latents the model predicts from the
            step's start, x − σ v; decode it to see what the model is drawing.
        velocity: (b, 16, h, w) float32: the guided velocity v (after CFG and SLG) the step used.
        indices: each row's image index: its global index in `generate()` and `generate_many()`.

    The tensors are the sampler's own, on the pipeline's device: read or copy them, never change
    them in place (keeping them keeps their memory). When inpainting, `latents` are blended and x0 is
    not. For image to image, `steps` counts the part of the schedule that runs (strength 0.5 of 4
    steps reports 2).
    """

    step: int
    steps: int
    sigma: float
    sigma_next: float
    latents: torch.Tensor
    x0: torch.Tensor
    velocity: torch.Tensor
    indices: tuple[int, ...]


StepCallback = Callable[[Step], None]


def step_callback(fn: Callable | None) -> StepCallback | None:
    """`fn` as a callback of one `Step`. One written for the old signature `fn(step, steps, latents)`
    (three required positional parameters, or only `*args`) is wrapped, so it keeps working."""
    if fn is None:
        return None
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: the documented form
        return fn
    required = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    if len(required) >= 3 or (not required and any(p.kind is p.VAR_POSITIONAL for p in parameters)):
        return lambda step: fn(step.step, step.steps, step.latents)
    return fn


def _reporter(on_step: StepCallback | None, sigmas: torch.Tensor, rows: int, indices: Sequence[int] | None):
    """(i, x, x0, v) -> `on_step(Step(...))`; the σ values are read off the device once, not every step."""
    if on_step is None:
        return lambda i, x, x0, v: None
    values, rows = sigmas.tolist(), tuple(indices) if indices is not None else tuple(range(rows))
    return lambda i, x, x0, v: on_step(Step(i + 1, len(values) - 1, values[i], values[i + 1], x, x0, v, rows))


def euler(
    velocity: Velocity,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    round_to: torch.dtype | None = None,
    on_step: StepCallback | None = None,
    after_step: AfterStep | None = None,
    indices: Sequence[int] | None = None,
) -> torch.Tensor:
    """x <- x + v * (sigma_next - sigma): the flow ODE's Euler step (arXiv 2403.03206, eq. 1).

    Args:
        round_to: round the latents to this dtype after every step, as diffusers does with the
            model's dtype; None keeps them float32 throughout, as Stability does.
        after_step: replaces the latents after step i (inpainting's blend, sampling/img2img.py).
        on_step: called with a `Step` after every step (`on_step(step, steps, latents)` works too);
            indices: the rows' image indices for it.
    """
    steps, on_step = len(sigmas) - 1, step_callback(on_step)
    report = _reporter(on_step, sigmas, x.shape[0], indices)
    for i in range(steps):
        v = velocity(x, sigmas[i], i)
        x0 = x - sigmas[i] * v if on_step is not None else None
        x = x + (sigmas[i + 1] - sigmas[i]) * v
        if round_to is not None:
            x = x.to(round_to).float()
        if after_step is not None:
            x = after_step(i, x)
        report(i, x, x0, v)
    return x


def dpmpp_2m(
    velocity: Velocity,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    round_to: torch.dtype | None = None,
    on_step: StepCallback | None = None,
    after_step: AfterStep | None = None,
    indices: Sequence[int] | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al., arXiv 2211.01095, Alg. 2) on the denoised prediction x0 = x - sigma v.

    With lambda = -log(sigma) and h = lambda_next - lambda, each step is
    x <- (sigma_next / sigma) x - expm1(-h) * D, where D is x0 for the first and the last step and
    otherwise the second-order blend (1 + 1/(2r)) x0 - 1/(2r) x0_previous, r = h_previous / h.
    As Stability's sd3_impls.py `sample_dpmpp_2m` applies it to SD3.
    """
    steps, on_step, previous = len(sigmas) - 1, step_callback(on_step), None
    report = _reporter(on_step, sigmas, x.shape[0], indices)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        v = velocity(x, sigma, i)
        denoised = x - sigma * v
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
        report(i, x, denoised, v)
    return x


SAMPLERS = {"euler": euler, "dpmpp_2m": dpmpp_2m}


def sampler(name: str):
    """The sampler function named `name` ("euler" or "dpmpp_2m")."""
    if name not in SAMPLERS:
        raise ConfigurationError(f"unknown `sampler_name` '{name}'; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
