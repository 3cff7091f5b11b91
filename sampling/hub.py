"""Resolving model files: a local path when given, else the Hugging Face Hub cache or a download.

`huggingface_hub` honours HF_TOKEN (or a saved `hf auth login`), HF_HUB_OFFLINE and HF_HOME;
the token is never printed. Its failures become one-line `ModelLoadingError`s that say what to do.
"""

from __future__ import annotations

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

from common.errors import ModelLoadingError
from sampling.variants import HubFile


def resolve(
    local: str | Path | None, hub: HubFile, *, flag: str, revision: str | None = None, cache_dir: str | None = None
) -> Path:
    """The path of one file: `local` if given (it must exist), else downloaded or cached from the Hub.

    Args:
        flag: the command-line flag that gives this file locally, named in error messages.
    """
    if local is not None:
        path = Path(local).expanduser()
        if not path.is_file():
            raise ModelLoadingError(f"{flag} {path}: file not found")
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
            f"https://huggingface.co/{hub.repo} and set HF_TOKEN; or give the file with {flag}"
        ) from None
    except LocalEntryNotFoundError:
        raise ModelLoadingError(
            f"cannot reach the Hugging Face Hub and {where} is not in the cache; connect (and unset "
            f"HF_HUB_OFFLINE), or give local files with {flag} and the other file flags"
        ) from None
    except (RevisionNotFoundError, EntryNotFoundError) as error:
        raise ModelLoadingError(f"{where} does not exist at that revision ({type(error).__name__})") from None
    except HfHubHTTPError as error:
        raise ModelLoadingError(f"downloading {where} failed: {str(error).splitlines()[0]}") from None
