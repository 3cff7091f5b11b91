"""LoRA: the formats users have, applied exactly (merged or not), and never a silent no-op.

Parity: a PEFT-format LoRA saved by diffusers (`save_lora_weights`, rank 4, lora_alpha 6, random
non-zero A and B on every SD3 target) loaded by diffusers' own `load_lora_weights` against ours,
same seed: MMDiT outputs within 1e-5 and final latents within 1e-4 (float32, summation order only).
A kohya-format LoRA equals the same deltas merged into the checkpoint by hand.
"""

import zlib

import pytest
import torch
from safetensors.torch import save_file

from sd3 import ModelLoadingError, StableDiffusion3
from sd3.clip import load_clip_l
from sd3.lora import load_lora
from sd3.mmdit import load_mmdit
from sd3.sampling import Reference
from sd3.testing.tiny.pipeline import diffusers_pipeline

PREFIX = "model.diffusion_model."
RANK, ALPHA, SCALE = 4, 2.0, 0.7


def _factors(out_features: int, in_features: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(RANK, in_features, generator=g) * 0.1, torch.randn(out_features, RANK, generator=g) * 0.1


def kohya_lora(tiny, path, misspell: str | None = None):
    """lora_unet_ (MMDiT) and lora_te1_ (CLIP-L) modules, with their hand-merged checkpoint."""
    sd = {k: v.clone() for k, v in tiny.state_dict.items()}
    d = tiny.mmdit.hidden
    targets = {
        "lora_unet_joint_blocks_0_x_block_attn_qkv": (PREFIX + "joint_blocks.0.x_block.attn.qkv.weight", 3 * d, d),
        "lora_unet_joint_blocks_1_context_block_attn_qkv": (PREFIX + "joint_blocks.1.context_block.attn.qkv.weight",
                                                            3 * d, d),
        "lora_unet_joint_blocks_0_context_block_mlp_fc1": (PREFIX + "joint_blocks.0.context_block.mlp.fc1.weight",
                                                           4 * d, d),
        "lora_unet_final_layer_adaLN_modulation_1": (PREFIX + "final_layer.adaLN_modulation.1.weight", 2 * d, d),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (
            "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
            tiny.clip_l.width, tiny.clip_l.width),
    }
    lora = {}
    for i, (name, (key, out_f, in_f)) in enumerate(targets.items()):
        down, up = _factors(out_f, in_f, i)
        written = misspell if (misspell and i == 2) else name
        lora.update({f"{written}.lora_down.weight": down, f"{written}.lora_up.weight": up,
                     f"{written}.alpha": torch.tensor(ALPHA)})
        sd[key] = sd[key] + SCALE * (ALPHA / RANK) * (up @ down)
    save_file(lora, str(path))
    return sd


def _mmdit_inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 16, 8, 6, generator=g), torch.tensor([500.0, 100.0]), torch.randn(2, 320, generator=g),
            torch.randn(2, 11, 384, generator=g))


def test_kohya_lora_equals_the_deltas_merged_by_hand(tiny, tmp_path):
    merged_by_hand = kohya_lora(tiny, tmp_path / "kohya.safetensors")
    lora = load_lora(tmp_path / "kohya.safetensors")
    assert lora.file.format == "kohya" and len(lora.file.modules) == 5
    model, clip_l = load_mmdit(tiny.checkpoint), load_clip_l(tiny.checkpoint)
    lora.apply({"mmdit": model, "clip_l": clip_l}, SCALE)
    want = load_mmdit({k: v for k, v in merged_by_hand.items()})
    assert torch.equal(model(*_mmdit_inputs()), want(*_mmdit_inputs()))
    want_clip = load_clip_l(merged_by_hand)
    ids = torch.randint(0, tiny.clip_l.vocab, (2, 77), generator=torch.Generator().manual_seed(3))
    assert torch.equal(clip_l(ids)[0], want_clip(ids)[0])


