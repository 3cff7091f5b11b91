"""Our CLIP and T5 against transformers' models on the same tiny random checkpoints.

References: `transformers.CLIPTextModelWithProjection` loaded through diffusers'
`convert_ldm_clip_checkpoint` (CLIP-L with the identity projection diffusers gives it), and
`transformers.T5EncoderModel` through `convert_sd3_t5_checkpoint_to_diffusers`. Tolerance: max
|Δ| ≤ 1e-5 in float32 on outputs of order one (CLIP measures 0: the same ops in the same order;
T5 about 2e-6).
"""

import pytest
import torch
from safetensors.torch import save_file

from sd3.clip import CLIP_G_PREFIX, CLIP_L_PREFIX, T5_PREFIX, load_clip_g, load_clip_l, load_t5
from sd3.testing.tiny.text import clip_state_dict, t5_state_dict, transformers_clip, transformers_t5

TOLERANCE = 1e-5
PROMPTS = ["a photo of a cat", "an astronaut riding a horse on the moon, oil painting", ""]


def _close(got, want):
    assert got.shape == want.shape
    assert 0.3 < want.std() < 5
    delta = (got - want).abs().max().item()
    assert delta <= TOLERANCE, f"max |Δ| = {delta:.2e}"


@pytest.mark.parametrize("layout", ["all-in-one", "separate file"])
@pytest.mark.parametrize("which", ["clip_l", "clip_g"])
def test_clip_matches_transformers(which, layout, archs, clip_tokenizer, tmp_path):
    arch = archs[0] if which == "clip_l" else archs[1]
    prefix = CLIP_L_PREFIX if which == "clip_l" else CLIP_G_PREFIX
    state_dict = clip_state_dict(arch, prefix=prefix if layout == "all-in-one" else "", seed=len(which))
    path = tmp_path / f"{which}.safetensors"
    save_file(state_dict, str(path))
    ours = (load_clip_l if which == "clip_l" else load_clip_g)(path)
    ref = transformers_clip(arch, state_dict, prefix if layout == "all-in-one" else "")

    ids = torch.tensor(clip_tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids)
    penultimate, pooled = ours(ids)
    out = ref(ids, output_hidden_states=True)
    _close(penultimate, out.hidden_states[-2])
    _close(pooled, out.text_embeds)  # projected for CLIP-G, identity-projected (= unprojected) for CLIP-L
    if which == "clip_l":
        _close(pooled, ref.text_model(ids).pooler_output)


@pytest.mark.parametrize("layout", ["all-in-one", "separate file"])
@pytest.mark.parametrize("length", [7, 77, 256])
def test_t5_matches_transformers(layout, length, archs, tmp_path):
    arch = archs[2]
    state_dict = t5_state_dict(arch, prefix=T5_PREFIX if layout == "all-in-one" else "", seed=length)
    path = tmp_path / "t5xxl_fp16.safetensors"
    save_file(state_dict, str(path))
    ids = torch.randint(0, arch.vocab, (2, length), generator=torch.Generator().manual_seed(length))
    _close(load_t5(path)(ids), transformers_t5(arch, state_dict)(ids).last_hidden_state)


@pytest.mark.parametrize("keys", [("shared.weight",), ("encoder.embed_tokens.weight",)])
def test_t5_embedding_under_either_name(keys, archs):
    arch = archs[2]
    both = t5_state_dict(arch, seed=5)
    one = t5_state_dict(arch, seed=5, embedding_keys=keys)
    ids = torch.randint(0, arch.vocab, (1, 12))
    assert torch.equal(load_t5(one)(ids), load_t5(both)(ids))
