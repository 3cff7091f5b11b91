"""Filling a model built on the `meta` device with checkpoint tensors, strictly.

Every loader in this project builds its module on the `meta` device (no memory, no random
initialisation), checks that the checkpoint has exactly the names and shapes the module expects,
and only then reads the tensors one by one in the target dtype and device, handing them to
`load_state_dict(assign=True)`. Peak memory is therefore one copy of the weights plus one tensor.
A tensor the file stores quantised (fp8, GGUF blocks) is attached as stored and dequantised per
layer at forward time (sd3/quant/weights.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sd3.tensor_source import TensorSource
from sd3.errors import ModelLoadingError
from sd3.quant import FP8, attach

_SHOWN = 5  # how many offending keys an error message lists before giving a count


def load_strict(
    model: nn.Module,
    source: TensorSource,
    *,
    dtype: torch.dtype,
    device: torch.device,
    what: str,
    to_checkpoint_name: Callable[[str], str] | None = None,
) -> nn.Module:
    """Assign `source`'s tensors to `model` (built on `meta`) and return it in eval mode.

    Args:
        model: the module, built on the meta device; its `state_dict()` names what is expected.
        source: the checkpoint view for this component (prefix already stripped).
        dtype: the compute dtype: tensors stored in 16 or 32 bits are converted to it, quantised
            ones stay as stored and dequantise to it; integer tensors keep their dtype.
        device: where the weights go; on the `meta` device nothing is read (the checked architecture).
        what: the component's name for error messages ("MMDiT", "CLIP-L", ...).
        to_checkpoint_name: maps a model parameter name to the checkpoint's name for it
            (the VAE's renaming map); identity when None.

    Raises:
        ModelLoadingError: listing missing keys, unexpected keys and shape mismatches.
    """
    rename = to_checkpoint_name or (lambda name: name)
    slots = model.state_dict()
    expected = {name: tuple(t.shape) for name, t in slots.items()}
    model_name_of = {rename(name): name for name in expected}

    missing = [ckpt for ckpt in model_name_of if ckpt not in source]
    unexpected = [key for key in source.keys() if key not in model_name_of]
    mismatched = [
        f"{ckpt}: checkpoint {source.shape(ckpt)} vs model {expected[name]}"
        for ckpt, name in model_name_of.items()
        if ckpt in source and source.shape(ckpt) != expected[name]
    ]
    if missing or unexpected or mismatched:

        def show(ckpt: str) -> str:  # both names when the model renames
            name = model_name_of[ckpt]
            return ckpt if name == ckpt else f"{ckpt} (model: {name})"

        problems = []
        if missing:
            problems.append(_listing("missing key", [show(k) for k in missing]))
        if unexpected:
            problems.append(_listing("unexpected key", unexpected))
        if mismatched:
            problems.append(_listing("shape mismatch", mismatched))
        raise ModelLoadingError(
            f"{what} checkpoint {source.description} does not match the {what} architecture: "
            + "; ".join(problems)
            + ". Check that the file is the right component and complete."
        )

    if device.type == "meta":  # the architecture alone, checked against the file; no tensor is read
        return model.eval()
    state, attached = {}, False
    for ckpt, name in model_name_of.items():
        stored = source.quantized(ckpt)
        if stored is not None:
            attach(model, name, stored, dtype=dtype, device=device)
            attached = True
            continue
        tensor = source.tensor(ckpt, dtype)
        if slots[name].is_floating_point() and not tensor.is_floating_point():
            raise ModelLoadingError(
                f"{what} checkpoint {source.description} stores '{ckpt}' as {tensor.dtype}, a format this project "
                f"does not read; supported: float32, float16, bfloat16, fp8 ({', '.join(FP8)}) and GGUF files"
            )
        state[name] = tensor.to(device)  # integer tensors keep their dtype
    # An attached tensor lives under `<module>.parametrizations.<name>.original`, so the names differ there.
    model.load_state_dict(state, strict=not attached, assign=True)
    return model.eval()


def _listing(kind: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    plural = "" if len(items) == 1 else "es" if kind.endswith(("ch", "s")) else "s"  # mismatches, keys
    return f"{len(items)} {kind}{plural} ({shown}{more})"
