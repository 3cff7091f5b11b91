"""TAESD3 against diffusers' `AutoencoderTiny` on the same random weights, in both file layouts.

Tolerance: max |Δ| ≤ 1e-5 on images in [-1, 1] and on latents (float32; the two differ only in
summation order inside the same convolutions).
"""

import pytest
import torch
from safetensors.torch import save_file

from sd3 import ModelLoadingError
from sd3.testing.tiny.taesd import diffusers_taesd, original_decoder, taesd_state_dict
from sd3.vae import load_taesd

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def weights():
    return taesd_state_dict(seed=3)


@pytest.fixture(scope="module")
def reference(weights):
    return diffusers_taesd(weights)


def test_decoder_and_encoder_match_diffusers(weights, reference, tmp_path):
    save_file(weights, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    ours = load_taesd(tmp_path / "diffusion_pytorch_model.safetensors")
    g = torch.Generator().manual_seed(0)
    latents, images = torch.randn(2, 16, 5, 7, generator=g) * 1.5, torch.rand(2, 3, 40, 56, generator=g) * 2 - 1
    with torch.no_grad():
        decoded, want = ours.decode(latents), reference.decode(latents).sample
        encoded, want_latents = ours.encode(images), reference.encode(images).latents
    assert decoded.shape == (2, 3, 40, 56) and 0.1 < decoded.std() and encoded.shape == (2, 16, 5, 7)
    assert (decoded - want).abs().max() <= TOLERANCE
    assert (encoded - want_latents).abs().max() <= TOLERANCE


def test_the_original_layout_gives_the_same_decoder(weights, tmp_path):
    save_file(weights, str(tmp_path / "both.safetensors"))
    save_file(original_decoder(weights), str(tmp_path / "taesd3_decoder.safetensors"))
    both, decoder_only = load_taesd(tmp_path / "both.safetensors"), load_taesd(tmp_path / "taesd3_decoder.safetensors")
    assert decoder_only.encoder is None and both.encoder is not None
    latents = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(decoder_only.decode(latents), both.decode(latents))


def test_files_that_are_not_taesd3_are_refused_in_one_line(weights, tmp_path):
    (tmp_path / "taesd3_decoder.pth").write_bytes(b"a pickle")
    with pytest.raises(ModelLoadingError, match=r"pickle \(.pth\), which this project never loads.*taesd3's "
                                                r"diffusion_pytorch_model.safetensors"):
        load_taesd(tmp_path / "taesd3_decoder.pth")
    sd1 = {k: v for k, v in weights.items() if k.startswith("decoder.")}
    sd1["decoder.layers.0.weight"] = torch.randn(64, 4, 3, 3)
    save_file(sd1, str(tmp_path / "taesd.safetensors"))
    with pytest.raises(ModelLoadingError, match="4-channel latents .* SD3 needs TAESD3"):
        load_taesd(tmp_path / "taesd.safetensors")
    encoder = {k.replace("encoder.layers.", ""): v for k, v in weights.items() if k.startswith("encoder.")}
    save_file(encoder, str(tmp_path / "taesd3_encoder.safetensors"))
    with pytest.raises(ModelLoadingError, match="encoder alone; give the decoder file"):
        load_taesd(tmp_path / "taesd3_encoder.safetensors")
    save_file({"model.diffusion_model.x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelLoadingError, match="is not a TAESD file"):
        load_taesd(tmp_path / "other.safetensors")
