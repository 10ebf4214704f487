"""Pretrained diffusers VAEs behind the ``FirstStage`` interface, loaded from local folders only.

* ``DiffusersImageVAE``: an image ``AutoencoderKL`` (Stable Diffusion, SDXL, FLUX VAEs) applied to
  every frame separately; no temporal compression.
* ``DiffusersCogVideoXVAE``: CogVideoX's causal 3D ``AutoencoderKLCogVideoX`` (4x temporal, 8x
  spatial compression for the released weights).

Both are frozen (no gradients, always in eval mode), never download (``local_files_only``), and
import diffusers only when constructed. Latents are scaled with the model config's
``scaling_factor`` (and ``shift_factor`` when it has one) as ``(z - shift) * scale``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from latentvid.nn.first_stage import FirstStage


def model_folder(path: str, subfolder: str | None, what: str, example: str) -> Path:
    """The folder holding the model's config.json; FileNotFoundError saying what to put there."""
    folder = Path(path).expanduser()
    if subfolder:
        folder = folder / subfolder
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no diffusers {what} at {folder} (config.json not found). Put a diffusers-format model "
            f"folder there (config.json + diffusion_pytorch_model.safetensors), e.g. download one "
            f"with `huggingface-cli download {example} --local-dir <dir>` on a machine with internet "
            f"and set path=<dir> (subfolder={subfolder!r} is appended to it; use subfolder=null "
            f"when path is the VAE folder itself)."
        )
    return folder


def latent_space(config: Any, scale: float | None, shift: float | None) -> tuple[float, float, int, int]:
    """``(scale, shift, latent_channels, spatial_factor)`` of a diffusers VAE from its ``config``.

    ``scale`` / ``shift`` None take the config's ``scaling_factor`` / ``shift_factor`` (0 when it
    has none, as in SD's VAEs); the spatial factor is 2 ** (number of levels - 1).
    """
    scale = float(config.scaling_factor if scale is None else scale)
    shift = float((getattr(config, "shift_factor", None) or 0.0) if shift is None else shift)
    return scale, shift, int(config.latent_channels), 2 ** (len(config.block_out_channels) - 1)


class _FrozenDiffusersVAE(FirstStage):
    """Shared part: holds a frozen diffusers VAE and the latent scale / shift."""

    vae: Any

    def _freeze(self, vae: Any, scale: float | None, shift: float | None, folder: Path) -> None:
        vae.requires_grad_(False)
        vae.eval()
        self.vae = vae
        self.scale, self.shift, self.latent_channels, self.spatial_factor = latent_space(vae.config, scale, shift)
        if self.scale == 0:
            raise ValueError("scale must be non-zero (decode divides by it)")
        # reloaded from its folder, so LatentDiffusion leaves these weights out of its checkpoints
        self.weights_path = str(folder)

    def train(self, mode: bool = True) -> _FrozenDiffusersVAE:
        """Frozen: stays in eval mode whatever the parent module does."""
        super().train(False)
        return self

    def _check_video(self, video: torch.Tensor) -> None:
        channels = int(getattr(self, "video_channels", None) or self.vae.config.in_channels)
        if video.ndim != 5 or video.shape[1] != channels:
            raise ValueError(f"expected video (B, {channels}, T, H, W), got shape {tuple(video.shape)}")
        self.latent_frames(video.shape[2])  # raises on a frame count the model cannot take
        h, w = video.shape[-2:]
        if h % self.spatial_factor or w % self.spatial_factor:
            raise ValueError(f"frame size {h}x{w} is not divisible by the spatial factor {self.spatial_factor}")

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"expected latents (B, {self.latent_channels}, t, h, w), got shape {tuple(latents.shape)}"
            )

    def _to_latent(self, posterior: Any, generator: torch.Generator | None) -> torch.Tensor:
        """diffusers DiagonalGaussianDistribution -> scaled latents (mean without a generator)."""
        z = posterior.mode() if generator is None else posterior.sample(generator)
        return (z - self.shift) * self.scale

    def _from_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> raw latents in the VAE's dtype."""
        return (latents / self.scale + self.shift).to(self.vae.dtype)


