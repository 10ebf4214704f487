"""Checks a run makes before any heavy work: do the configured pieces fit together?

:func:`check_fit` looks at the constructed model, datamodule, trainer callbacks and resume path
(nothing is loaded, generated or trained yet) and returns one message per problem, so a config
with three mistakes is fixed in one go, not in three failed starts. :class:`latentvid.cli.LatentVidCLI`
runs it in ``before_fit``; the checks inside ``LatentDiffusion`` itself (U-Net channels vs the
first stage's latent channels, cross-attention width vs the text tower's width) already run when
the model is built and are reported the same way.

Checked here: paths that must exist (data folders that are not generated, latent folders'
``meta.json``, ``ckpt_path``); that each streaming data source yields a readable sample (a
datamodule's ``check_sources()``, e.g. ``VideoTextDataModule``); clip lengths against the first stage's temporal factor (a causal VAE
takes ``1 + k * factor`` frames); frame sizes against its spatial factor and the U-Net's
down-sampling; every bucket of a bucketed data module likewise (one line listing the bad
ones), and the factors its batch sizes were counted with; a pre-encoded latent folder against
the model's first stage, and each latent shape stored in a bucketed one against the denoiser
(channels, down-sampling; one line listing the bad shapes and their files); the clip shape of
sampling callbacks (``LogSampleVideos``, ``SampleMetrics``) likewise, since they would otherwise
fail at the first validation, after training time was spent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


class PreflightError(ValueError):
    """The configuration cannot run; ``problems`` holds one message per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("the run cannot start:\n  - " + "\n  - ".join(self.problems))


def _sides(size: Any) -> tuple[int, int] | None:
    if isinstance(size, int):
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) for s in size):
        return int(size[0]), int(size[1])
    return None


