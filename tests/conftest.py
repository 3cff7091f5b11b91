"""Shared test settings: deterministic CPU float32, a fixed thread count for stable numerics."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    with torch.no_grad():
        yield
