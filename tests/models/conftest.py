"""Shared by tests/models: a random VGG16 / LPIPS weights file in torchvision's key layout."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]  # to relu5_3


def _random_vgg_weights(path: Path, with_lin: bool = True) -> dict:
    """A random state dict in torchvision's VGG16 key layout (features.{i}.*) plus LPIPS lin weights."""
    g = torch.Generator().manual_seed(0)
    state, index, channels = {}, 0, 3
    for v in VGG16_CFG:
        if v == "M":
            index += 1
            continue
        bound = 1 / math.sqrt(channels * 9)
        state[f"features.{index}.weight"] = (torch.rand(v, channels, 3, 3, generator=g) * 2 - 1) * bound
        state[f"features.{index}.bias"] = (torch.rand(v, generator=g) * 2 - 1) * bound
        index, channels = index + 2, v  # conv, relu
    state["classifier.0.weight"] = torch.zeros(2, 2)  # ignored
    if with_lin:
        for k, c in enumerate((64, 128, 256, 512, 512)):
            state[f"lin{k}.model.1.weight"] = torch.rand(1, c, 1, 1, generator=g)  # LPIPS's own key names
    torch.save(state, path)
    return state



@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(path of a random VGG16 + LPIPS-lin state dict, that state dict)."""
    path = tmp_path_factory.mktemp("vgg") / "vgg_lpips.pth"
    return path, _random_vgg_weights(path)