def test_merged_and_unmerged_agree_and_removal_restores_every_bit(tiny, tmp_path):
    kohya_lora(tiny, tmp_path / "kohya.safetensors")
    lora = load_lora(tmp_path / "kohya.safetensors")
    merged, live = load_mmdit(tiny.checkpoint), load_mmdit(tiny.checkpoint)
    original = {k: v.clone() for k, v in merged.state_dict().items()}
    plain = merged(*_mmdit_inputs())
    handle = lora.apply({"mmdit": merged}, SCALE, strict=False)  # CLIP-L's module: not loaded here
    live_handle = lora.apply({"mmdit": live}, SCALE, merge=False, strict=False)
    assert (merged(*_mmdit_inputs()) - live(*_mmdit_inputs())).abs().max() <= 1e-5
    assert (merged(*_mmdit_inputs()) - plain).abs().max() > 1e-3  # it did something
    live_handle.scale = 0.0  # a scale changes without reloading
    assert (live(*_mmdit_inputs()) - plain).abs().max() <= 1e-6
    handle.remove()
    live_handle.remove()
    for state in (merged.state_dict(), live.state_dict()):
        assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in original)


def test_two_loras_stack_each_with_its_scale(tiny, tmp_path):
    kohya_lora(tiny, tmp_path / "a.safetensors")
    a = load_lora(tmp_path / "a.safetensors")
    both, once = load_mmdit(tiny.checkpoint), load_mmdit(tiny.checkpoint)
    a.apply({"mmdit": both}, 0.5, merge=False, strict=False)
    a.apply({"mmdit": both}, 0.25, merge=False, strict=False)
    a.apply({"mmdit": once}, 0.75, strict=False)
    assert (both(*_mmdit_inputs()) - once(*_mmdit_inputs())).abs().max() <= 1e-5


def test_a_misspelt_key_fails_and_names_it(tiny, tmp_path):
    kohya_lora(tiny, tmp_path / "typo.safetensors", misspell="lora_unet_joint_blocks_0_context_block_mlp_fc_1")
    with pytest.raises(ModelLoadingError, match=r"kohya format.*lora_unet_joint_blocks_0_context_block_mlp_fc_1"):
        load_lora(tmp_path / "typo.safetensors").apply({"mmdit": load_mmdit(tiny.checkpoint),
                                                         "clip_l": load_clip_l(tiny.checkpoint)})


def test_strict_false_applies_the_rest_and_warns(tiny, tmp_path, caplog):
    kohya_lora(tiny, tmp_path / "typo.safetensors", misspell="lora_unet_joint_blocks_0_context_block_mlp_fc_1")
    handle = load_lora(tmp_path / "typo.safetensors").apply(
        {"mmdit": load_mmdit(tiny.checkpoint), "clip_l": load_clip_l(tiny.checkpoint)}, strict=False)
    assert len(handle.changes) == 4 and "mlp_fc_1" in caplog.text and "ignored" in caplog.text


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"lora_unet_double_blocks_0_img_attn_qkv": (192, 64)}, "made for Flux, not for SD3"),
        ({"lora_unet_input_blocks_4_1_proj_in": (64, 64)}, "made for Stable Diffusion 1.x/2.x or SDXL"),
        ({"lora_unet_joint_blocks_0_x_block_attn_proj": (256, 256)}, "made for another SD3 variant"),
    ],
)
def test_a_lora_for_another_architecture_is_refused(tiny, tmp_path, keys, message):
    lora = {}
    for name, (out_f, in_f) in keys.items():
        down, up = _factors(out_f, in_f, 0)
        lora.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up})
    save_file(lora, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelLoadingError, match=message):
        load_lora(tmp_path / "other.safetensors").apply({"mmdit": load_mmdit(tiny.checkpoint)})


TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff.net.0.proj",
           "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear", "norm1_context.linear", "proj_out",
           "norm_out.linear"]


@pytest.fixture(scope="module")
def peft_lora(tiny, tmp_path_factory):
    """A PEFT LoRA on every SD3 target, saved by diffusers itself, with lora_alpha != rank."""
    from diffusers import StableDiffusion3Pipeline
    from peft import LoraConfig, get_peft_model_state_dict

    pipe = diffusers_pipeline(tiny)
    config = LoraConfig(r=RANK, lora_alpha=6, target_modules=TARGETS, init_lora_weights=False)
    pipe.transformer.add_adapter(config)
    with torch.no_grad():
        for name, parameter in pipe.transformer.named_parameters():
            if "lora_" in name:
                seed = zlib.crc32(name.encode())  # distinct factors per module (to_k and to_v names are equally long)
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(seed)) * 0.1)
    folder = tmp_path_factory.mktemp("peft")
    StableDiffusion3Pipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
                                               transformer_lora_adapter_metadata=config.to_dict())
    return folder / "pytorch_lora_weights.safetensors"


