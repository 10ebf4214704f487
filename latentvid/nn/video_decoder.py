"""Video LDM's first stage: a pretrained image VAE whose decoder learns time.

Blattmann et al. (2023) keep the encoder of an image ``AutoencoderKL`` (Stable Diffusion's), so
the latents a text-to-image model was trained on stay exactly as they were, and fine-tune a
decoder with temporal layers on video so decoded frames no longer flicker. ``TemporalDecoderVAE``
is that autoencoder, loaded from a local diffusers folder:

* the encoder (and ``quant_conv``) run on every frame alone: latents (B, C, T, H / sf, W / sf);
* after every ResNet block of the decoder's middle and up blocks sits a ``TemporalMixer``: a
  per-frame GroupNorm, SiLU and a causal 3x3x3 convolution added as a residual whose weights start
  at zero, so at initialisation the decoder *is* the image decoder applied per frame.

Train it with :class:`latentvid.models.autoencoder.AutoencoderModule` and ``freeze_encoder: true``
(``configs/vae-videoldm.yaml``); the frozen SD latent scale stays in place with ``scale_batches: 0``.
Temporal layers are causal (past frames only), so decoding frame i never needs later latents.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from latentvid.nn.causal import CausalConv3d, group_count
from latentvid.nn.diffusers_vae import latent_space, model_folder
from latentvid.nn.gaussian_autoencoder import DiagonalGaussian, GaussianAutoencoder
from latentvid.nn.layers import FrameGroupNorm, frames_view, unframe


class TemporalMixer(nn.Module):
    """Residual causal temporal layer ``x + conv3d(silu(norm(x)))``; the identity at initialisation.

    Args:
        channels: feature channels C.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = FrameGroupNorm(group_count(channels), channels, eps=1e-6)
        self.conv = CausalConv3d(channels, channels, 3)
        nn.init.zeros_(self.conv.conv.weight)  # start as the image decoder
        nn.init.zeros_(self.conv.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, C, T, H, W)."""
        return x + self.conv(torch.nn.functional.silu(self.norm(x)))[0]


class _WithTemporal(nn.Module):
    """A diffusers ResNet block (on frames folded into the batch) followed by a ``TemporalMixer``.

    diffusers' decoder calls its blocks on (B*T, C, H, W) and knows nothing of T, so the owning
    ``TemporalDecoderVAE`` sets ``num_frames`` before each decode.
    """

    def __init__(self, spatial: nn.Module, channels: int) -> None:
        super().__init__()
        self.spatial = spatial
        self.temporal = TemporalMixer(channels)
        self.num_frames = 1

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """(B*T, C, H, W) -> (B*T, C', H, W)."""
        h = self.spatial(hidden_states, *args, **kwargs)
        return frames_view(self.temporal(unframe(h, h.shape[0] // self.num_frames)))


class TemporalDecoderVAE(GaussianAutoencoder):
    """A diffusers image ``AutoencoderKL`` with a frozen per-frame encoder and a temporal decoder.

    Video (B, 3, T, H, W) in [-1, 1] <-> latents (B, C, T, H / sf, W / sf) (``temporal_factor`` 1,
    any T). Scaled latents use the VAE config's ``scaling_factor`` / ``shift_factor`` unless given.

    Args:
        path: local diffusers folder (a pipeline folder with a ``vae`` subfolder, or the VAE folder
            itself with ``subfolder=None``). Nothing is downloaded.
        subfolder: subfolder of ``path`` holding the VAE's config.json, or None.
        scale: latent scale; None takes the config's ``scaling_factor``.
        shift: latent shift; None takes the config's ``shift_factor`` (0 when it has none).
        train_spatial_decoder: also train the decoder's image layers (Video LDM trains the
            temporal ones; with True the whole decoder adapts). The encoder is always frozen, so
            the image model's latents stay valid.
    """

    def __init__(
        self,
        path: str,
        subfolder: str | None = "vae",
        scale: float | None = None,
        shift: float | None = None,
        train_spatial_decoder: bool = False,
    ) -> None:
        folder = model_folder(path, subfolder, "AutoencoderKL", "stabilityai/sd-vae-ft-mse")
        from diffusers import AutoencoderKL  # lazy: diffusers is slow to import

        vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
        scale, shift, latent_channels, spatial_factor = latent_space(vae.config, scale, shift)
        super().__init__(scale, shift)
        self.latent_channels = latent_channels
        self.spatial_factor = spatial_factor
        self.temporal_factor = 1
        self.encoder = nn.ModuleDict({"encoder": vae.encoder, "quant_conv": _or_identity(vae.quant_conv)})
        self.encoder.requires_grad_(False)
        decoder = vae.decoder
        blocks = [decoder.mid_block, *decoder.up_blocks]
        for block in blocks:
            for i, resnet in enumerate(block.resnets):
                block.resnets[i] = _WithTemporal(resnet, resnet.conv2.out_channels)
        self.decoder = nn.ModuleDict({"post_quant_conv": _or_identity(vae.post_quant_conv), "decoder": decoder})
        if not train_spatial_decoder:
            for name, p in self.decoder.named_parameters():
                p.requires_grad_(".temporal." in name)

    def _mixers(self) -> Iterator[_WithTemporal]:
        return (m for m in self.decoder.modules() if isinstance(m, _WithTemporal))

    def temporal_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters this class added (the temporal layers)."""
        for m in self._mixers():
            yield from m.temporal.parameters()

    def encode_posterior(self, video: torch.Tensor) -> DiagonalGaussian:
        """Video (B, 3, T, H, W) -> raw posterior over (B, C, T, H / sf, W / sf), frame by frame."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video (B, 3, T, H, W), got shape {tuple(video.shape)}")
        h, w = video.shape[-2:]
        if h % self.spatial_factor or w % self.spatial_factor:
            raise ValueError(f"frame size {h}x{w} is not divisible by the spatial factor {self.spatial_factor}")
        moments = self.encoder["quant_conv"](self.encoder["encoder"](frames_view(video)))  # (B*T, 2C, h, w)
        return DiagonalGaussian.from_moments(unframe(moments, video.shape[0]))

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (B, C, T, h, w) -> video (B, 3, T, h * sf, w * sf)."""
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents (B, {self.latent_channels}, T, h, w), got shape {tuple(z.shape)}")
        for m in self._mixers():
            m.num_frames = z.shape[2]
        frames = self.decoder["decoder"](self.decoder["post_quant_conv"](frames_view(z)))  # (B*T, 3, H, W)
        return unframe(frames, z.shape[0])


def _or_identity(module: nn.Module | None) -> nn.Module:
    """diffusers leaves quant convs out (None) in some configs."""
    return nn.Identity() if module is None else module
