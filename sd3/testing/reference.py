"""diffusers' StableDiffusion3Pipeline over the same files: the reference side of the audit.

Each component is built on the meta device from an explicit config (derived from the config our
loaders infer) and filled through diffusers' own single-file converters with `assign=True`, so it
exists once in memory, in the reference dtype.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sd3 import clip
from sd3 import mmdit
from sd3 import vae
from sd3.checkpoint import open_checkpoint
from sd3.sampling import ModelFiles


def _tensors(path: Path, prefix: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The component's tensors in `dtype`, read as our loaders read them (sd3/checkpoint.py): in another
    dtype than the file's, through plain reads, so the file's pages are never mapped into the process."""
    with open_checkpoint(path) as checkpoint:
        part = checkpoint.component(prefix)
        return {key: part.tensor(key, dtype) for key in part.keys()}


def _fill(model, state: dict, buffers: dict | None = None) -> torch.nn.Module:
    """Assign `state`, then rebuild the non-persistent `buffers` (name -> tensor) a meta build leaves empty."""
    model.load_state_dict(state, strict=True, assign=True)
    for name, value in (buffers or {}).items():
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner).register_buffer(leaf, value, persistent=False)
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:
        raise RuntimeError(f"reference model left on the meta device: {still_meta[:5]}")
    return model.eval()


def transformer(files: ModelFiles, dtype: torch.dtype):
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    state = _tensors(files.checkpoint, mmdit.PREFIX, dtype)
    c = mmdit.Config.from_state_dict(state)
    with torch.device("meta"):
        model = SD3Transformer2DModel(
            sample_size=128, patch_size=c.patch_size, in_channels=c.in_channels, num_layers=c.depth,
            attention_head_dim=c.head_dim, num_attention_heads=c.num_heads, joint_attention_dim=c.context_dim,
            caption_projection_dim=c.hidden_size, pooled_projection_dim=c.adm_in_channels, out_channels=c.out_channels,
            pos_embed_max_size=c.pos_embed_max_size, dual_attention_layers=c.x_block_self_attn_layers,
            qk_norm="rms_norm" if c.qk_norm else None,
        )
    return _fill(model, convert_sd3_transformer_checkpoint_to_diffusers(state))


def autoencoder(files: ModelFiles, dtype: torch.dtype):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    state = _tensors(files.vae, vae.PREFIX, dtype)
    c = vae.VAEConfig.from_state_dict(state)
    config = dict(
        in_channels=c.in_channels, out_channels=c.out_channels, latent_channels=c.latent_channels,
        down_block_types=["DownEncoderBlock2D"] * len(c.block_out_channels),
        up_block_types=["UpDecoderBlock2D"] * len(c.block_out_channels), block_out_channels=list(c.block_out_channels),
        layers_per_block=c.layers_per_block, norm_num_groups=c.norm_num_groups, use_quant_conv=False,
        use_post_quant_conv=False, scaling_factor=c.scaling_factor, shift_factor=c.shift_factor,
    )
    with torch.device("meta"):
        model = AutoencoderKL(**config)
    return _fill(model, convert_ldm_vae_checkpoint(state, config))


def clip_text(path: Path, prefix: str, dtype: torch.dtype, hidden_act: str, eos: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    state = {k: v for k, v in _tensors(path, prefix, dtype).items() if not k.endswith("position_ids")}
    c = clip.CLIPConfig.from_state_dict(state)
    if "text_projection.weight" not in state:  # CLIP-L: diffusers' identity projection
        state["text_projection.weight"] = torch.eye(c.hidden_size, dtype=dtype)
    config = CLIPTextConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        max_position_embeddings=c.max_position_embeddings, hidden_act=hidden_act,
        projection_dim=state["text_projection.weight"].shape[0], eos_token_id=eos, bos_token_id=eos - 1,
        pad_token_id=eos,
    )
    with torch.device("meta"):
        model = CLIPTextModelWithProjection(config)
    positions = torch.arange(c.max_position_embeddings)[None]
    return _fill(model, state, {"text_model.embeddings.position_ids": positions})


def t5_encoder(path: Path, dtype: torch.dtype):
    from transformers import T5Config, T5EncoderModel

    state = _tensors(path, clip.T5_PREFIX, dtype)
    embedding = state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
    state["shared.weight"] = state["encoder.embed_tokens.weight"] = embedding  # one tied table
    c = clip.T5Config.from_state_dict(state)
    config = T5Config(
        vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.d_kv, d_ff=c.d_ff, num_layers=c.num_layers,
        num_heads=c.num_heads, relative_attention_num_buckets=c.relative_attention_num_buckets,
        relative_attention_max_distance=c.relative_attention_max_distance, feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6, is_encoder_decoder=False, use_cache=False,
    )
    with torch.device("meta"):
        model = T5EncoderModel(config)
    return _fill(model, state)


def pipeline(files: ModelFiles, dtype: torch.dtype = torch.float32, parts: tuple[str, ...] = ("text", "mmdit", "vae")):
    """The reference pipeline: CLIP-L padded with EOS and CLIP-G with "!", as the stabilityai repos set up.

    `parts` leaves out the models not named (None): ("text",) encodes prompts only, ("mmdit",) denoises
    given embeddings, so that a caller can hold one stage's weights at a time.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import PreTrainedTokenizerFast

    def clip_tokenizer(path: Path, pad: str):
        return PreTrainedTokenizerFast(
            tokenizer_file=str(path), bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token=pad,
            model_max_length=77,
        )

    text = "text" in parts
    eos = clip.CLIPTokenizer(files.clip_l_tokenizer).eos_id
    return StableDiffusion3Pipeline(
        transformer=transformer(files, dtype) if "mmdit" in parts else None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=autoencoder(files, dtype) if "vae" in parts else None,
        text_encoder=clip_text(files.clip_l, clip.CLIP_L_PREFIX, dtype, "quick_gelu", eos) if text else None,
        tokenizer=clip_tokenizer(files.clip_l_tokenizer, "<|endoftext|>"),
        text_encoder_2=clip_text(files.clip_g, clip.CLIP_G_PREFIX, dtype, "gelu", eos) if text else None,
        tokenizer_2=clip_tokenizer(files.clip_g_tokenizer, "!"),
        text_encoder_3=t5_encoder(files.t5xxl, dtype) if text else None,
        tokenizer_3=PreTrainedTokenizerFast(
            tokenizer_file=str(files.t5_tokenizer), eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
            model_max_length=512,
        ),
    )
