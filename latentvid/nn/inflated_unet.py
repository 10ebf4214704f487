"""A Stable Diffusion U-Net inflated into a factorized space-time 3D U-Net (Make-A-Video / Video LDM).

:class:`InflatedUNet3D` rebuilds the spatial structure of a diffusers ``UNet2DConditionModel``
(SD 1.x and 2.x layouts: ``CrossAttnDownBlock2D`` / ``DownBlock2D``, ``UNetMidBlock2DCrossAttn``,
``CrossAttnUpBlock2D`` / ``UpBlock2D``, linear or 1x1-conv transformer projections, per-block head
counts) from its local ``config.json``, loads its safetensors weights, and inserts new temporal
layers:

- after each of the two 3x3 convolutions of every ResNet block, a kernel-3 convolution over time,
  initialised to the identity (Dirac weight, zero bias) as in Make-A-Video's pseudo-3D convs;
- after every spatial transformer, :class:`latentvid.nn.attention.TemporalAttention` (relative
  position bias, zero-initialised output: the identity).

Optionally (``learned_mix``, Video LDM) each temporal layer's output is blended with its input,
``out = alpha * x + (1 - alpha) * temporal(x)`` with ``alpha = sigmoid(mix_logit)`` learned per
layer. At initialisation every temporal layer is the identity, so the network applied to T frames
equals the image model applied to each frame, whatever ``alpha``.

**State-dict layout.** The spatial modules carry exactly the diffusers module names
(``down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight``, ...), so the image model's
state dict loads with no key mapping at all; the spatial attention is :class:`SDAttention` (SD's
``to_q / to_k / to_v / to_out.0`` layout, computed by the one ``attention()`` function) rather than
:class:`~latentvid.nn.attention.MultiHeadAttention`, whose internal layout may change. The new layers
live under names SD does not use (``resnets.N.temporal_conv1``, ``resnets.N.temporal_conv2``,
``temporal_attentions.N``, ``fps_embed``, ``extra_embed``); :meth:`InflatedUNet3D.temporal_parameters`
returns them and :meth:`InflatedUNet3D.temporal_state_dict` is the motion module
(:mod:`latentvid.nn.motion_module`). Spatial 2D layers run on frames folded into the batch,
``(B*T, C, H, W)``. The layers themselves are in :mod:`latentvid.nn.sd_blocks`; this module reads
the config and weights and assembles them.

**Noise level.** Like every latentvid network the model is conditioned on logSNR. The image model
was trained on integer timesteps of its discrete schedule (``scheduler/scheduler_config.json``);
the time-embedding path maps logSNR to the (fractional) timestep whose log-SNR it is, by linear
interpolation in the table of the training timesteps' log-SNRs, and embeds that exactly as SD does
(sinusoids, ``time_embedding.linear_1/2``). At a training timestep's logSNR this is SD's embedding
of that integer timestep; noise levels outside the table are clipped to its ends. Pair the model
with :class:`latentvid.diffusion.discrete.DiscreteSchedule` of the same folder, so training and
sampling use the noise levels the image model knows.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvid.nn.attention import TemporalAttention, check_backend, num_heads
from latentvid.nn.layers import ScalarEmbedding, sinusoidal_embedding
from latentvid.nn.sd_blocks import (
    ClipLayout,
    DownBlock,
    MidBlock,
    Resample,
    ResnetBlock,
    TemporalLayer,
    TimestepEmbedding,
    Transformer2D,
    UpBlock,
)
from latentvid.nn.unet3d import FPS_RANGE, LOGSNR_RANGE, check_denoiser_inputs

WEIGHTS_NAME = "diffusion_pytorch_model"
DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DCrossAttn", None)

# Config values the rebuilt structure relies on: anything else is refused by name. These are the
# values of every SD 1.x / 2.x U-Net (and of diffusers' defaults).
_REQUIRED_VALUES: dict[str, Any] = {
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "only_cross_attention": False,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "num_attention_heads": None,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "num_class_embeds": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "cross_attention_norm": None,
    "reverse_transformer_layers_per_block": None,
}


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
def _diffusers_defaults() -> dict[str, Any]:
    """Constructor defaults of the installed diffusers ``UNet2DConditionModel`` (configs may omit keys)."""
    from diffusers import UNet2DConditionModel  # lazy: diffusers is slow to import

    params = inspect.signature(UNet2DConditionModel.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _per_block(config: dict, key: str, n: int, file: Path) -> list:
    value = config[key]
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n or any(isinstance(v, (list, tuple)) for v in values):
        raise ValueError(f"{file}: {key}={value!r} must be one value or one per block ({n} blocks)")
    return values


def read_unet_config(folder: str | Path) -> dict[str, Any]:
    """Read and check ``folder/config.json`` of a diffusers ``UNet2DConditionModel``.

    Missing keys take the installed diffusers' defaults; per-block settings are expanded to lists
    (``layers_per_block``, ``transformer_layers_per_block``, ``attention_head_dim`` (diffusers'
    name for the number of heads), ``cross_attention_dim``). Raises ValueError naming the file and
    the key for layouts this module does not rebuild (SDXL's added embeddings, other block types, ...).
    """
    file = Path(folder) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(
            f"no U-Net config at {file}. Point `pretrained` at a local diffusers-format Stable Diffusion "
            f"folder (unet/config.json + unet/{WEIGHTS_NAME}.safetensors, scheduler/scheduler_config.json), "
            f"e.g. `huggingface-cli download <repo> --local-dir <dir>` on a machine with internet."
        )
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from err
    if raw.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        raise ValueError(f"{file}: _class_name={raw['_class_name']!r}, expected 'UNet2DConditionModel'")
    cfg = {**_diffusers_defaults(), **{k: v for k, v in raw.items() if not k.startswith("_")}}

    for key, required in _REQUIRED_VALUES.items():
        value = cfg.get(key, required)
        same = value == required if not isinstance(required, float) else float(value) == required
        if not same:
            raise ValueError(f"{file}: {key}={value!r} is not supported by InflatedUNet3D (needs {required!r})")
    if cfg.get("mid_block_only_cross_attention") not in (None, False):
        raise ValueError(f"{file}: mid_block_only_cross_attention={cfg['mid_block_only_cross_attention']!r} "
                         "is not supported")
    if cfg["norm_num_groups"] is None:
        raise ValueError(f"{file}: norm_num_groups=None (no output norm) is not supported")
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    for key, types, allowed in (("down_block_types", down, DOWN_BLOCKS), ("up_block_types", up, UP_BLOCKS)):
        bad = [t for t in types if t not in allowed]
        if bad:
            raise ValueError(f"{file}: {key} contains {bad}; InflatedUNet3D rebuilds {allowed} only")
    if cfg["mid_block_type"] not in MID_BLOCKS:
        raise ValueError(f"{file}: mid_block_type={cfg['mid_block_type']!r}; supported: {MID_BLOCKS}")
    n = len(down)
    if len(up) != n or len(cfg["block_out_channels"]) != n:
        raise ValueError(f"{file}: down_block_types, up_block_types and block_out_channels must have equal lengths")
    cfg["down_block_types"], cfg["up_block_types"] = down, up
    cfg["block_out_channels"] = [int(c) for c in cfg["block_out_channels"]]
    for key in ("layers_per_block", "transformer_layers_per_block", "attention_head_dim", "cross_attention_dim"):
        cfg[key] = _per_block(cfg, key, n, file)
    for i, (c, heads) in enumerate(zip(cfg["block_out_channels"], cfg["attention_head_dim"])):
        if heads is None or c % int(heads):
            raise ValueError(f"{file}: block {i}: attention_head_dim (heads) {heads} must divide its {c} channels")
    return cfg


def _weights_file(folder: Path, variant: str | None) -> list[Path]:
    """The safetensors file(s) of a diffusers model folder (single file or sharded with an index)."""
    stem = WEIGHTS_NAME if variant is None else f"{WEIGHTS_NAME}.{variant}"
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as err:
            raise ValueError(f"{index}: not a safetensors index with a 'weight_map' ({err})") from err
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that are not in {folder}: {missing}")
        return [folder / s for s in shards]
    hint = ""
    if (folder / f"{stem}.bin").is_file():
        hint = f" ({stem}.bin is there: re-save the model with diffusers' save_pretrained(safe_serialization=True))"
    raise FileNotFoundError(f"no U-Net weights at {single}{hint}")


def load_state_dict_file(files: list[Path]) -> dict[str, Tensor]:
    """Tensors of one or more safetensors files, on CPU."""
    from safetensors.torch import load_file

    state: dict[str, Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f), device="cpu"))
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"could not read safetensors file {f}: {err}") from err
    return state


def train_logsnr_table(scheduler_config: Path) -> Tensor:
    """log-SNR (N,) float64 of the image model's training timesteps, from its scheduler config.

    The alphas come from diffusers' ``DDPMScheduler`` built from the file's beta settings (the
    image model's own definition of its schedule); :class:`latentvid.diffusion.discrete.DiscreteSchedule`
    computes the same table independently (the tests compare them).
    """
    from diffusers import DDPMScheduler

    if not scheduler_config.is_file():
        raise FileNotFoundError(
            f"no scheduler config at {scheduler_config}: the inflated U-Net maps logSNR to the image "
            f"model's timesteps through it (a Stable Diffusion folder has scheduler/scheduler_config.json)"
        )
    try:
        cfg = json.loads(scheduler_config.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{scheduler_config} is not valid JSON: {err}") from err
    if cfg.get("rescale_betas_zero_snr"):
        raise ValueError(f"{scheduler_config}: rescale_betas_zero_snr (a zero-SNR last timestep) is not supported")
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    try:
        sched = DDPMScheduler(**{k: cfg[k] for k in keys if cfg.get(k) is not None})
    except (NotImplementedError, ValueError, TypeError) as err:
        raise ValueError(f"{scheduler_config}: unsupported schedule ({err})") from err
    ac = sched.alphas_cumprod.double()
    table = torch.log(ac) - torch.log1p(-ac)
    if not bool((table[1:] < table[:-1]).all()):
        raise ValueError(f"{scheduler_config}: the schedule's log-SNR must decrease strictly over timesteps")
    return table


def fractional_timestep(logsnr: Tensor, table: Tensor) -> Tensor:
    """logSNR (B,) -> timestep (B,) float64 in [0, N - 1]: the position of logsnr in the decreasing
    log-SNR ``table`` (N,) with linear interpolation; table[n] gives exactly n, values beyond the
    ends (+-inf included) are clipped to them."""
    v = -logsnr.to(torch.float64).contiguous()
    asc = -table  # increasing
    k = torch.searchsorted(asc, v, right=True).clamp(1, asc.numel() - 1)  # asc[k-1] <= v < asc[k]
    frac = ((v - asc[k - 1]) / (asc[k] - asc[k - 1])).clamp(0.0, 1.0)
    return (k - 1).to(torch.float64) + frac


def _zero_last(embed: ScalarEmbedding) -> ScalarEmbedding:
    """Zero the output layer of a new embedding, so adding it leaves the image model's embedding unchanged."""
    nn.init.zeros_(embed.mlp[-1].weight)
    nn.init.zeros_(embed.mlp[-1].bias)
    return embed


# ---------------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------------
class InflatedUNet3D(nn.Module):
    """A diffusers Stable Diffusion U-Net with temporal layers: (B, C, T, H, W) + logSNR -> (B, C, T, H, W).

    Drop-in for :class:`latentvid.nn.unet3d.UNet3D` (same ``forward``, ``in_channels`` /
    ``out_channels`` / ``context_dim`` attributes). Built from a local diffusers-format folder;
    nothing downloads.

    Args:
        pretrained: a local diffusers Stable Diffusion folder (``unet/config.json``,
            ``unet/diffusion_pytorch_model.safetensors``, ``scheduler/scheduler_config.json``).
        subfolder: the U-Net's subfolder of ``pretrained`` (None: ``pretrained`` is the U-Net folder).
        variant: weights variant, e.g. ``"fp16"`` for ``diffusion_pytorch_model.fp16.safetensors``.
        scheduler_config: the scheduler config whose training timesteps define the logSNR ->
            timestep map; None = ``pretrained/scheduler/scheduler_config.json``.
        temporal_conv: add identity-initialised temporal convolutions after both convs of every ResNet block.
        temporal_attention: add zero-initialised temporal attention after every spatial transformer.
        temporal_head_dim: channels per temporal-attention head; None = the head width of the
            block's spatial attention.
        max_temporal_distance: frame offset beyond which the relative position bias is shared.
        learned_mix: blend each temporal layer's output with its input by a learned alpha (Video LDM).
        mix_init: alpha at initialisation, in (0, 1) (the model starts as the image model for any value).
        fps_conditioning: add a (zero-initialised) embedding of the clip's frame rate when ``fps`` is given.
        num_extra_conditions: extra scalars per sample, embedded like logSNR (zero-initialised).
        motion_module: a motion-module file (:func:`latentvid.nn.motion_module.save_motion_module`)
            whose temporal weights replace the fresh ones.
        dropout: dropout of ResNet blocks and transformers; None = the config's.
        gradient_checkpointing: recompute each ResNet block / transformer in backward (training only).
        attention_backend: ``"auto"`` or one of ``latentvid.nn.attention.BACKENDS``.
    """

    def __init__(
        self,
        pretrained: str,
        subfolder: str | None = "unet",
        variant: str | None = None,
        scheduler_config: str | None = None,
        temporal_conv: bool = True,
        temporal_attention: bool = True,
        temporal_head_dim: int | None = None,
        max_temporal_distance: int = 32,
        learned_mix: bool = True,
        mix_init: float = 0.5,
        fps_conditioning: bool = True,
        num_extra_conditions: int = 0,
        motion_module: str | None = None,
        dropout: float | None = None,
        gradient_checkpointing: bool = False,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        check_backend(attention_backend, "attention_backend")
        if learned_mix and not 0.0 < mix_init < 1.0:
            raise ValueError(f"mix_init must lie in (0, 1), got {mix_init}")
        if num_extra_conditions < 0:
            raise ValueError(f"num_extra_conditions must be >= 0, got {num_extra_conditions}")
        root = Path(pretrained).expanduser()
        folder = root / subfolder if subfolder else root
        cfg = read_unet_config(folder)
        self.image_config = cfg
        self.pretrained = str(root)
        sched_file = root / "scheduler" / "scheduler_config.json"
        if scheduler_config:
            sched_file = Path(scheduler_config).expanduser()
        self._logsnr_table = train_logsnr_table(sched_file)  # (N,) float64; not a buffer: no dtype casts
        self._tables: dict[torch.device, Tensor] = {}

        self.in_channels, self.out_channels = int(cfg["in_channels"]), int(cfg["out_channels"])
        self.context_dim = int(cfg["cross_attention_dim"][0])
        if len(set(cfg["cross_attention_dim"])) != 1:
            raise ValueError(f"{folder}: one cross_attention_dim for all blocks is needed, "
                             f"got {cfg['cross_attention_dim']}")
        self.num_extra_conditions = num_extra_conditions
        self.gradient_checkpointing = gradient_checkpointing
        self.attention_backend = attention_backend
        channels = cfg["block_out_channels"]
        n = len(channels)
        self.downsample_factor = 2 ** (n - 1)
        c0, groups, eps = channels[0], int(cfg["norm_num_groups"]), float(cfg["norm_eps"])
        emb_dim = int(cfg["time_embedding_dim"] or 4 * c0)
        drop = float(cfg["dropout"] if dropout is None else dropout)
        mix = mix_init if learned_mix else None
        heads, tlayers, lpb = cfg["attention_head_dim"], cfg["transformer_layers_per_block"], cfg["layers_per_block"]
        temporal_heads = []
        for c, h in zip(channels, heads):
            hd = c // int(h) if temporal_head_dim is None else temporal_head_dim
            temporal_heads.append(num_heads(c, hd))
        self.temporal_options = dict(
            temporal_conv=temporal_conv, temporal_attention=temporal_attention, temporal_heads=temporal_heads,
            max_temporal_distance=max_temporal_distance, learned_mix=learned_mix, fps_conditioning=fps_conditioning,
            num_extra_conditions=num_extra_conditions,
        )

        def resnet(c_in: int, c_out: int) -> ResnetBlock:
            return ResnetBlock(c_in, c_out, emb_dim, groups, eps, drop, temporal_conv, mix)

        def transformers(i: int, count: int) -> tuple[list[Transformer2D], list[TemporalLayer] | None]:
            c = channels[i]
            spatial = [Transformer2D(c, int(heads[i]), self.context_dim, int(tlayers[i]), groups,
                                     bool(cfg["use_linear_projection"]), drop, attention_backend) for _ in range(count)]
            temporal = None
            if temporal_attention:
                temporal = [TemporalLayer(TemporalAttention(c, c // temporal_heads[i], max_temporal_distance,
                                                            attention_backend), mix) for _ in range(count)]
            return spatial, temporal

        self.conv_in = nn.Conv2d(self.in_channels, c0, 3, padding=1)
        self.time_embedding = TimestepEmbedding(c0, emb_dim)
        self.fps_embed = _zero_last(ScalarEmbedding(emb_dim, FPS_RANGE, freq_dim=c0)) if fps_conditioning else None
        self.extra_embed = None
        if num_extra_conditions:
            self.extra_embed = _zero_last(ScalarEmbedding(emb_dim, LOGSNR_RANGE, num_extra_conditions, freq_dim=c0))

        self.down_blocks = nn.ModuleList()
        c_prev = c0
        for i, kind in enumerate(cfg["down_block_types"]):
            last = i == n - 1
            resnets = [resnet(c_prev if j == 0 else channels[i], channels[i]) for j in range(int(lpb[i]))]
            attn, temporal = transformers(i, len(resnets)) if kind == "CrossAttnDownBlock2D" else (None, None)
            down = None if last else Resample(channels[i], down=True)
            self.down_blocks.append(DownBlock(resnets, attn, temporal, down, None if last else "downsamplers"))
            c_prev = channels[i]

        self.mid_block = None
        if cfg["mid_block_type"] is not None:
            attn, temporal = transformers(n - 1, 1)
            self.mid_block = MidBlock([resnet(c_prev, c_prev), resnet(c_prev, c_prev)], attn, temporal, None, None)

        self.up_blocks = nn.ModuleList()
        rev = list(reversed(range(n)))  # up block i works at the channels of down level rev[i]
        for i, kind in enumerate(cfg["up_block_types"]):
            level, skip_level = rev[i], rev[min(i + 1, n - 1)]
            count = int(lpb[level]) + 1
            resnets = []
            for j in range(count):
                c_skip = channels[skip_level] if j == count - 1 else channels[level]
                c_in = c_prev if j == 0 else channels[level]
                resnets.append(resnet(c_in + c_skip, channels[level]))
            attn, temporal = transformers(level, count) if kind == "CrossAttnUpBlock2D" else (None, None)
            last = i == n - 1
            up = None if last else Resample(channels[level], down=False)
            self.up_blocks.append(UpBlock(resnets, attn, temporal, up, None if last else "upsamplers"))
            c_prev = channels[level]

        self.conv_norm_out = nn.GroupNorm(groups, c0, eps=eps)
        self.conv_out = nn.Conv2d(c0, self.out_channels, 3, padding=1)

        self.load_image_model(folder, variant)
        if motion_module is not None:
            from latentvid.nn.motion_module import load_motion_module  # the module imports this one

            load_motion_module(self, motion_module)

    # ---- spatial / temporal split -------------------------------------------------------------
    def _temporal_prefixes(self) -> tuple[str, ...]:
        """Names of the modules that are new in the video model (temporal layers, fps / extra embeddings)."""
        names = [name for name, m in self.named_modules() if isinstance(m, TemporalLayer)]
        names += [name for name in ("fps_embed", "extra_embed") if getattr(self, name) is not None]
        return tuple(name + "." for name in names)

    def is_temporal(self, name: str) -> bool:
        """Whether a parameter / state-dict key belongs to a layer the image model does not have."""
        return name.startswith(self._temporal_prefixes())

    def temporal_parameters(self) -> list[nn.Parameter]:
        """Parameters of the new layers: temporal convs and attention, alpha logits, fps / extra embeddings."""
        prefixes = self._temporal_prefixes()
        return [p for name, p in self.named_parameters() if name.startswith(prefixes)]

    def spatial_parameters(self) -> list[nn.Parameter]:
        """Parameters loaded from the image model."""
        prefixes = self._temporal_prefixes()
        return [p for name, p in self.named_parameters() if not name.startswith(prefixes)]

    def temporal_state_dict(self) -> dict[str, Tensor]:
        """The motion module: state-dict entries of the new layers (detached tensors)."""
        prefixes = self._temporal_prefixes()
        return {k: v.detach() for k, v in self.state_dict().items() if k.startswith(prefixes)}

    def structure(self) -> dict[str, Any]:
        """What a motion module must match to load onto this model (layer layout and temporal options)."""
        keys = ("block_out_channels", "layers_per_block", "transformer_layers_per_block", "down_block_types",
                "up_block_types", "mid_block_type")
        return {**{k: self.image_config[k] for k in keys}, **self.temporal_options}

    def load_image_model(self, folder: str | Path, variant: str | None = None) -> None:
        """Load the image model's safetensors weights from ``folder`` into the spatial layers, exactly.

        Every key of the file must be a spatial key of this model and vice versa, with equal shapes;
        otherwise a ValueError names the missing, unexpected and mismatched keys. Temporal layers are
        left as they are.
        """
        files = _weights_file(Path(folder), variant)
        state = load_state_dict_file(files)
        own = self.state_dict()
        spatial = {k: v for k, v in own.items() if not self.is_temporal(k)}
        missing = sorted(set(spatial) - set(state))
        unexpected = sorted(set(state) - set(spatial))
        shapes = sorted(k for k in set(spatial) & set(state) if tuple(state[k].shape) != tuple(spatial[k].shape))
        if missing or unexpected or shapes:
            where = ", ".join(str(f) for f in files)
            parts = []
            for label, keys in (("missing", missing), ("unexpected", unexpected)):
                if keys:
                    more = f" ... ({len(keys)} in all)" if len(keys) > 10 else ""
                    parts.append(f"{label} keys {keys[:10]}{more}")
            if shapes:
                parts.append("shape mismatches " + ", ".join(
                    f"{k}: file {tuple(state[k].shape)} vs model {tuple(spatial[k].shape)}" for k in shapes[:10]))
            raise ValueError(f"U-Net weights {where} do not fit the model built from {Path(folder) / 'config.json'}: "
                             + "; ".join(parts))
        temporal = {k: v for k, v in own.items() if self.is_temporal(k)}
        self.load_state_dict({**state, **temporal}, strict=True)

    # ---- noise level ---------------------------------------------------------------------------
    @property
    def train_logsnrs(self) -> Tensor:
        """(N,) float64: log-SNR of the image model's training timesteps 0 .. N-1 (decreasing)."""
        return self._logsnr_table

    def timestep_from_logsnr(self, logsnr: Tensor) -> Tensor:
        """logSNR (B,) -> the image model's fractional timestep (B,) float64 in [0, N - 1]."""
        table = self._tables.get(logsnr.device)
        if table is None:
            table = self._tables[logsnr.device] = self._logsnr_table.to(logsnr.device)
        return fractional_timestep(logsnr, table)

    # ---- forward -------------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        logsnr: Tensor,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        fps: Tensor | None = None,
        frame_mask: Tensor | None = None,
        extra: Tensor | None = None,
    ) -> Tensor:
        """Predict (of the image model's kind: eps or v) from a noisy video.

        Args:
            x: noisy latents (B, C_in, T, H, W); H, W divisible by 2**(levels - 1).
            logsnr: noise level (B,); mapped to the image model's timestep (clipped to its range).
            context: text tokens (B, L, D), D = ``context_dim``.
            context_mask: (B, L) bool, True = real token; None = attend to all L tokens (as SD does).
            fps: frame rate (B,) float; None leaves the fps embedding out.
            frame_mask: (B, T) bool, True = valid frame; None = all valid. Outputs on masked frames
                are meaningless and valid frames do not depend on them.
            extra: (B, num_extra_conditions) extra scalar conditions.

        Returns:
            (B, C_out, T, H, W).
        """
        check_denoiser_inputs(self, x, logsnr, context, context_mask, fps, frame_mask, extra)
        b, c, t, h, w = x.shape
        timestep = self.timestep_from_logsnr(logsnr)  # (B,) float64, fractional
        dtype = self.conv_in.weight.dtype
        emb = self.time_embedding(sinusoidal_embedding(timestep, self.conv_in.out_channels).to(dtype))  # (B, E)
        if fps is not None:
            emb = emb + self.fps_embed(fps)
        if self.extra_embed is not None:
            emb = emb + self.extra_embed(extra)
        emb = emb.repeat_interleave(t, dim=0)  # (B*T, E): frame (b, t) sits at row b*T + t
        video = ClipLayout(b, t, frame_mask, self.gradient_checkpointing and self.training)

        hs = self.conv_in(x.transpose(1, 2).reshape(b * t, c, h, w))  # (B*T, C0, H, W)
        skips = [hs]
        for block in self.down_blocks:
            hs, out = block(hs, emb, context, context_mask, video)
            skips += out
        if self.mid_block is not None:
            hs = self.mid_block(hs, emb, context, context_mask, video)
        for block in self.up_blocks:
            hs = block(hs, skips, emb, context, context_mask, video)
        out = self.conv_out(F.silu(self.conv_norm_out(hs)))  # (B*T, C_out, H, W)
        return out.reshape(b, t, *out.shape[1:]).transpose(1, 2).contiguous()  # (B, C_out, T, H, W)
