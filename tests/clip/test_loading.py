"""Loading errors for the text encoders, and T5's float16 safety."""

import pytest
import torch
from safetensors.torch import save_file

from sd3.clip import load_clip_g, load_clip_l, load_t5
from sd3.errors import ModelLoadingError
from sd3.testing.tiny.text import TinyCLIP, TinyT5, clip_state_dict, t5_state_dict


def test_clip_g_needs_its_projection():
    with pytest.raises(ModelLoadingError, match=r"has no text projection \('text_projection.weight', or OpenCLIP's "
                                                r"bare 'text_projection'\), which projects CLIP-G's pooled vector"):
        load_clip_g(clip_state_dict(TinyCLIP(vocab=100)))


def test_a_bare_openclip_projection_is_transposed_on_clip_g_and_ignored_on_clip_l(tmp_path):
    """ComfyUI's CLIPSave writes OpenCLIP's `text_projection` ([in, out], x @ P); transformers' is a Linear
    weight ([out, in]). The tiny projection is square, as CLIP-G's is: a missing transpose would load."""
    with_weight = clip_state_dict(TinyCLIP(vocab=100, projection=True), seed=2)
    bare = {k: v for k, v in with_weight.items() if k != "text_projection.weight"}
    bare["text_projection"] = with_weight["text_projection.weight"].T.contiguous()
    assert bare["text_projection"].shape[0] == bare["text_projection"].shape[1]
    save_file(bare, str(tmp_path / "clip_g_comfy.safetensors"))
    ids = torch.tensor([[98, 5, 6, 99] + [99] * 73])
    want = load_clip_g(with_weight)(ids)[1]
    assert torch.equal(load_clip_g(tmp_path / "clip_g_comfy.safetensors")(ids)[1], want)
    assert not torch.equal(load_clip_g({**bare, "text_projection": with_weight["text_projection.weight"]})(ids)[1],
                           want)  # untransposed: another vector
    plain = clip_state_dict(TinyCLIP(vocab=100), seed=2)
    assert torch.equal(load_clip_l({**plain, "text_projection": bare["text_projection"]})(ids)[1],
                       load_clip_l(plain)(ids)[1])


def test_clip_l_file_with_a_projection_loads_and_ignores_it():
    """Separate clip_l.safetensors files may carry a text_projection; SD3 uses CLIP-L's pooled output as is."""
    arch = TinyCLIP(vocab=100)
    with_projection = load_clip_l(clip_state_dict(TinyCLIP(vocab=100, projection=True), seed=1))
    without = load_clip_l(clip_state_dict(arch, seed=1))
    ids = torch.tensor([[98, 5, 6, 99] + [99] * 73])
    assert torch.equal(with_projection(ids)[1], without(ids)[1])


def test_legacy_position_ids_buffer_is_ignored():
    """Old transformers saved a `position_ids` buffer; the model computes positions itself, so even a
    wrong buffer changes nothing."""
    state_dict = clip_state_dict(TinyCLIP(vocab=100))
    plain = load_clip_l(state_dict)
    legacy = load_clip_l({**state_dict, "text_model.embeddings.position_ids": torch.arange(77).flip(0)[None]})
    ids = torch.tensor([[98, 5, 6, 7, 99] + [99] * 72])
    assert "text_model.embeddings.position_ids" not in legacy.state_dict()
    for got, want in zip(legacy(ids), plain(ids)):
        assert torch.equal(got, want)


def test_missing_clip_layer_is_listed():
    state_dict = clip_state_dict(TinyCLIP(vocab=100))
    del state_dict["text_model.encoder.layers.1.mlp.fc2.bias"]
    with pytest.raises(ModelLoadingError, match=r"CLIP-L .*1 missing key \(text_model.encoder.layers.1.mlp.fc2.bias\)"):
        load_clip_l(state_dict)


def test_t5_loader_on_a_clip_file(tmp_path):
    path = tmp_path / "clip_l.safetensors"
    save_file(clip_state_dict(TinyCLIP(vocab=100)), str(path))
    with pytest.raises(ModelLoadingError, match="not a T5 encoder checkpoint.*shared.weight"):
        load_t5(path)


def test_clip_loader_on_a_t5_file():
    with pytest.raises(ModelLoadingError, match="not a CLIP text checkpoint"):
        load_clip_l(t5_state_dict(TinyT5()))


def test_float16_t5_stays_finite_where_float16_overflows():
    """T5-XXL's feed-forward output exceeds float16's range: ours keeps `wo` and the residual in float32."""
    arch = TinyT5(vocab=64)
    state_dict = t5_state_dict(arch, seed=3)
    for key in state_dict:
        if key.endswith("DenseReluDense.wo.weight"):
            state_dict[key] = state_dict[key] * 3e4  # outputs of ~1e5, beyond float16's 65504
    ids = torch.randint(0, arch.vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    full = load_t5(state_dict)(ids)
    half_model = load_t5(state_dict, dtype="float16")
    assert half_model.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    half = half_model(ids).float()
    assert torch.isfinite(half).all()
    assert (half - full).abs().max() < 2e-2 * full.abs().max()
    for block in half_model.encoder.block:  # the naive way: everything in float16
        block.layer[1].DenseReluDense.wo.half()
    assert not torch.isfinite(half_model(ids)).all(), "the test should provoke the overflow it guards against"
