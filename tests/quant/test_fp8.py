"""fp8 safetensors files, plain and scaled in both conventions: kept in fp8, and exactly their dequantised model."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sd3 import load_clip_l, load_mmdit, load_t5
from sd3.errors import ModelLoadingError
from sd3.quant import Dequantize, is_quantized, state_bytes
from sd3.quant.writer import write_fp8
from tests.quant.conftest import fp8_reference, mmdit_inputs, relative_error

SCALINGS = [None, "scale_weight", "weight_scale"]


@pytest.fixture(scope="module", params=SCALINGS, ids=["plain", "scale_weight", "weight_scale"])
def fp8_file(request, tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("fp8") / "sd3_tiny_fp8.safetensors"
    return write_fp8(tiny.checkpoint, path, scaling=request.param), request.param


def test_writer_writes_each_convention(fp8_file):
    path, scaling = fp8_file
    with safe_open(str(path), "pt") as f:
        keys, metadata = set(f.keys()), f.metadata() or {}
        qkv = f.get_tensor("model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight")
    assert qkv.dtype == torch.float8_e4m3fn
    layer = "model.diffusion_model.joint_blocks.0.x_block.attn.qkv"
    if scaling == "scale_weight":
        assert {"model.diffusion_model.scaled_fp8", f"{layer}.scale_weight", f"{layer}.scale_input"} <= keys
    elif scaling == "weight_scale":
        assert {f"{layer}.weight_scale", f"{layer}.input_scale"} <= keys
        assert json.loads(metadata["_quantization_metadata"])["layers"][layer] == {"format": "float8_e4m3fn"}
    else:
        assert not any("scale" in key for key in keys)


def test_mmdit_is_its_dequantised_model_and_stays_fp8(fp8_file, tiny):
    path, scaling = fp8_file
    model = load_mmdit(path)
    qkv = model.joint_blocks[0].x_block.attn.qkv
    assert is_quantized(qkv) and qkv.parametrizations.weight.original.dtype == torch.float8_e4m3fn
    stored = [p for p in qkv.parametrizations.weight if isinstance(p, Dequantize)][0]
    assert (stored.input_scale is not None) == (scaling is not None)  # scale_input / input_scale read and kept
    reference = load_mmdit({k: v for k, v in fp8_reference(path).items() if k.startswith("model.diffusion_model.")})
    inputs = mmdit_inputs(model.config)
    ours, expected = model(*inputs), reference(*inputs)
    assert relative_error(ours, expected) <= 1e-5
    assert state_bytes(model) <= state_bytes(load_mmdit(tiny.checkpoint)) / 2


def test_t5_and_clip_are_their_dequantised_models(fp8_file, tiny):
    path, _ = fp8_file
    reference = fp8_reference(path)
    ids = torch.randint(0, tiny.t5.vocab, (2, 9))
    t5 = load_t5(path)
    assert is_quantized(t5.encoder.block[0].layer[1].DenseReluDense.wo)
    expected = load_t5({k: v for k, v in reference.items() if k.startswith("text_encoders.t5xxl.")})(ids)
    assert relative_error(t5(ids), expected) <= 1e-5
    assert state_bytes(t5) <= state_bytes(load_t5(tiny.checkpoint)) / 2
    ids = torch.randint(0, tiny.clip_l.vocab, (2, 77))
    clip = load_clip_l(path)
    expected = load_clip_l({k: v for k, v in reference.items() if k.startswith("text_encoders.clip_l.")})(ids)
    for ours, theirs in zip(clip(ids), expected):
        assert relative_error(ours, theirs) <= 1e-5


def test_dtype_is_the_compute_dtype(fp8_file):
    path, _ = fp8_file
    model = load_mmdit(path, dtype=torch.bfloat16)
    assert model.joint_blocks[0].x_block.attn.qkv.weight.dtype == torch.bfloat16
    assert model.joint_blocks[0].x_block.attn.qkv.parametrizations.weight.original.dtype == torch.float8_e4m3fn
    assert model.joint_blocks[0].x_block.attn.qkv.bias.dtype == torch.bfloat16
    t5 = load_t5(path, dtype=torch.float16)  # float16 T5 runs `wo` in float32, still stored in fp8
    wo = t5.encoder.block[0].layer[1].DenseReluDense.wo
    assert wo.weight.dtype == torch.float32 and wo.parametrizations.weight.original.dtype == torch.float8_e4m3fn


def test_e5m2_files_load(tiny, tmp_path):
    path = write_fp8(tiny.checkpoint, tmp_path / "e5m2.safetensors", fp8="F8_E5M2", scaling="scale_weight")
    model = load_mmdit(path)
    assert model.joint_blocks[0].x_block.attn.qkv.parametrizations.weight.original.dtype == torch.float8_e5m2
    reference = load_mmdit({k: v for k, v in fp8_reference(path).items() if k.startswith("model.diffusion_model.")})
    inputs = mmdit_inputs(model.config)
    assert relative_error(model(*inputs), reference(*inputs)) <= 1e-5


def _with(path, tmp_path, metadata=None, **extra):
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    out = tmp_path / "edited.safetensors"
    save_file({**tensors, **extra}, str(out), metadata=metadata)
    return out


def test_another_quantisation_format_is_named(tiny, tmp_path):
    layer = "model.diffusion_model.joint_blocks.0.x_block.attn.qkv"
    layers = {"layers": {layer: {"format": "nvfp4"}}}
    path = _with(tiny.checkpoint, tmp_path, metadata={"_quantization_metadata": json.dumps(layers)})
    with pytest.raises(ModelLoadingError, match=r"format 'nvfp4' \(e.g. .*qkv\).*supported: float8_e4m3fn"):
        load_mmdit(path)


def test_a_scale_on_a_non_fp8_weight_is_refused(tiny, tmp_path):
    path = _with(tiny.checkpoint, tmp_path, **{
        "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.scale_weight": torch.tensor(2.0)})
    with pytest.raises(ModelLoadingError, match=r"qkv.scale_weight.*F32, not fp8"):
        load_mmdit(path)


def test_integer_weights_are_refused_by_name(tiny, tmp_path):
    key = "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"
    with safe_open(str(tiny.checkpoint), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors[key] = tensors[key].to(torch.int8)
    save_file(tensors, str(tmp_path / "int8.safetensors"))
    with pytest.raises(ModelLoadingError, match=r"stores 'joint_blocks.0.x_block.attn.qkv.weight' as torch.int8"):
        load_mmdit(tmp_path / "int8.safetensors")
