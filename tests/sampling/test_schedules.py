"""The three schedules against their reference formulas; diffusers' scheduler is run for its own."""

import numpy as np
import pytest
import torch

from sd3.errors import ConfigurationError
from sd3.sampling import explicit_sigmas, sigmas, time_snr_shift


@pytest.mark.parametrize("steps", [1, 4, 28, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0, 6.0])
def test_diffusers_schedule_equals_flow_match_euler_discrete_scheduler(steps, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    assert torch.equal(sigmas("diffusers", steps, shift), scheduler.sigmas.float())


def test_diffusers_values_from_the_reference_table():
    assert torch.allclose(sigmas("diffusers", 4), torch.tensor([1.0, 0.85769, 0.60215, 0.00893, 0.0]), atol=1e-5)


@pytest.mark.parametrize("steps, shift", [(4, 3.0), (28, 3.0), (50, 1.0)])
def test_stability_schedule_is_the_sigma_min_formula_in_float32(steps, shift):
    """sd3_impls.py: sigma(linspace(timestep(sigma_max), timestep(sigma_min), steps)) + [0], in float32."""
    smallest = time_snr_shift(shift, torch.tensor(1 / 1000, dtype=torch.float32))
    want = [float(time_snr_shift(shift, t / 1000)) for t in torch.linspace(1000, float(smallest) * 1000, steps)]
    got = sigmas("stability", steps, shift)
    assert torch.allclose(got[:-1], torch.tensor(want), atol=1e-6) and got[-1] == 0
    # The same values as diffusers up to float32 rounding: the two differ in precision only.
    assert (got - sigmas("diffusers", steps, shift)).abs().max() < 1e-6


@pytest.mark.parametrize("steps, shift", [(4, 3.0), (28, 3.0), (10, 1.0)])
def test_candle_schedule_is_shift_of_i_over_n(steps, shift):
    want = [shift * (i / steps) / (1 + (shift - 1) * (i / steps)) for i in range(steps, -1, -1)]
    got = sigmas("candle", steps, shift)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float32)) and got[0] == 1 and got[-1] == 0


def test_time_snr_shift_is_identity_at_shift_one():
    t = np.linspace(0, 1, 11)
    assert np.allclose(time_snr_shift(1.0, t), t)


def test_explicit_sigmas():
    assert explicit_sigmas([1.0, 0.5]).tolist() == [1.0, 0.5, 0.0]
    assert explicit_sigmas([0.8, 0.3, 0.0]).tolist() == pytest.approx([0.8, 0.3, 0.0])
    with pytest.raises(ConfigurationError, match="decrease strictly"):
        explicit_sigmas([0.5, 0.7])


@pytest.mark.parametrize(
    "args, message", [(("candle", 0), "at least 1"), (("euler", 4), "unknown `scheduler`"), (("candle", 4, -1.0), "positive")]
)
def test_schedule_errors(args, message):
    with pytest.raises(ConfigurationError, match=message):
        sigmas(*args)
