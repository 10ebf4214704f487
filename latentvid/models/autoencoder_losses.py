"""The VAE's training losses: small pure functions on tensors, plus the LPIPS-style perceptual loss.

Each states its shapes, so tests can check it against an independent reference. Video tensors are
(B, C, T, H, W) in [-1, 1]; frame masks (B, T) bool (True = valid frame). Used by
:class:`latentvid.models.autoencoder.AutoencoderModule`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvid.nn.gaussian_autoencoder import DiagonalGaussian, GaussianAutoencoder

RECON_LOSSES = ("l1", "l2")


# ---- losses: pure functions ------------------------------------------------------------------


def masked_frame_mean(per_frame: Tensor, frame_mask: Tensor) -> Tensor:
    """Per-frame values (B, T) -> scalar: each sample's mean over its valid frames, then the mean
    over samples (an image, one valid frame, weighs as much as a clip). ``frame_mask`` (B, T) bool."""
    per_frame = torch.where(frame_mask, per_frame, torch.zeros_like(per_frame))  # no NaN leaks from masked frames
    per_sample = per_frame.sum(dim=1) / frame_mask.sum(dim=1).clamp_min(1).to(per_frame.dtype)  # (B,)
    return per_sample.mean()


def reconstruction_loss(recon: Tensor, target: Tensor, frame_mask: Tensor, kind: str = "l1") -> Tensor:
    """Mean absolute ("l1") or squared ("l2") error per element over valid frames -> scalar.

    Args:
        recon, target: (B, C, T, H, W).
        frame_mask: (B, T) bool, True = valid frame.
        kind: "l1" or "l2".
    """
    if kind not in RECON_LOSSES:
        raise ValueError(f"recon_loss must be one of {RECON_LOSSES}, got {kind!r}")
    diff = recon - target
    err = diff.abs() if kind == "l1" else diff.pow(2)
    return masked_frame_mean(err.mean(dim=(1, 3, 4)), frame_mask)  # (B, T) -> scalar


def gaussian_kl_elementwise(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per element, same shape as ``mean``."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_loss(posterior: DiagonalGaussian, latent_mask: Tensor) -> Tensor:
    """KL of the posterior to N(0, I), averaged per latent element over valid latent frames -> scalar.

    Per element (not summed per sample as in LDM), so ``kl_weight`` is relative to the per-pixel
    reconstruction loss: LDM's weight w on summed terms corresponds to w * (latent elements /
    pixel elements) here (e.g. w / 48 for 4 channels at 8x spatial compression).

    Args:
        posterior: over latents (B, C, t, h, w).
        latent_mask: (B, t) bool, True = valid latent frame.
    """
    kl = gaussian_kl_elementwise(posterior.mean, posterior.logvar)  # (B, C, t, h, w)
    return masked_frame_mean(kl.mean(dim=(1, 3, 4)), latent_mask)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss: 0.5 * (E[relu(1 - D(real))] + E[relu(1 + D(fake))]) -> scalar."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """Generator side of the hinge GAN: -E[D(fake)] -> scalar."""
    return -logits_fake.mean()


def adaptive_weight(
    nll_loss: Tensor, g_loss: Tensor, last_layer: Tensor, eps: float = 1e-4, max_weight: float = 1e4
) -> Tensor:
    """Balance of the GAN term (taming-transformers / LDM): ||d nll / d W|| / (||d g / d W|| + eps).

    ``W`` is the decoder's last layer weight, so the adversarial gradient reaching the decoder is
    scaled to the size of the reconstruction gradient. Clamped to [0, max_weight] and detached.

    Args:
        nll_loss: scalar reconstruction (+ perceptual) loss, graph kept.
        g_loss: scalar generator loss, graph kept.
        last_layer: the parameter both losses are differentiated with respect to.
    """
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.norm() / (g_grad.norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


def valid_frames(video: Tensor, frame_mask: Tensor) -> Tensor:
    """(B, C, T, H, W) and (B, T) bool -> the valid frames stacked as images (N, C, H, W)."""
    return video.transpose(1, 2)[frame_mask]  # (B, T, C, H, W)[mask] -> (N, C, H, W)


def frame_psnr_ssim(recon: Tensor, target: Tensor, frame_mask: Tensor) -> tuple[Tensor, Tensor]:
    """PSNR (dB) and SSIM of valid frames, both videos (B, C, T, H, W) in [-1, 1] -> two scalars.

    PSNR is taken over all valid pixels together (data range 2, the width of [-1, 1]); SSIM is
    torchmetrics' Gaussian-window SSIM averaged over frames. ``recon`` is clamped to [-1, 1] first.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    x = valid_frames(recon.clamp(-1.0, 1.0), frame_mask).float()  # (N, C, H, W)
    y = valid_frames(target, frame_mask).float()
    psnr = peak_signal_noise_ratio(x, y, data_range=2.0)
    ssim = structural_similarity_index_measure(x, y, data_range=2.0)
    return psnr, ssim


