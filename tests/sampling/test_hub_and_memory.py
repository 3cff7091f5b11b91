"""Resolving files from the Hub or local paths, and the memory check before each stage."""

from types import SimpleNamespace

import pytest
from huggingface_hub.errors import GatedRepoError

from sd3.sampling import hub as hub
from sd3.errors import DeviceError, ModelLoadingError
from sd3.sampling import StableDiffusion3
from sd3.sampling.hub import resolve
from sd3.sampling import memory
from sd3.sampling.variants import HubFile

FILE = HubFile("stabilityai/stable-diffusion-3.5-medium", "sd3.5_medium.safetensors")


def test_local_file_is_used_as_is(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x")
    assert resolve(path, FILE, name="checkpoint") == path


def test_missing_local_file_names_the_parameter(tmp_path):
    with pytest.raises(ModelLoadingError, match=r'`files\["clip_g"\]` .*: file not found'):
        resolve(tmp_path / "clip_g.safetensors", FILE, name="clip_g")


def test_no_network_says_which_local_files_to_give(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadingError, match=r'cannot reach the Hugging Face Hub.*`files\["checkpoint"\]`'):
        resolve(None, FILE, name="checkpoint", cache_dir=str(tmp_path))


def test_gated_repo_says_where_to_accept_the_licence_and_never_prints_the_token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")

    def gated(*args, **kwargs):
        response = SimpleNamespace(headers={}, request=None)  # what the error reads of an HTTP response
        raise GatedRepoError("403 Client Error: gated repo", response=response)

    monkeypatch.setattr(hub, "hf_hub_download", gated)
    with pytest.raises(ModelLoadingError) as info:
        resolve(None, FILE, name="checkpoint")
    message = str(info.value)
    assert "https://huggingface.co/stabilityai/stable-diffusion-3.5-medium" in message and "HF_TOKEN" in message
    assert "hf_secret_token_value" not in message


@pytest.mark.parametrize(
    "which, checkpoint, text_encoders",
    [
        ("3-medium", "stable-diffusion-3-medium/sd3_medium_incl_clips_t5xxlfp16.safetensors",
         "stable-diffusion-3-medium/sd3_medium_incl_clips_t5xxlfp16.safetensors"),  # all in one file
        ("3.5-large", "stable-diffusion-3.5-large/sd3.5_large.safetensors", "stable-diffusion-3.5-large/text_encoders/"),
        ("3.5-medium", "stable-diffusion-3.5-medium/sd3.5_medium.safetensors",
         "stable-diffusion-3.5-large/text_encoders/"),  # the medium repository's T5 is sharded: the large one's
    ],
)
def test_where_each_variant_reads_its_files(monkeypatch, which, checkpoint, text_encoders):
    asked = []

    def download(repo, filename, **kwargs):
        asked.append(f"{repo.removeprefix('stabilityai/')}/{filename}")
        return f"/cache/{repo}/{filename}"

    monkeypatch.setattr(hub, "hf_hub_download", download)
    files = hub.model_files(which)
    assert asked[0] == checkpoint and files.vae == files.checkpoint  # the VAE is in the checkpoint
    assert all(path.startswith(text_encoders) for path in asked[1:4]), asked[1:4]


def test_a_stage_that_does_not_fit_is_refused_with_advice(monkeypatch, files):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1024)
    with pytest.raises(DeviceError, match=r'text encoding stage needs about .* GiB .*`dtype="bfloat16"` or `files\["t5xxl"\]=None`'):
        StableDiffusion3(files).generate(["a cat"], height=32, width=32, steps=1, cfg=4.0)


def test_weight_bytes_follow_the_dtype(files):
    from sd3.checkpoint import open_checkpoint
    import torch

    with open_checkpoint(files.checkpoint) as checkpoint:
        part = checkpoint.under("first_stage_model.")
        assert memory.weight_bytes(part, torch.float32) == 2 * memory.weight_bytes(part, torch.bfloat16)