def check_clip_shape(where: str, num_frames: int | None, height: int | None, width: int | None,
                     first_stage: Any, unet: Any) -> list[str]:
    """Problems of a pixel clip shape (T, H, W) for a first stage and U-Net (either may be None)."""
    problems = []
    tf = getattr(first_stage, "temporal_factor", 1) or 1
    sf = getattr(first_stage, "spatial_factor", 1) or 1
    if num_frames is not None and tf > 1 and (num_frames < 1 or (num_frames - 1) % tf):
        near = 1 + max(0, round((num_frames - 1) / tf)) * tf
        problems.append(f"{where}: num_frames={num_frames} does not fit the first stage's temporal factor {tf} "
                        f"(clips need 1 + k * {tf} frames, e.g. {near})")
    down = getattr(unet, "downsample_factor", 1) or 1
    for name, side in (("height", height), ("width", width)):
        if side is None:
            continue
        if side % sf:
            problems.append(f"{where}: {name}={side} is not a multiple of the first stage's spatial factor {sf}")
        elif (side // sf) % down:
            problems.append(f"{where}: {name}={side} gives latents of {side // sf} px, not a multiple of the "
                            f"U-Net's down-sampling factor {down} (use multiples of {sf * down} px)")
    return problems


def check_buckets(datamodule: Any, first_stage: Any, unet: Any) -> list[str]:
    """Problems of a data module's buckets (``bucket_list``, from its ``bucket_spec``) for a first
    stage and U-Net: one line listing every bucket whose frames or sides do not fit, and one per
    latent factor the batch sizes were counted with that is not the first stage's."""
    buckets = getattr(datamodule, "bucket_list", None)
    if not buckets:
        return []
    problems = []
    spec = getattr(datamodule, "bucket_spec", None)
    for key in ("spatial_factor", "temporal_factor"):
        have, want = getattr(spec, key, None), getattr(first_stage, key, None)
        if have is not None and want is not None and int(have) != int(want):
            problems.append(f"data.buckets: {key}={have} but the first stage's {key} is {want} (batch sizes count "
                            f"latent tokens with it; set buckets.{key}: {want})")
    tf = getattr(first_stage, "temporal_factor", 1) or 1
    sf = getattr(first_stage, "spatial_factor", 1) or 1
    down = getattr(unet, "downsample_factor", 1) or 1
    bad = []
    for b in buckets:
        reasons = [f"frames {b.frames}"] if tf > 1 and (b.frames - 1) % tf else []
        reasons += [f"{name} {side}" for name, side in (("height", b.height), ("width", b.width))
                    if side % (sf * down)]
        if reasons:
            bad.append(f"{b.name} ({', '.join(reasons)})")
    if bad:
        frames = f" and 1 + k * {tf} frames" if tf > 1 else ""
        problems.append(f"data.buckets: {len(bad)} of {len(buckets)} buckets do not fit the first stage (spatial "
                        f"factor {sf}, temporal factor {tf}) and the U-Net (down-sampling {down}), which need sides "
                        f"that are multiples of {sf * down} px{frames}: {'; '.join(bad)}")
    return problems


def _check_paths(datamodule: Any, ckpt_path: str | None) -> list[str]:
    problems = []
    if ckpt_path and ckpt_path not in SPECIAL_CKPT_PATHS and "://" not in str(ckpt_path) \
            and not Path(ckpt_path).exists():  # a sharded (FSDP) checkpoint is a folder
        problems.append(f"ckpt_path: checkpoint file {ckpt_path} does not exist")
    if datamodule is None:
        return problems
    generated = bool(getattr(datamodule, "generate", False))  # ShapesDataModule makes its folder
    for attr in ("root", "val_root"):
        value = getattr(datamodule, attr, None)
        if isinstance(value, str) and not (attr == "root" and generated) and not Path(value).exists():
            problems.append(f"data.{attr}: folder {value} does not exist")
    return problems


def _check_latent_folder(datamodule: Any, first_stage: Any, unet: Any) -> list[str]:
    """A pre-encoded latent folder (``meta.json``) against the model that will train on it."""
    try:
        meta = datamodule.meta
    except (FileNotFoundError, ValueError) as err:
        return [f"data.root: {err}"]
    if not isinstance(meta, dict):
        return []
    problems = []
    for key, attr in (("latent_channels", "latent_channels"), ("spatial_factor", "spatial_factor"),
                      ("temporal_factor", "temporal_factor")):
        have, want = meta.get(key), getattr(first_stage, attr, None)
        if have is not None and want is not None and int(have) != int(want):
            problems.append(f"data.root: the latents in {datamodule.root} have {key}={have} but the model's first "
                            f"stage has {attr}={want} (encode them with this first stage)")
    if getattr(datamodule, "buckets", False):  # meta.json's size is only the reference clip: check what is stored
        return problems + check_latent_shapes(datamodule.root, unet)
    down = getattr(unet, "downsample_factor", 1) or 1
    for key in ("height", "width"):
        side, sf = meta.get(key), meta.get("spatial_factor", 1)
        if side and sf and (int(side) // int(sf)) % down:
            problems.append(f"data.root: latents of {int(side) // int(sf)} px ({key}) are not a multiple of the "
                            f"U-Net's down-sampling factor {down}")
    return problems


def check_latent_shapes(root: str, unet: Any, shown: int = 3) -> list[str]:
    """Problems of the latent shapes (C, t, h, w) stored in a bucketed latent folder for a denoiser
    (U-Net or DiT): one line listing every shape whose C is not its ``in_channels``, whose h or w
    is not a multiple of its ``downsample_factor`` or (a DiT) whose t is not a multiple of its
    temporal patch size, each with its number of files and the first ``shown`` of them. Each shape
    is a bucket, so one bad shape fails only at the first step that draws it, hours in."""
    from latentvid.data.latents import latent_shape_paths

    try:
        shapes = latent_shape_paths(root)
    except (OSError, ValueError) as err:
        return [f"data.root: {err}"]
    channels = getattr(unet, "in_channels", None)
    down = getattr(unet, "downsample_factor", 1) or 1
    patch = getattr(unet, "patch_size", None)
    pt = int(patch[0]) if isinstance(patch, (tuple, list)) and len(patch) == 3 else 1
    bad = []
    for shape, paths in shapes.items():
        if len(shape) != 4:
            continue  # read_latent_index names a malformed row when the data is set up
        c, t, h, w = shape
        reasons = [f"C {c}"] if channels is not None and c != int(channels) else []
        reasons += [f"t {t}"] if t % pt else []
        reasons += [f"{name} {side}" for name, side in (("h", h), ("w", w)) if side % down]
        if reasons:
            files = f"{len(paths)} file{'s' if len(paths) != 1 else ''}: {', '.join(paths[:shown])}"
            bad.append(f"{tuple(shape)} ({', '.join(reasons)}; {files}{', ...' if len(paths) > shown else ''})")
    if not bad:
        return []
    need = [f"C = {channels}"] if channels is not None else []
    need += [f"t a multiple of {pt}"] if pt > 1 else []
    need.append(f"h and w multiples of {down}")
    return [f"data.root: {len(bad)} of {len(shapes)} latent shapes in {root} do not fit the denoiser (in_channels "
            f"{channels}, down-sampling {down}{f', temporal patch {pt}' if pt > 1 else ''}), which needs "
            f"{', '.join(need)}: {'; '.join(bad)}"]


def check_fit(model: Any, datamodule: Any, callbacks: list[Any], ckpt_path: str | None = None) -> list[str]:
    """One message per problem that would stop (or silently spoil) ``fit``; empty when all fit.

    ``model``, ``datamodule`` (may be None) and ``callbacks`` are the constructed objects; nothing
    is loaded or generated. Duck-typed: a model with ``first_stage`` / ``unet`` attributes is
    checked against the data's clip shape, a datamodule with ``meta`` and no ``num_frames`` is a
    pre-encoded latent folder, a callback with ``captions``, ``num_frames``, ``height`` and
    ``width`` samples clips of that shape."""
    problems = _check_paths(datamodule, ckpt_path)
    check_sources = getattr(datamodule, "check_sources", None)  # streaming sources: can a sample be read?
    if callable(check_sources):
        problems += check_sources()
    first_stage, unet = getattr(model, "first_stage", None), getattr(model, "unet", None)
    if first_stage is None:
        return problems  # not a diffusion model (e.g. the VAE trainer): only paths apply
    if datamodule is not None and hasattr(type(datamodule), "meta") and not hasattr(datamodule, "num_frames"):
        if not any(p.startswith("data.root") for p in problems):  # a missing folder is reported once
            problems += _check_latent_folder(datamodule, first_stage, unet)
    elif datamodule is not None:
        sides = _sides(getattr(datamodule, "size", None))
        problems += check_clip_shape("data", getattr(datamodule, "num_frames", None),
                                     sides[0] if sides else None, sides[1] if sides else None, first_stage, unet)
        problems += check_buckets(datamodule, first_stage, unet)
    for cb in callbacks:
        if all(hasattr(cb, a) for a in ("captions", "num_frames", "height", "width")):
            problems += check_clip_shape(f"callback {type(cb).__name__}", cb.num_frames, cb.height, cb.width,
                                         first_stage, unet)
    return problems