@pytest.mark.parametrize("merge", [True, False])
def test_peft_lora_matches_diffusers_load_lora_weights(tiny, files, peft_lora, merge):
    scale = 0.6
    reference = diffusers_pipeline(tiny)
    reference.load_lora_weights(str(peft_lora))
    lora = load_lora(peft_lora)
    assert lora.file.format == "diffusers" and {m.alpha for m in lora.file.modules} == {6.0}

    ours = load_mmdit(tiny.checkpoint)
    lora.apply({"mmdit": ours}, scale, merge=merge)
    x, t, y, context = _mmdit_inputs()
    want = reference.transformer(hidden_states=x, timestep=t, pooled_projections=y, encoder_hidden_states=context,
                                 joint_attention_kwargs={"scale": scale}, return_dict=False)[0]
    assert (ours(x, t, y, context) - want).abs().max() <= 1e-5
    assert (want - load_mmdit(tiny.checkpoint)(x, t, y, context)).abs().max() > 1e-2  # the LoRA moves the output

    latents = torch.randn(1, 16, 8, 6, generator=torch.Generator().manual_seed(4))
    pipe = StableDiffusion3(files, reference=Reference.named("diffusers"))
    pipe.add_lora(peft_lora, scale, merge=merge)
    got = pipe.generate("a photo of a cat", "blurry", height=64, width=48, steps=3, cfg=4.0, latents=latents,
                        quiet=True).latents
    want = reference(prompt="a photo of a cat", negative_prompt="blurry", height=64, width=48, num_inference_steps=3,
                     guidance_scale=4.0, latents=latents, output_type="latent", max_sequence_length=256,
                     joint_attention_kwargs={"scale": scale}).images
    assert (got - want).abs().max() <= 1e-4


