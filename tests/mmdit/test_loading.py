"""Loading an MMDiT from each layout, and every way a checkpoint or an input can be wrong."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from sd3.errors import ConfigurationError, DeviceError, ModelLoadingError
from sd3.mmdit import Config, load_mmdit
from sd3.testing.tiny.mmdit import SD3_LIKE, SD35_MEDIUM_LIKE, mmdit_state_dict


@pytest.fixture(scope="module")
def state_dict():
    return mmdit_state_dict(SD35_MEDIUM_LIKE, seed=3)


def _inputs(batch=1, height=8, width=8, context_len=4, adm=32, context_dim=48):
    return (torch.randn(batch, 16, height, width), torch.full((batch,), 500.0),
            torch.randn(batch, adm), torch.randn(batch, context_len, context_dim))


def test_all_in_one_checkpoint_ignores_other_components(tmp_path, state_dict):
    """An all-in-one file also holds the VAE and text encoders under their own prefixes."""
    others = {
        "first_stage_model.decoder.conv_in.weight": torch.randn(4, 16, 3, 3),
        "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight": torch.randn(8),
    }
    path = tmp_path / "all_in_one.safetensors"
    save_file({**state_dict, **others}, str(path))
    from_file = load_mmdit(path)
    bare = load_mmdit({k.removeprefix("model.diffusion_model."): v for k, v in state_dict.items()})
    inputs = _inputs()
    assert torch.equal(from_file(*inputs), bare(*inputs))


def test_loaded_weights_are_the_checkpoint_tensors(state_dict):
    model = load_mmdit(state_dict)
    loaded = model.state_dict()
    for key, tensor in state_dict.items():
        assert torch.equal(loaded[key.removeprefix("model.diffusion_model.")], tensor), key
    assert len(loaded) == len(state_dict)
    assert not model.training


def test_config_is_read_off_the_checkpoint(state_dict):
    config = load_mmdit(state_dict).config
    assert config == Config(
        depth=3, hidden_size=192, num_heads=3, pos_embed_max_size=12, adm_in_channels=32, context_dim=48,
        qk_norm=True, x_block_self_attn_layers=(0,),
    )
    assert config.max_image_size == 12 * 2 * 8


def test_dtype_by_name(state_dict):
    assert load_mmdit(state_dict, dtype="float16").dtype == torch.float16


# --- files ----------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadingError, match="not found"):
        load_mmdit(tmp_path / "nope.safetensors")


def test_directory(tmp_path):
    with pytest.raises(ModelLoadingError, match="directory"):
        load_mmdit(tmp_path)


def test_pickle_checkpoint_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {}}))
    with pytest.raises(ModelLoadingError, match="only .safetensors"):
        load_mmdit(path)


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("<html>401 Unauthorized</html>")
    with pytest.raises(ModelLoadingError, match="not a readable safetensors file"):
        load_mmdit(path)


def test_truncated_file(tmp_path, state_dict):
    path = tmp_path / "model.safetensors"
    save_file(state_dict, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ModelLoadingError, match="truncated"):
        load_mmdit(path)


def test_not_a_path_or_dict():
    with pytest.raises(ModelLoadingError, match="path to a .safetensors file or a dict"):
        load_mmdit(42)


def test_dict_with_non_tensor_values(state_dict):
    with pytest.raises(ModelLoadingError, match="not tensors"):
        load_mmdit({**state_dict, "model.diffusion_model.extra": [1, 2]})


def test_file_without_an_mmdit(tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.randn(4, 16, 3, 3)}, str(path))
    with pytest.raises(ModelLoadingError, match="not an MMDiT checkpoint.*x_embedder.proj.weight"):
        load_mmdit(path)


# --- keys -----------------------------------------------------------------------------------


def test_missing_keys_are_listed_with_a_count(state_dict):
    # 3 blocks: 2 streams in blocks 0-1 and the x stream of block 2 have an MLP, 2 tensors each.
    broken = {k: v for k, v in state_dict.items() if ".mlp.fc2." not in k}
    with pytest.raises(ModelLoadingError) as info:
        load_mmdit(broken)
    message = str(info.value)
    assert "10 missing keys" in message and "and 5 more" in message
    assert "joint_blocks.0.x_block.mlp.fc2.weight" in message


def test_unexpected_keys_are_listed(state_dict):
    extra = {**state_dict, "model.diffusion_model.joint_blocks.0.x_block.attn.extra.weight": torch.ones(2)}
    with pytest.raises(ModelLoadingError, match=r"1 unexpected key \(joint_blocks.0.x_block.attn.extra.weight\)"):
        load_mmdit(extra)


def test_shape_mismatch_is_listed(state_dict):
    key = "model.diffusion_model.joint_blocks.1.context_block.mlp.fc1.bias"
    with pytest.raises(ModelLoadingError, match=r"shape mismatch .*fc1.bias: checkpoint \(5,\) vs model \(768,\)"):
        load_mmdit({**state_dict, key: torch.ones(5)})


def test_two_shape_mismatches_are_counted_in_good_english(state_dict):
    keys = ["model.diffusion_model.joint_blocks.1.context_block.mlp.fc1.bias",
            "model.diffusion_model.joint_blocks.0.context_block.mlp.fc1.bias"]
    with pytest.raises(ModelLoadingError, match=r"2 shape mismatches \("):
        load_mmdit({**state_dict, **{key: torch.ones(5) for key in keys}})


def test_non_square_position_table(state_dict):
    key = "model.diffusion_model.pos_embed"
    with pytest.raises(ConfigurationError, match="not a square grid"):
        load_mmdit({**state_dict, key: torch.ones(1, 140, 192)})


# --- devices and inputs ---------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda(state_dict):
    with pytest.raises(DeviceError, match=r"use `device=\"cpu\"`"):
        load_mmdit(state_dict, device="cuda")


def test_unknown_dtype(state_dict):
    with pytest.raises(DeviceError, match="unknown `dtype` 'float8'"):
        load_mmdit(state_dict, dtype="float8")


def test_grid_larger_than_the_position_table_names_the_largest_image(state_dict):
    model = load_mmdit(state_dict)  # 12x12 table, patch 2: at most 24x24 latents, 192x192 pixels
    model(*_inputs(height=24, width=24))
    with pytest.raises(ConfigurationError, match="largest image this model supports is 192x192 pixels"):
        model(*_inputs(height=26, width=8))


@pytest.mark.parametrize(
    "inputs, message",
    [
        (_inputs(height=9), "multiples of the patch size 2"),
        ((torch.randn(1, 4, 8, 8),) + _inputs()[1:], r"x must be \(b, 16, H, W\)"),
        (_inputs()[:2] + (torch.randn(1, 31),) + _inputs()[3:], r"y must be \(1, 32\)"),
        (_inputs()[:3] + (torch.randn(1, 4, 47),), r"context must be \(1, L, 48\)"),
        ((_inputs()[0], torch.ones(2)) + _inputs()[2:], r"t must be \(b,\)"),
    ],
)
def test_bad_inputs(state_dict, inputs, message):
    with pytest.raises(ConfigurationError, match=message):
        load_mmdit(state_dict)(*inputs)


def test_skip_layer_out_of_range():
    model = load_mmdit(mmdit_state_dict(SD3_LIKE))
    with pytest.raises(ConfigurationError, match=r"skip_layers \[7\] do not exist.*0..1"):
        model(*_inputs(), skip_layers=[7])
