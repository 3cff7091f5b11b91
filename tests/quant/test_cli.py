"""`sd3 generate` with an fp8 T5 file and a GGUF MMDiT, and `sd3 quantize`, on tiny files."""

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from sd3.cli import generate, quantize
from tests.quant.conftest import fp8_reference, gguf_reference

pytest.importorskip("gguf")


def flags(tiny, **files) -> list[str]:
    c = str(tiny.checkpoint)
    chosen = {"checkpoint": c, "clip-l": c, "clip-g": c, "t5xxl": c, "vae": None, **files}
    out = [f for name, path in chosen.items() if path is not None for f in (f"--{name}", str(path))]
    return [*out, "--clip-l-tokenizer", str(tiny.clip_l_tokenizer), "--clip-g-tokenizer", str(tiny.clip_g_tokenizer),
            "--t5-tokenizer", str(tiny.t5_tokenizer), "--which", "3.5-medium", "--height", "32", "--width", "48",
            "--num-inference-steps", "2", "--seed", "5", "--cpu", "--quiet", "--prompt", "a red cube"]


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def test_generate_with_an_fp8_t5_file(tiny, tmp_path):
    t5 = tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors"
    assert quantize.main([str(tiny.checkpoint), str(t5), "--to", "fp8", "--scaling", "scale_weight"]) == 0
    assert generate.main([*flags(tiny, t5xxl=t5), "--final-image", str(tmp_path / "fp8.png")]) == 0
    dequantised = tmp_path / "t5_dequantised.safetensors"  # the same values in float32, by hand
    save_file({k: v for k, v in fp8_reference(t5).items() if k.startswith("text_encoders.t5xxl.")}, str(dequantised))
    assert generate.main([*flags(tiny, t5xxl=dequantised), "--final-image", str(tmp_path / "ref.png")]) == 0
    assert np.abs(pixels(tmp_path / "fp8.png") - pixels(tmp_path / "ref.png")).max() <= 1


def test_generate_with_a_gguf_mmdit(tiny, tmp_path):
    mmdit = tmp_path / "sd3_tiny-Q4_0.gguf"
    assert quantize.main([str(tiny.checkpoint), str(mmdit), "--to", "Q4_0"]) == 0
    assert generate.main([*flags(tiny, checkpoint=mmdit, vae=tiny.checkpoint),
                          "--final-image", str(tmp_path / "gguf.png")]) == 0
    dequantised = tmp_path / "mmdit_dequantised.safetensors"
    save_file(gguf_reference(mmdit), str(dequantised))
    assert generate.main([*flags(tiny, checkpoint=dequantised, vae=tiny.checkpoint),
                          "--final-image", str(tmp_path / "ref.png")]) == 0
    assert np.abs(pixels(tmp_path / "gguf.png") - pixels(tmp_path / "ref.png")).max() <= 1


def test_a_gguf_checkpoint_needs_a_vae_flag(tiny, tmp_path, capsys):
    mmdit = tmp_path / "m.gguf"
    assert quantize.main([str(tiny.checkpoint), str(mmdit), "--to", "Q8_0"]) == 0
    assert generate.main([*flags(tiny, checkpoint=mmdit), "--final-image", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a GGUF file, which holds the MMDiT alone: give the VAE as --vae" in err
    assert not (tmp_path / "x.png").exists()


def test_quantize_errors_are_one_line(tiny, tmp_path, capsys):
    assert quantize.main([str(tiny.checkpoint), str(tmp_path / "x.safetensors"), "--to", "Q8_0"]) == 1
    assert "--to Q8_0 writes a .gguf file; name the target x.gguf" in capsys.readouterr().err
    assert quantize.main([str(tmp_path / "missing.safetensors"), str(tmp_path / "x.gguf"), "--to", "Q8_0"]) == 1
    assert "checkpoint file not found" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*partial"))
