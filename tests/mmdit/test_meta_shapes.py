"""Full-size MMDiTs built on the meta device have exactly the tensors real checkpoints have.

For each of the four variants, our model's state dict (names and shapes, no memory), passed
through diffusers' single-file converter, must be exactly what a diffusers
`SD3Transformer2DModel` of the real published config expects. diffusers' converter reads the
official key names, so this is how we know real checkpoints will load with no renaming.
"""

import pytest
import torch

from sd3.mmdit import MMDiT, Config

# The published diffusers configs (transformer/config.json of each stabilityai repo).
DIFFUSERS_CONFIGS = {
    "3-medium": dict(num_layers=24, num_attention_heads=24, caption_projection_dim=1536, pos_embed_max_size=192),
    "3.5-large": dict(
        num_layers=38, num_attention_heads=38, caption_projection_dim=2432, pos_embed_max_size=192, qk_norm="rms_norm"
    ),
    "3.5-large-turbo": dict(
        num_layers=38, num_attention_heads=38, caption_projection_dim=2432, pos_embed_max_size=192, qk_norm="rms_norm"
    ),
    "3.5-medium": dict(
        num_layers=24,
        num_attention_heads=24,
        caption_projection_dim=1536,
        pos_embed_max_size=384,
        qk_norm="rms_norm",
        dual_attention_layers=tuple(range(13)),
    ),
}
COMMON = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    attention_head_dim=64,
    joint_attention_dim=4096,
    pooled_projection_dim=2048,
    out_channels=16,
)


def _shapes(state_dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


@pytest.mark.parametrize("which", list(DIFFUSERS_CONFIGS))
def test_preset_matches_the_real_diffusers_layout(which):
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    with torch.device("meta"):
        ours = MMDiT(Config.preset(which))
        ref = SD3Transformer2DModel(**COMMON, **DIFFUSERS_CONFIGS[which])
    checkpoint = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    remaining = dict(checkpoint)
    converted = convert_sd3_transformer_checkpoint_to_diffusers(remaining)
    assert not remaining, f"tensors diffusers' converter does not know: {sorted(remaining)[:5]}"
    assert _shapes(converted) == _shapes(ref.state_dict())


@pytest.mark.parametrize("which", list(DIFFUSERS_CONFIGS))
def test_config_inferred_from_a_full_size_state_dict_is_the_preset(which):
    with torch.device("meta"):
        model = MMDiT(Config.preset(which))
    assert Config.from_state_dict(model.state_dict()) == Config.preset(which)


def test_unknown_variant_is_a_configuration_error():
    from sd3.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="3.5-medium"):
        Config.preset("4-ultra")
