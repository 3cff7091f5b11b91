"""LyCORIS LoHa and LoKr files, checked against the LyCORIS package's own ΔW (`lycoris.functional`).

The same factors are written in LyCORIS' names (`lycoris_` + diffusers' module names with
underscores) and in kohya's (`lora_unet_` + ours); merged into the tiny MMDiT, every changed row
equals W + scale · ΔW_lycoris within 1e-6 (float32: the same products, summed in another order).
"""

import pytest
import torch
from lycoris.functional import loha, lokr
from safetensors.torch import save_file

from sd3 import ModelLoadingError
from sd3.lora import load_lora
from sd3.mmdit import load_mmdit

SCALE, ALPHA, RANK = 0.7, 3.0, 4


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.2


def _modules(d: int) -> dict[str, tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Module suffix -> (its LyCORIS tensors, ΔW from lycoris.functional), on three kinds of module."""
    w1a, w1b, w2a, w2b = _randn(d, RANK, seed=1), _randn(RANK, d, seed=2), _randn(d, RANK, seed=3), _randn(RANK, d, seed=4)
    hada = {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b, "alpha": torch.tensor(ALPHA)}
    hada_delta = loha.diff_weight(w1b, w1a, w2b, w2a, None, None, gamma=ALPHA / RANK)
    k1, k2a, k2b = _randn(4, 4, seed=5), _randn(d // 4, RANK, seed=6), _randn(RANK, d // 4, seed=7)
    decomposed = {"lokr_w1": k1, "lokr_w2_a": k2a, "lokr_w2_b": k2b, "alpha": torch.tensor(ALPHA)}
    decomposed_delta = lokr.diff_weight(k1, None, None, None, k2a, k2b, None, gamma=ALPHA)
    k2 = _randn(d // 4, d // 4, seed=8)
    whole = {"lokr_w1": k1, "lokr_w2": k2, "alpha": torch.tensor(ALPHA)}  # neither side a product: scale 1
    whole_delta = lokr.diff_weight(k1, None, None, k2, None, None, None, gamma=ALPHA)
    return {"attn_to_out_0": (hada, hada_delta), "attn_to_add_out": (decomposed, decomposed_delta),
            "attn_to_q": (whole, whole_delta)}


# diffusers' module (LyCORIS names) -> ours (kohya names), and the rows it changes
OURS = {"attn_to_out_0": ("x_block_attn_proj", "x_block.attn.proj", slice(None)),
        "attn_to_add_out": ("context_block_attn_proj", "context_block.attn.proj", slice(None)),
        "attn_to_q": (None, "x_block.attn.qkv", "q")}


@pytest.mark.parametrize("naming", ["lycoris", "kohya"])
@pytest.mark.parametrize("merge", [True, False])
def test_loha_and_lokr_give_lycoris_own_delta(tiny, tmp_path, naming, merge):
    d = tiny.mmdit.hidden
    modules = _modules(d)
    if naming == "kohya":  # kohya names our fused qkv as a whole: leave the q-only module out
        modules.pop("attn_to_q")
    tensors = {}
    for suffix, (factors, _) in modules.items():
        name = f"lycoris_transformer_blocks_0_{suffix}" if naming == "lycoris" else f"lora_unet_joint_blocks_0_{OURS[suffix][0]}"
        tensors.update({f"{name}.{key}": value.clone() for key, value in factors.items()})
    save_file(tensors, str(tmp_path / f"{naming}.safetensors"))
    base, adapted = load_mmdit(tiny.checkpoint), load_mmdit(tiny.checkpoint)
    load_lora(tmp_path / f"{naming}.safetensors").apply({"mmdit": adapted}, SCALE, merge=merge)
    for suffix, (_, delta) in modules.items():
        _, module, rows = OURS[suffix]
        key = f"joint_blocks.0.{module}.weight"
        rows = slice(0, d) if rows == "q" else rows
        want = base.state_dict()[key].clone()
        want[rows] += SCALE * delta
        got = dict(adapted.named_parameters()).get(key)
        got = got if got is not None else getattr(adapted.get_submodule(f"joint_blocks.0.{module}"), "weight")
        assert (got - want).abs().max() <= 1e-6, suffix
        assert (SCALE * delta).abs().max() > 1e-3  # the module does change


def test_a_tucker_lycoris_module_is_refused(tmp_path):
    save_file({"lycoris_transformer_blocks_0_attn_to_q.hada_w1_a": torch.ones(4, 2),
               "lycoris_transformer_blocks_0_attn_to_q.hada_t1": torch.ones(2, 2, 3, 3)}, str(tmp_path / "t.safetensors"))
    with pytest.raises(ModelLoadingError, match="LyCORIS module '.*' is a convolution \\(Tucker\\) module"):
        load_lora(tmp_path / "t.safetensors")


def test_a_loha_on_a_text_encoder_in_kohyas_names(tiny, tmp_path):
    from sd3.clip import load_clip_l

    width = tiny.clip_l.width
    factors = {"hada_w1_a": _randn(width, RANK, seed=11), "hada_w1_b": _randn(RANK, width, seed=12),
               "hada_w2_a": _randn(width, RANK, seed=13), "hada_w2_b": _randn(RANK, width, seed=14),
               "alpha": torch.tensor(ALPHA)}
    name = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    save_file({f"{name}.{k}": v for k, v in factors.items()}, str(tmp_path / "te.safetensors"))
    base, adapted = load_clip_l(tiny.checkpoint), load_clip_l(tiny.checkpoint)
    load_lora(tmp_path / "te.safetensors").apply({"clip_l": adapted}, SCALE)
    delta = loha.diff_weight(factors["hada_w1_b"], factors["hada_w1_a"], factors["hada_w2_b"], factors["hada_w2_a"],
                             None, None, gamma=ALPHA / RANK)
    key = "text_model.encoder.layers.0.self_attn.q_proj.weight"
    assert (adapted.state_dict()[key] - (base.state_dict()[key] + SCALE * delta)).abs().max() <= 1e-6


def test_lokr_with_its_first_side_decomposed_and_on_a_swapped_modulation(tiny, tmp_path):
    """w1 as w1_a @ w1_b (the rank from that side), on `norm_out.linear`, whose diffusers rows are
    (scale, shift) where ours are (shift, scale): the ΔW's halves land swapped."""
    d = tiny.mmdit.hidden
    k1a, k1b, k2 = _randn(4, RANK, seed=21), _randn(RANK, 4, seed=22), _randn(d // 2, d // 4, seed=23)
    save_file({"lycoris_norm_out_linear.lokr_w1_a": k1a, "lycoris_norm_out_linear.lokr_w1_b": k1b,
               "lycoris_norm_out_linear.lokr_w2": k2, "lycoris_norm_out_linear.alpha": torch.tensor(ALPHA)},
              str(tmp_path / "swap.safetensors"))
    delta = lokr.diff_weight(None, k1a, k1b, k2, None, None, None, gamma=ALPHA)
    base, adapted = load_mmdit(tiny.checkpoint), load_mmdit(tiny.checkpoint)
    lora = load_lora(tmp_path / "swap.safetensors")
    assert lora.file.format == "lycoris"
    lora.apply({"mmdit": adapted}, SCALE)
    key = "final_layer.adaLN_modulation.1.weight"
    want = base.state_dict()[key] + SCALE * torch.cat(delta.chunk(2)[::-1])
    assert (adapted.state_dict()[key] - want).abs().max() <= 1e-6 and delta.abs().max() > 1e-3


@pytest.mark.parametrize("factors, message", [
    ({"hada_w1_a": torch.ones(8, 2), "hada_w1_b": torch.ones(3, 8), "hada_w2_a": torch.ones(8, 2),
      "hada_w2_b": torch.ones(2, 8)}, r"\(LoHa\) has factors that do not fit together"),
    ({"hada_w1_b": torch.ones(2, 8), "hada_w2_a": torch.ones(8, 2), "hada_w2_b": torch.ones(2, 8)},
     r"\(LoHa\) lacks hada_w1_a"),
    ({"lokr_w1": torch.ones(2, 2), "lokr_w2_a": torch.ones(4, 2), "lokr_w2_b": torch.ones(3, 4)}, "do not multiply"),
])
def test_malformed_lycoris_modules_are_named(tmp_path, factors, message):
    save_file({f"lycoris_transformer_blocks_0_attn_to_q.{k}": v for k, v in factors.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelLoadingError, match=message):
        load_lora(tmp_path / "bad.safetensors")


def test_lycoris_modules_under_unknown_names_say_so(tmp_path):
    save_file({"transformer.transformer_blocks.0.attn.to_q.hada_w1_a": torch.ones(8, 2)}, str(tmp_path / "dotted.safetensors"))
    with pytest.raises(ModelLoadingError, match="LyCORIS modules under names this project does not map"):
        load_lora(tmp_path / "dotted.safetensors")
