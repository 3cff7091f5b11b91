import pytest

from sd3.sampling import ModelFiles
from sd3.testing.tiny.pipeline import write_tiny_sd3


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return write_tiny_sd3(tmp_path_factory.mktemp("sd3"), seed=11)


@pytest.fixture(scope="session")
def files(tiny):
    """Every component from the one all-in-one tiny checkpoint, as for SD3-medium."""
    c = tiny.checkpoint
    return ModelFiles(c, c, c, c, c, tiny.clip_l_tokenizer, tiny.clip_g_tokenizer, tiny.t5_tokenizer)
