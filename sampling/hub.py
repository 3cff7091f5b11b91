"""Where a pipeline's files come from: a local path when given, else the Hugging Face Hub cache or a download.

`huggingface_hub` honours HF_TOKEN (or a saved `hf auth login`), HF_HUB_OFFLINE and HF_HOME; the
token is never printed. Its failures become one-line `ModelLoadingError`s that say what to do, in
terms of the `files` dict of `StableDiffusion3.from_variant` (the command line maps them to flags).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from sd3.errors import ConfigurationError, ModelLoadingError
from sd3.sampling.variants import TOKENIZERS, HubFile, Variant, variant as variant_named


@dataclass(frozen=True)
class ModelFiles:
    """Local paths of every file a generation reads (all-in-one files may appear several times)."""

    checkpoint: Path  # the MMDiT
    clip_l: Path
    clip_g: Path
    t5xxl: Path | None  # None: run without T5 (zeros in its place)
    vae: Path
    clip_l_tokenizer: Path
    clip_g_tokenizer: Path
    t5_tokenizer: Path | None
    taesd: Path | None = None  # TAESD3, for previews and fast decoding (a local file only; vae/taesd.py)


FILE_NAMES = tuple(f.name for f in fields(ModelFiles))
_OPTIONAL = ("t5xxl", "t5_tokenizer", "taesd")  # None here means: run without T5 / without TAESD3


def resolve(
    local: str | os.PathLike | None, hub: HubFile, *, name: str, revision: str | None = None, cache_dir: str | None = None
) -> Path:
    """The path of one file: `local` if given (it must exist), else downloaded or cached from the Hub.

    Args:
        name: the key of this file in the `files` dict (`checkpoint`, `clip_g`, ...), for messages.
    """
    if local is not None:
        path = Path(local).expanduser()
        if not path.is_file():
            raise ModelLoadingError(f'`files["{name}"]` {path}: file not found')
        return path
    where = f"{hub.repo}/{hub.filename}"
    # Order matters: LocalEntryNotFoundError (offline, not cached) is a kind of EntryNotFoundError.
    try:
        return Path(
            hf_hub_download(hub.repo, hub.filename, revision=hub.revision or revision, cache_dir=cache_dir)
        )
    except GatedRepoError:
        raise ModelLoadingError(
            f"{hub.repo} is gated: accept its licence at https://huggingface.co/{hub.repo} while logged in, "
            "then set HF_TOKEN to a token of that account (or run `hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadingError(
            f"{hub.repo} was not found or needs a token: if it is gated, accept its licence at "
            f'https://huggingface.co/{hub.repo} and set HF_TOKEN; or give the file as `files["{name}"]`'
        ) from None
    except LocalEntryNotFoundError:
        raise ModelLoadingError(
            f"cannot reach the Hugging Face Hub and {where} is not in the cache; connect (and unset "
            f'HF_HUB_OFFLINE), or give `files["{name}"]` and the other files locally'
        ) from None
    except (RevisionNotFoundError, EntryNotFoundError) as error:
        raise ModelLoadingError(f"{where} does not exist at that revision ({type(error).__name__})") from None
    except HfHubHTTPError as error:
        raise ModelLoadingError(f"downloading {where} failed: {str(error).splitlines()[0]}") from None


def model_files(
    which: str | Variant,
    files: Mapping[str, str | os.PathLike | None] | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> ModelFiles:
    """Every file of variant `which`: the entries of `files` where given, the Hub's otherwise.

    Args:
        files: overrides by name (`checkpoint`, `clip_l`, `clip_g`, `t5xxl`, `vae`,
            `clip_l_tokenizer`, `clip_g_tokenizer`, `t5_tokenizer`). `t5xxl=None` runs without T5.
            A local all-in-one `checkpoint` (3-medium's layout) also serves the text encoders and
            the VAE unless those are given; otherwise the VAE comes from the checkpoint file.
        revision: the Hub revision of the model repositories (not of the tokenizer repositories).
    """
    v = variant_named(which)
    files = dict(files or {})
    unknown = sorted(set(files) - set(FILE_NAMES))
    if unknown:
        raise ConfigurationError(f"unknown `files` entries {unknown}; the names are {', '.join(FILE_NAMES)}")
    none_given = [k for k in files if files[k] is None and k not in _OPTIONAL]
    if none_given:
        raise ConfigurationError(f"`files` entries {none_given} are None; only t5xxl and t5_tokenizer may be")
    for name, local in files.items():  # local files first: a typo fails before any download
        if local is not None:
            resolve(local, HubFile("", ""), name=name)
    gguf = files.get("checkpoint") is not None and Path(files["checkpoint"]).suffix.lower() == ".gguf"
    if gguf and not files.get("vae"):
        raise ConfigurationError(
            f'`files["checkpoint"]` {files["checkpoint"]} is a GGUF file, which holds the MMDiT alone: '
            'give the VAE as `files["vae"]` (e.g. the variant\'s all-in-one .safetensors or a VAE file)'
        )
    hub = dict(revision=revision, cache_dir=cache_dir)
    checkpoint = resolve(files.get("checkpoint"), v.checkpoint, name="checkpoint", **hub)
    # All-in-one checkpoints hold everything: a local checkpoint serves the encoders of 3-medium too.
    inside = v.clip_l == v.checkpoint and files.get("checkpoint") is not None and not gguf

    def encoder(name: str, hub_file: HubFile) -> Path:
        return resolve(files.get(name) or (checkpoint if inside else None), hub_file, name=name, **hub)

    without_t5 = "t5xxl" in files and files["t5xxl"] is None

    def tokenizer(name: str, key: str) -> Path:
        return resolve(files.get(name), TOKENIZERS[key], name=name, cache_dir=cache_dir)

    return ModelFiles(
        checkpoint=checkpoint,
        clip_l=encoder("clip_l", v.clip_l),
        clip_g=encoder("clip_g", v.clip_g),
        t5xxl=None if without_t5 else encoder("t5xxl", v.t5xxl),
        vae=resolve(files["vae"], v.checkpoint, name="vae", **hub) if files.get("vae") else checkpoint,
        clip_l_tokenizer=tokenizer("clip_l_tokenizer", "clip_l"),
        clip_g_tokenizer=tokenizer("clip_g_tokenizer", "clip_g"),
        t5_tokenizer=None if without_t5 else tokenizer("t5_tokenizer", "t5"),
        taesd=resolve(files["taesd"], HubFile("", ""), name="taesd") if files.get("taesd") else None,
    )