def test_cli_applies_loras_and_records_them(tiny, tmp_path, capsys):
    import json

    from PIL import Image

    from sd3.cli import generate
    from sd3.checkpoint import sha256_file

    kohya_lora(tiny, tmp_path / "style.safetensors")
    c = str(tiny.checkpoint)
    flags = ["--checkpoint", c, "--clip-l", c, "--clip-g", c, "--t5xxl", c, "--clip-l-tokenizer", str(tiny.clip_l_tokenizer),
             "--clip-g-tokenizer", str(tiny.clip_g_tokenizer), "--t5-tokenizer", str(tiny.t5_tokenizer), "--height", "32",
             "--width", "32", "--num-inference-steps", "2", "--seed", "5", "--cpu", "--quiet"]
    assert generate.main([*flags, "--final-image", str(tmp_path / "plain.png")]) == 0
    assert generate.main([*flags, "--lora", f"{tmp_path / 'style.safetensors'}:0.7", "--lora",
                          str(tmp_path / "style.safetensors"), "--final-image", str(tmp_path / "lora.png")]) == 0
    image = Image.open(tmp_path / "lora.png")
    digest = sha256_file(tmp_path / "style.safetensors")
    assert json.loads(image.text["sd3"])["loras"] == [{"file": "style.safetensors", "sha256": digest, "scale": 0.7},
                                                      {"file": "style.safetensors", "sha256": digest, "scale": 1.0}]
    assert "<lora:style:0.7> <lora:style:1.0>" in image.text["parameters"]
    assert image.tobytes() != Image.open(tmp_path / "plain.png").tobytes()

    kohya_lora(tiny, tmp_path / "typo.safetensors", misspell="lora_unet_joint_blocks_0_context_block_mlp_fc_1")
    capsys.readouterr()
    assert generate.main([*flags, "--lora", str(tmp_path / "typo.safetensors"), "--final-image", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lora_unet_joint_blocks_0_context_block_mlp_fc_1" in err[0]
    assert "--lora-ignore-unmatched" in err[0] and "`" not in err[0]
    assert generate.main([*flags, "--lora", str(tmp_path / "typo.safetensors"), "--lora-ignore-unmatched",
                          "--final-image", str(tmp_path / "x.png")]) == 0


def test_a_lora_on_a_quantised_model_stays_unmerged_and_comes_off(tiny, tmp_path):
    """On a GGUF MMDiT a (merge=True) LoRA applies after dequantisation; removal leaves the weights quantised."""
    pytest.importorskip("gguf")
    from sd3.quant import is_quantized
    from sd3.quant.writer import write_gguf
    from tests.quant.conftest import gguf_reference, relative_error

    kohya_lora(tiny, tmp_path / "kohya.safetensors")
    lora = load_lora(tmp_path / "kohya.safetensors")
    path = write_gguf(tiny.checkpoint, tmp_path / "mmdit.gguf", "Q8_0")
    quantised, dequantised = load_mmdit(path), load_mmdit(gguf_reference(path))
    plain = quantised(*_mmdit_inputs())
    handle = lora.apply({"mmdit": quantised}, SCALE, strict=False)
    lora.apply({"mmdit": dequantised}, SCALE, strict=False)
    qkv = quantised.joint_blocks[0].x_block.attn.qkv
    assert handle.changes[0].backup is None and is_quantized(qkv)
    assert relative_error(quantised(*_mmdit_inputs()), dequantised(*_mmdit_inputs())) <= 1e-5
    handle.remove()
    assert is_quantized(qkv) and len(qkv.parametrizations.weight) == 1
    assert torch.equal(quantised(*_mmdit_inputs()), plain)


def _renamed(source, path, rename):
    """The PEFT fixture's factors under another trainer's names, alpha written as `.alpha` (6, as its metadata)."""
    from safetensors.torch import load_file

    out = {}
    for key, tensor in load_file(str(source)).items():
        module, factor = key.rsplit(".lora_", 1)
        name, down_or_up = rename(module)
        out[f"{name}{down_or_up[factor]}"] = tensor
        out[f"{name}.alpha"] = torch.tensor(6.0)
    save_file(out, str(path))
    return path


SIMPLETUNER = {"A.weight": ".lora.down.weight", "B.weight": ".lora.up.weight"}
KOHYA_FACTORS = {"A.weight": ".lora_down.weight", "B.weight": ".lora_up.weight"}


@pytest.mark.parametrize("naming, rename", [
    ("simpletuner", lambda m: (m, SIMPLETUNER)),
    ("peft without its component", lambda m: ("base_model.model." + m.removeprefix("transformer."),
                                             {"A.weight": ".lora_A.weight", "B.weight": ".lora_B.weight"})),
    ("onetrainer", lambda m: ("lora_transformer_" + m.removeprefix("transformer.").replace(".", "_"), KOHYA_FACTORS)),
])
def test_other_trainers_namings_land_on_the_same_weights(tiny, peft_lora, tmp_path, naming, rename):
    """The same factors under each trainer's names give the merged weights of the diffusers-named file,
    which matches diffusers' own load_lora_weights (above): max |Δ| = 0."""
    want, got = load_mmdit(tiny.checkpoint), load_mmdit(tiny.checkpoint)
    load_lora(peft_lora).apply({"mmdit": want}, 0.8)
    lora = load_lora(_renamed(peft_lora, tmp_path / f"{naming}.safetensors", rename))
    lora.apply({"mmdit": got}, 0.8)
    assert len(lora.file.modules) == len(load_lora(peft_lora).file.modules)
    for (name, a), (_, b) in zip(want.state_dict().items(), got.state_dict().items()):
        assert torch.equal(a, b), name


def test_onetrainer_and_kohya_agree_where_modules_map_one_to_one(tiny, tmp_path):
    """`attn.to_out.0` is our `x_block.attn.proj`, `ff.net.0.proj` our `x_block.mlp.fc1`: one delta, two namings."""
    d = tiny.mmdit.hidden
    pairs = {"transformer_blocks_0_attn_to_out_0": ("lora_unet_joint_blocks_0_x_block_attn_proj", d, d),
             "transformer_blocks_1_ff_net_0_proj": ("lora_unet_joint_blocks_1_x_block_mlp_fc1", 4 * d, d)}
    onetrainer, kohya = {}, {}
    for i, (ours, (theirs, out_f, in_f)) in enumerate(pairs.items()):
        down, up = _factors(out_f, in_f, i)
        for file, name in ((onetrainer, f"lora_transformer_{ours}"), (kohya, theirs)):
            file.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(ALPHA)})
    save_file(onetrainer, str(tmp_path / "onetrainer.safetensors"))
    save_file(kohya, str(tmp_path / "kohya.safetensors"))
    a, b = load_mmdit(tiny.checkpoint), load_mmdit(tiny.checkpoint)
    load_lora(tmp_path / "onetrainer.safetensors").apply({"mmdit": a}, SCALE)
    load_lora(tmp_path / "kohya.safetensors").apply({"mmdit": b}, SCALE)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.state_dict()["joint_blocks.0.x_block.attn.proj.weight"],
                           load_mmdit(tiny.checkpoint).state_dict()["joint_blocks.0.x_block.attn.proj.weight"])
