"""Automatic device choice (CUDA, then MPS, then the CPU) and the default dtype per device."""

import logging

import pytest
import torch

from sd3 import DeviceError, StableDiffusion3
from sd3 import devices


@pytest.mark.parametrize(
    "cuda, mps, expected, dtype",
    [(True, True, "cuda", torch.bfloat16), (False, True, "mps", torch.float16), (False, False, "cpu", torch.float32)],
)
def test_automatic_choice_and_default_dtype(monkeypatch, cuda, mps, expected, dtype):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(devices, "_mps_available", lambda: mps)
    device = devices.resolve_device(None)
    assert device.type == expected and devices.default_dtype(device) == dtype


def test_mps_asked_for_where_there_is_none(monkeypatch):
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    with pytest.raises(DeviceError, match='MPS was requested .* use `device="cpu"`'):
        devices.resolve_device("mps")


def test_the_pipeline_logs_its_device_once(files, caplog):
    with caplog.at_level(logging.INFO, logger="sd3"):
        pipe = StableDiffusion3(files, device="cpu", keep="all")
        pipe.generate("a cat", height=32, width=32, steps=1, cfg=4.0, quiet=True)
        pipe.generate("a cat", height=32, width=32, steps=1, cfg=4.0, quiet=True)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("device ")]
    assert lines == [f"device cpu, {torch.get_num_threads()} threads, float32"]
