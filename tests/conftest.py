"""Shared test settings: a fixed seed, autograd on; micro-benchmarks timed only on request; the tiny SD3."""

import pytest
import torch

from sd3.sampling import ModelFiles
from sd3.testing.tiny.pipeline import write_tiny_sd3


def pytest_configure(config):
    # tests/benchmarks run once, untimed, in a plain `pytest` (and so in CI); `pytest --benchmark-only`
    # or `--benchmark-enable` times them.
    if not config.getoption("benchmark_only", False) and not config.getoption("benchmark_enable", False):
        config.option.benchmark_disable = True


@pytest.fixture(autouse=True)
def _deterministic():
    """The global seed fixed per test. Autograd stays on, as a user has it: a library path that
    forgot `no_grad` then shows (tests/sampling/test_stages.py)."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return write_tiny_sd3(tmp_path_factory.mktemp("sd3"), seed=11)


@pytest.fixture(scope="session")
def files(tiny):
    """Every component from the one all-in-one tiny checkpoint, as for SD3-medium."""
    c = tiny.checkpoint
    return ModelFiles(c, c, c, c, c, tiny.clip_l_tokenizer, tiny.clip_g_tokenizer, tiny.t5_tokenizer)
