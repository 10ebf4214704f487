"""Motion modules: the temporal layers of an :class:`~latentvid.nn.inflated_unet.InflatedUNet3D` alone.

A motion module is a small safetensors file holding only the layers that inflation added (temporal
convolutions, temporal attention, alpha-mixing logits, fps / extra embeddings), so a video model
fine-tuned from one Stable Diffusion checkpoint can be moved onto the same checkpoint or another
with the same layout (e.g. a DreamBooth / LoRA-merged fine-tune of the same base), AnimateDiff style.

The file's metadata (safetensors string metadata) records:

- ``format``: ``"latentvid.motion_module"`` and ``format_version``;
- ``structure``: JSON of :meth:`InflatedUNet3D.structure` (block layout and temporal options), which
  must equal the target model's for a load to be attempted;
- ``image_model_config``: JSON of the image model's U-Net config it was trained on (for reference);
- ``image_model``: the folder it was trained from (for reference).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from latentvid.files import atomic_path

FORMAT = "latentvid.motion_module"
FORMAT_VERSION = "1"


def save_motion_module(model: nn.Module, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``model.temporal_state_dict()`` with its metadata to ``path`` (safetensors, atomically).

    Args:
        model: an :class:`~latentvid.nn.inflated_unet.InflatedUNet3D`.
        path: output file, conventionally ``*.safetensors``; parent folders are created.
        dtype: store floating-point tensors in this dtype (e.g. ``torch.float16`` halves the file);
            None keeps the model's. Loading casts back to the target model's dtype.

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    state = {k: v.contiguous().cpu() for k, v in model.temporal_state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    if not state:
        raise ValueError("the model has no temporal layers to export (temporal_conv, temporal_attention and "
                         "fps_conditioning are all off)")
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "structure": json.dumps(model.structure(), sort_keys=True),
        "image_model_config": json.dumps(model.image_config, sort_keys=True, default=str),
        "image_model": str(getattr(model, "pretrained", "")),
    }
    out = Path(path).expanduser()
    with atomic_path(out) as tmp:  # readers never see a half-written file
        save_file(state, tmp, metadata=metadata)
    return out


def read_motion_module(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and decoded metadata (``structure`` and ``image_model_config`` as dicts) of a motion module."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"motion module not found: {file}")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = dict(f.metadata() or {})
        state = load_file(str(file), device="cpu")
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{file} is not a readable safetensors file: {err}") from err
    if meta.get("format") != FORMAT:
        raise ValueError(f"{file} is not a latentvid motion module (metadata format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{file}: motion module format_version {meta.get('format_version')!r} is not "
                         f"{FORMAT_VERSION!r} (written by another latentvid version)")
    decoded: dict[str, Any] = dict(meta)
    for key in ("structure", "image_model_config"):
        try:
            decoded[key] = json.loads(meta.get(key, "{}"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}: metadata {key!r} is not valid JSON ({err})") from err
    return state, decoded


def load_motion_module(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a motion module's temporal weights onto ``model`` (spatial weights untouched).

    Raises ValueError naming what differs when the file's structure does not match the model's
    (block layout or temporal options), or naming the missing / unexpected / mis-shaped keys.

    Returns:
        The file's decoded metadata.
    """
    state, meta = read_motion_module(path)
    ours, theirs = model.structure(), meta["structure"]
    # compare through JSON so tuples / lists and ints / floats read back the same way
    ours = json.loads(json.dumps(ours, sort_keys=True))
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differ:
        detail = "; ".join(f"{k}: file {theirs.get(k)!r} vs model {ours.get(k)!r}" for k in differ)
        raise ValueError(f"motion module {path} does not fit this model: {detail}")
    expected = model.temporal_state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or shapes:
        raise ValueError(
            f"motion module {path} does not fit this model: missing keys {missing[:10]}, unexpected keys "
            f"{unexpected[:10]}, shape mismatches {shapes[:10]}"
        )
    model.load_state_dict({**model.state_dict(), **state}, strict=True)
    return meta