class DiffusersImageVAE(_FrozenDiffusersVAE):
    """A diffusers image ``AutoencoderKL`` applied frame by frame.

    Video (B, 3, T, H, W) <-> latents (B, C, T, H / sf, W / sf); ``temporal_factor`` is 1.

    Args:
        path: local diffusers model folder (a pipeline folder with a ``vae`` subfolder, or the
            VAE folder itself with ``subfolder=None``). Nothing is downloaded.
        subfolder: subfolder of ``path`` holding the VAE's config.json, or None.
        scale: latent scale; None takes the config's ``scaling_factor``.
        shift: latent shift; None takes the config's ``shift_factor`` (0 when it has none).
        chunk_size: frames per VAE call (time is folded into the batch), bounding memory.
    """

    def __init__(
        self,
        path: str,
        subfolder: str | None = "vae",
        scale: float | None = None,
        shift: float | None = None,
        chunk_size: int = 16,
    ) -> None:
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        folder = model_folder(path, subfolder, "AutoencoderKL", "stabilityai/sd-vae-ft-mse")
        from diffusers import AutoencoderKL  # lazy: diffusers is slow to import

        self._freeze(AutoencoderKL.from_pretrained(str(folder), local_files_only=True), scale, shift, folder)
        self.temporal_factor = 1
        self.chunk_size = chunk_size

    @torch.no_grad()
    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Video (B, 3, T, H, W) in [-1, 1] -> scaled latents (B, C, T, H / sf, W / sf).

        Posterior samples drawn from ``generator`` when given, else posterior means.
        """
        self._check_video(video)
        b, c, t, h, w = video.shape
        frames = video.transpose(1, 2).reshape(b * t, c, h, w).to(self.vae.dtype)  # (B*T, 3, H, W)
        latents = [
            self._to_latent(self.vae.encode(chunk).latent_dist, generator) for chunk in frames.split(self.chunk_size)
        ]
        z = torch.cat(latents)  # (B*T, C, h, w)
        return z.reshape(b, t, *z.shape[1:]).transpose(1, 2).to(video.dtype)  # (B, C, T, h, w)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, T, h, w) -> video (B, 3, T, h * sf, w * sf)."""
        self._check_latents(latents)
        b, c, t, h, w = latents.shape
        z = self._from_latent(latents.transpose(1, 2).reshape(b * t, c, h, w))  # (B*T, C, h, w)
        frames = torch.cat([self.vae.decode(chunk).sample for chunk in z.split(self.chunk_size)])  # (B*T, 3, H, W)
        return frames.reshape(b, t, *frames.shape[1:]).transpose(1, 2).to(latents.dtype)  # (B, 3, T, H, W)


class DiffusersCogVideoXVAE(_FrozenDiffusersVAE):
    """CogVideoX's causal 3D VAE (diffusers ``AutoencoderKLCogVideoX``).

    Video (B, 3, T, H, W) with T = 1 + 2 * tf * m <-> latents (B, C, 1 + 2m, H / sf, W / sf);
    ``temporal_factor`` = the config's ``temporal_compression_ratio`` (4), ``spatial_factor`` =
    2 ** (levels - 1) (8). diffusers' decoder only restores the frame count for an odd number
    of latent frames (it treats the first frame of an odd-length run specially), so clip lengths
    are restricted to 1 + 8m frames (1, 9, 17, ..., 49) for the released model.

    Args:
        path: local diffusers folder (a CogVideoX pipeline folder with a ``vae`` subfolder, or the
            VAE folder itself with ``subfolder=None``). Nothing is downloaded.
        subfolder: subfolder of ``path`` holding the VAE's config.json, or None.
        scale: latent scale; None takes the config's ``scaling_factor``.
        shift: latent shift; None takes the config's ``shift_factor`` (0 when it has none).
        tiling: enable diffusers' spatial tiling for large frames (approximate, saves memory).
    """

    def __init__(
        self,
        path: str,
        subfolder: str | None = "vae",
        scale: float | None = None,
        shift: float | None = None,
        tiling: bool = False,
    ) -> None:
        super().__init__()
        folder = model_folder(path, subfolder, "AutoencoderKLCogVideoX", "THUDM/CogVideoX-2b --include 'vae/*'")
        from diffusers import AutoencoderKLCogVideoX  # lazy: diffusers is slow to import

        self._freeze(AutoencoderKLCogVideoX.from_pretrained(str(folder), local_files_only=True), scale, shift,
                     folder)
        self.temporal_factor = int(self.vae.config.temporal_compression_ratio)
        if tiling:
            self.vae.enable_tiling()

    def latent_frames(self, num_frames: int) -> int:
        """1 + (num_frames - 1) / tf latent frames; num_frames must be 1 + 2 * tf * m (odd latent count)."""
        period = 2 * self.temporal_factor
        if num_frames < 1 or (num_frames - 1) % period:
            raise ValueError(
                f"num_frames={num_frames} does not fit the CogVideoX VAE: use 1 + {period} * m frames "
                f"(its decoder restores the frame count only for an odd number of latent frames)"
            )
        return 1 + (num_frames - 1) // self.temporal_factor

    @torch.no_grad()
    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Video (B, 3, T, H, W) in [-1, 1] -> scaled latents (B, C, 1 + (T - 1) / tf, H / sf, W / sf).

        Posterior samples drawn from ``generator`` when given, else posterior means.
        """
        self._check_video(video)
        posterior = self.vae.encode(video.to(self.vae.dtype)).latent_dist  # diffusers takes (B, C, T, H, W) as is
        return self._to_latent(posterior, generator).to(video.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, t, h, w), t odd -> video (B, 3, 1 + (t - 1) * tf, h * sf, w * sf)."""
        self._check_latents(latents)
        if latents.shape[2] % 2 == 0:
            raise ValueError(
                f"the CogVideoX VAE decodes an odd number of latent frames only, got {latents.shape[2]}"
            )
        return self.vae.decode(self._from_latent(latents)).sample.to(latents.dtype)