def decoder_last_layer(vae: GaussianAutoencoder) -> Tensor:
    """Weight of the decoder's final convolution (where the adaptive GAN weight is measured)."""
    convs = [m for m in vae.decoder.modules() if isinstance(m, nn.Conv3d)]
    return convs[-1].weight


# ---- perceptual loss -----------------------------------------------------------------------------

# torchvision VGG16 ``features`` slices ending at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
VGG16_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
VGG16_CHANNELS = (64, 128, 256, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    """LPIPS-style distance with a VGG16 backbone loaded from a local file (never downloads).

    For each valid frame: VGG16 activations at relu1_2 ... relu5_3 (input mapped from [-1, 1] to
    ImageNet-normalised RGB), each unit-normalised over channels; the squared difference is
    weighted per channel (``lin{k}``), summed over channels, averaged over space and summed over
    the five layers. Frames are then averaged as in :func:`masked_frame_mean`.

    The weights file is a ``torch.save``-d state dict with torchvision's VGG16 keys
    ``features.{i}.weight`` / ``features.{i}.bias`` (``classifier.*`` keys are ignored) and,
    optionally, the LPIPS channel weights as ``lin{k}.weight`` or LPIPS's own
    ``lin{k}.model.1.weight``, shape (1, C_k, 1, 1), k = 0..4. Without them every channel weighs
    1. To make it: ``sd = torchvision.models.vgg16(weights="IMAGENET1K_V1").state_dict()``, add the
    ``lin*`` entries of LPIPS's ``vgg.pth`` (v0.1), ``torch.save(sd, path)``, on a machine with
    internet. The module is frozen and always in eval mode.

    Args:
        weights: path of that state dict.
    """

    def __init__(self, weights: str) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"perceptual loss weights {path} not found: save a state dict with torchvision VGG16 keys "
                f"(features.*) and optional LPIPS lin{{k}}.weight entries there (see PerceptualLoss), "
                f"or set perceptual_weights=null to train without the perceptual loss"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
        # torchvision's VGG16 ``features`` (without building the 120M-parameter classifier), up to relu5_3
        features = make_layers(cfgs["D"])[:30]
        feature_state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        try:
            features.load_state_dict(feature_state)
        except RuntimeError as err:
            raise ValueError(f"{path}: the features.* entries do not fit torchvision's VGG16: {err}") from err
        self.slices = nn.ModuleList(features[a:b] for a, b in VGG16_SLICES)
        for k, channels in enumerate(VGG16_CHANNELS):
            lin = state.get(f"lin{k}.weight", state.get(f"lin{k}.model.1.weight"))
            lin = torch.ones(1, channels, 1, 1) if lin is None else lin.float()
            if tuple(lin.shape) != (1, channels, 1, 1):
                raise ValueError(f"{path}: lin{k} weight has shape {tuple(lin.shape)}, expected (1, {channels}, 1, 1)")
            self.register_buffer(f"lin{k}", lin.reshape(channels))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Frozen: stays in eval mode."""
        return super().train(False)

    def frame_distance(self, x: Tensor, y: Tensor) -> Tensor:
        """Images (N, 3, H, W) in [-1, 1], H, W >= 16 -> distance per image (N,)."""
        x = ((x + 1) / 2 - self.mean) / self.std
        y = ((y + 1) / 2 - self.mean) / self.std
        total = x.new_zeros(x.shape[0])
        for k, block in enumerate(self.slices):
            x, y = block(x), block(y)
            nx = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)  # unit norm over channels
            ny = y / (y.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            lin = getattr(self, f"lin{k}").view(1, -1, 1, 1)
            total = total + ((nx - ny).pow(2) * lin).sum(dim=1).mean(dim=(1, 2))  # (N,)
        return total

    def forward(self, recon: Tensor, target: Tensor, frame_mask: Tensor) -> Tensor:
        """Videos (B, 3, T, H, W) in [-1, 1], frame mask (B, T) -> scalar mean distance of valid frames."""
        b, _, t = recon.shape[:3]
        per_frame = recon.new_zeros(b, t)
        per_frame[frame_mask] = self.frame_distance(valid_frames(recon, frame_mask), valid_frames(target, frame_mask))
        return masked_frame_mean(per_frame, frame_mask)
