"""Shared test settings: deterministic float32 on the CPU; micro-benchmarks timed only on request."""

import pytest
import torch


def pytest_configure(config):
    # tests/benchmarks run once, untimed, in a plain `pytest` (and so in CI); `pytest --benchmark-only`
    # or `--benchmark-enable` times them.
    if not config.getoption("benchmark_only", False) and not config.getoption("benchmark_enable", False):
        config.option.benchmark_disable = True


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    with torch.no_grad():
        yield