def channel_stats(config: Any, folder: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel ``latents_mean`` / ``latents_std`` (n,) of a video VAE's config; ValueError naming
    the file when either is missing or has the wrong length."""
    stats = []
    for key in ("latents_mean", "latents_std"):
        value = getattr(config, key, None)
        if value is None or len(value) != n:
            raise ValueError(f"{folder / 'config.json'}: {key} must list {n} values (one per latent channel), "
                             f"got {value!r}")
        stats.append(torch.tensor([float(v) for v in value], dtype=torch.float32))
    if bool((stats[1] <= 0).any()):
        raise ValueError(f"{folder / 'config.json'}: latents_std must be > 0, got {stats[1].tolist()}")
    return stats[0], stats[1]


class _ChannelNormalisedVAE(_FrozenDiffusersVAE):
    """A causal video VAE whose latents are normalised per channel, ``(z - mean) / std * scale``
    (Wan: scale 1; LTX-Video: its config's ``scaling_factor``), the way its diffusers pipeline does.
    ``mean`` / ``std`` are non-persistent buffers: they come from the model folder, not the checkpoint."""

    def _setup(self, vae: Any, folder: Path, channels: int, temporal: int, spatial: int, scale: float,
               stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        vae.requires_grad_(False)
        vae.eval()
        self.vae = vae
        self.latent_channels, self.temporal_factor, self.spatial_factor = channels, temporal, spatial
        self.scale, self.shift = float(scale), 0.0
        mean, std = channel_stats(vae.config, folder, channels) if stats is None else stats
        self.register_buffer("latents_mean", mean.view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latents_std", std.view(1, -1, 1, 1, 1), persistent=False)
        self.weights_path = str(folder)

    def _to_latent(self, posterior: Any, generator: torch.Generator | None) -> torch.Tensor:
        z = posterior.mode() if generator is None else posterior.sample(generator)
        return (z.float() - self.latents_mean) / self.latents_std * self.scale  # (B, C, t, h, w)

    def _from_latent(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents.float() / self.scale * self.latents_std + self.latents_mean).to(self.vae.dtype)

    @torch.no_grad()
    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Video (B, 3, T, H, W) in [-1, 1], T = 1 + tf * k -> normalised latents (B, C, 1 + k, H / sf, W / sf).

        Posterior samples drawn from ``generator`` when given, else posterior means.
        """
        self._check_video(video)
        posterior = self.vae.encode(video.to(self.vae.dtype)).latent_dist
        return self._to_latent(posterior, generator).to(video.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, t, h, w) -> video (B, 3, 1 + (t - 1) * tf, h * sf, w * sf)."""
        self._check_latents(latents)
        return self.vae.decode(self._from_latent(latents)).sample.to(latents.dtype)


class DiffusersWanVAE(_ChannelNormalisedVAE):
    """Wan 2.1 / 2.2's causal 3D VAE (diffusers ``AutoencoderKLWan``).

    Video (B, 3, T, H, W), T = 1 + tf * k <-> latents (B, z_dim, 1 + k, H / sf, W / sf) normalised per
    channel with the config's ``latents_mean`` / ``latents_std`` as WanPipeline does; ``temporal_factor``
    and ``spatial_factor`` are the config's ``scale_factor_temporal`` / ``scale_factor_spatial``
    (Wan 2.1: 4 and 8, 16 channels; Wan 2.2 TI2V-5B: 4 and 16, 48 channels, 2 x 2 pixel patches).

    Args:
        path: local diffusers folder (a Wan pipeline folder with a ``vae`` subfolder, or the VAE folder
            itself with ``subfolder=None``). Nothing is downloaded.
        subfolder: subfolder of ``path`` holding the VAE's config.json, or None.
        tiling: enable diffusers' spatial tiling for large frames (approximate, saves memory).
    """

    def __init__(self, path: str, subfolder: str | None = "vae", tiling: bool = False) -> None:
        super().__init__()
        folder = model_folder(path, subfolder, "AutoencoderKLWan", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers --include 'vae/*'")
        check_class(folder, "AutoencoderKLWan")
        from diffusers import AutoencoderKLWan  # lazy: diffusers is slow to import

        vae = AutoencoderKLWan.from_pretrained(str(folder), local_files_only=True)
        cfg = vae.config
        self._setup(vae, folder, int(cfg.z_dim), int(cfg.scale_factor_temporal), int(cfg.scale_factor_spatial), 1.0)
        # Wan 2.2's VAE folds 2 x 2 pixel patches into its input channels (in_channels 12 for RGB)
        self.video_channels = int(cfg.in_channels) // int(cfg.patch_size or 1) ** 2
        if tiling:
            self.vae.enable_tiling()


def check_class(folder: Path, expected: str) -> None:
    """ValueError naming ``folder/config.json`` when its ``_class_name`` is another diffusers class."""
    import json

    file = folder / "config.json"
    try:
        name = json.loads(file.read_text(encoding="utf-8")).get("_class_name")
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from err
    if name is not None and name != expected:
        raise ValueError(f"{file}: _class_name is {name!r}, expected {expected!r} (is `path` the right model folder?)")


class DiffusersLTXVideoVAE(_ChannelNormalisedVAE):
    """LTX-Video's causal 3D VAE (diffusers ``AutoencoderKLLTXVideo``).

    Video (B, 3, T, H, W), T = 1 + tf * k <-> latents (B, 128, 1 + k, H / sf, W / sf) normalised per channel
    as LTXPipeline does, ``(z - latents_mean) * scaling_factor / latents_std`` (mean / std are buffers of
    the VAE's weights); tf = 8 and sf = 32 for the released VAEs (the model's ``temporal_compression_ratio``
    / ``spatial_compression_ratio``). VAEs with ``timestep_conditioning`` (LTX-Video 0.9.1+) decode at
    ``decode_timestep`` after mixing in ``decode_noise_scale`` of fresh noise, LTXPipeline's
    ``decode_timestep`` / ``decode_noise_scale`` (its defaults 0 and None = ``decode_timestep``).

    Args:
        path: local diffusers folder (an LTX-Video pipeline folder with a ``vae`` subfolder, or the VAE folder
            itself with ``subfolder=None``). Nothing is downloaded.
        subfolder: subfolder of ``path`` holding the VAE's config.json, or None.
        decode_timestep: the decoder's timestep (timestep-conditioned VAEs only; 0.9.1 recommends 0.05).
        decode_noise_scale: noise mixed into the latents before decoding; None = ``decode_timestep``.
        tiling: enable diffusers' spatial tiling for large frames (approximate, saves memory).
    """

    def __init__(self, path: str, subfolder: str | None = "vae", decode_timestep: float = 0.0,
                 decode_noise_scale: float | None = None, tiling: bool = False) -> None:
        super().__init__()
        folder = model_folder(path, subfolder, "AutoencoderKLLTXVideo", "Lightricks/LTX-Video --include 'vae/*'")
        check_class(folder, "AutoencoderKLLTXVideo")
        from diffusers import AutoencoderKLLTXVideo  # lazy: diffusers is slow to import

        vae = AutoencoderKLLTXVideo.from_pretrained(str(folder), local_files_only=True)
        stats = (vae.latents_mean.detach().float().clone(), vae.latents_std.detach().float().clone())
        if bool((stats[1] <= 0).any()):
            raise ValueError(f"{folder}: the VAE's latents_std must be > 0, got {stats[1].tolist()}")
        self._setup(vae, folder, int(vae.config.latent_channels), int(vae.temporal_compression_ratio),
                    int(vae.spatial_compression_ratio), float(vae.config.scaling_factor), stats)
        self.decode_timestep = float(decode_timestep)
        self.decode_noise_scale = self.decode_timestep if decode_noise_scale is None else float(decode_noise_scale)
        if tiling:
            self.vae.enable_tiling()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, t, h, w) -> video (B, 3, 1 + (t - 1) * tf, h * sf, w * sf)."""
        self._check_latents(latents)
        z = self._from_latent(latents)
        if not self.vae.config.timestep_conditioning:
            return self.vae.decode(z).sample.to(latents.dtype)
        b = z.shape[0]
        if self.decode_noise_scale:
            s = self.decode_noise_scale
            z = (1.0 - s) * z + s * torch.randn_like(z)
        temb = torch.full((b,), self.decode_timestep, device=z.device, dtype=z.dtype)
        return self.vae.decode(z, temb).sample.to(latents.dtype)
