"""Tests for latentvid/metrics/i3d.py: architecture, reference key layout, SAME padding."""

from __future__ import annotations

import math

import pytest
import torch

from latentvid.metrics.fvd import FrechetVideoDistance
from latentvid.metrics.i3d import I3D, TorchScriptI3D, Unit3D, same_padding

# Inception-I3D layer table (Carreira & Zisserman 2017, Fig. 3; Inception-v1 widths), written out
# independently of the implementation: (name, in_channels, (b0, b1a, b1b, b2a, b2b, b3b)).
INCEPTION_TABLE = [
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
]
# Stem convolutions: (name, in, out, kernel volume).
STEM_TABLE = [
    ("Conv3d_1a_7x7", 3, 64, 7 * 7 * 7),
    ("Conv3d_2b_1x1", 64, 64, 1),
    ("Conv3d_2c_3x3", 64, 192, 3 * 3 * 3),
]


def reference_shapes(num_classes: int = 400) -> dict[str, tuple[int, ...]]:
    """Parameter/buffer shapes of the pytorch-i3d InceptionI3d state dict, from the table."""
    shapes: dict[str, tuple[int, ...]] = {}

    def unit(prefix: str, cin: int, cout: int, k: int) -> None:
        shapes[f"{prefix}.conv3d.weight"] = (cout, cin, k, k, k)
        for buf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.bn.{buf}"] = (cout,)

    for name, cin, cout, kvol in STEM_TABLE:
        unit(name, cin, cout, round(kvol ** (1 / 3)))
    for name, cin, (w0, w1a, w1b, w2a, w2b, w3b) in INCEPTION_TABLE:
        unit(f"{name}.b0", cin, w0, 1)
        unit(f"{name}.b1a", cin, w1a, 1)
        unit(f"{name}.b1b", w1a, w1b, 3)
        unit(f"{name}.b2a", cin, w2a, 1)
        unit(f"{name}.b2b", w2a, w2b, 3)
        unit(f"{name}.b3b", cin, w3b, 1)
    shapes["logits.conv3d.weight"] = (num_classes, 1024, 1, 1, 1)
    shapes["logits.conv3d.bias"] = (num_classes,)
    return shapes


def test_parameter_count_matches_layer_table() -> None:
    # A BN unit has cin*cout*k params (conv, no bias) + 2*cout (BN gamma, beta).
    def unit(cin: int, cout: int, k: int) -> int:
        return cin * cout * k + 2 * cout

    stem = sum(unit(cin, cout, k) for _, cin, cout, k in STEM_TABLE)
    blocks = sum(
        unit(c, w0, 1) + unit(c, w1a, 1) + unit(w1a, w1b, 27)
        + unit(c, w2a, 1) + unit(w2a, w2b, 27) + unit(c, w3b, 1)
        for _, c, (w0, w1a, w1b, w2a, w2b, w3b) in INCEPTION_TABLE
    )
    logits = 1024 * 400 + 400
    # stem 402,368 + nine Inception blocks 11,884,896 = 12,287,264 (the "~12.3M" trunk)
    # + 400-way logits 410,000 = 12,697,264.
    assert (stem, blocks, logits) == (402_368, 11_884_896, 410_000)
    expected = stem + blocks + logits
    assert expected == 12_697_264
    model = I3D(num_classes=400)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_same_padding_matches_tensorflow_rule() -> None:
    # TF docs: out = ceil(in / stride); pad_total = max((out - 1) * stride + k - in, 0),
    # front = pad_total // 2 (the extra cell goes to the back).
    for size in range(1, 40):
        for k in range(1, 8):
            for s in range(1, 4):
                out = math.ceil(size / s)
                total = max((out - 1) * s + k - size, 0)
                assert same_padding(size, k, s) == (total // 2, total - total // 2), (size, k, s)


def test_unit3d_output_size_is_ceil_div() -> None:
    unit = Unit3D(2, 3, kernel=(7, 7, 7), stride=(2, 2, 2))
    for t, h, w in [(1, 5, 6), (16, 64, 63), (7, 9, 224)]:
        out = unit(torch.zeros(1, 2, t, h, w))
        assert out.shape[2:] == (math.ceil(t / 2), math.ceil(h / 2), math.ceil(w / 2))


def test_unit3d_pads_asymmetrically_like_tensorflow() -> None:
    # 1-D check along W with a kernel of ones: input length 6, k=4, stride 2 -> pad (1, 1);
    # length 5, k=4, stride 2 -> total 3 -> (1, 2). Output = window sums of the padded signal.
    unit = Unit3D(1, 1, kernel=(1, 1, 4), stride=(1, 1, 2), batch_norm_relu=False)
    with torch.no_grad():
        unit.conv3d.weight.fill_(1.0)
        unit.conv3d.bias.zero_()
    x = torch.arange(1.0, 6.0).view(1, 1, 1, 1, 5)  # [1, 2, 3, 4, 5]
    padded = [0.0, 1, 2, 3, 4, 5, 0, 0]
    expected = [sum(padded[i : i + 4]) for i in (0, 2, 4)]
    assert unit(x).flatten().tolist() == expected


def test_loads_reference_layout_strictly(tmp_path) -> None:
    shapes = reference_shapes(num_classes=157)
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=gen) for k, shape in shapes.items()}
    for k in state:
        if k.endswith("running_var"):
            state[k] = state[k].abs() + 0.5
    # Old pytorch-i3d files predate num_batches_tracked; such plain dicts must still load.
    path = tmp_path / "rgb_charades.pt"
    torch.save(state, path)

    model = I3D.from_checkpoint(str(path))
    assert model.num_classes == 157 and not model.training
    ours = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert ours == set(shapes)
    loaded = model.state_dict()
    for key in ("Conv3d_1a_7x7.conv3d.weight", "Mixed_4e.b2b.bn.running_var", "logits.conv3d.bias"):
        torch.testing.assert_close(loaded[key], state[key])

    # A DataParallel-prefixed checkpoint wrapped in {"state_dict": ...} also loads.
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    assert I3D.from_checkpoint(str(wrapped)).num_classes == 157


def test_wrong_checkpoint_is_rejected_with_names(tmp_path) -> None:
    state = {k: torch.zeros(s) for k, s in reference_shapes().items()}
    del state["Mixed_5c.b3b.conv3d.weight"]
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="Mixed_5c.b3b.conv3d.weight"):
        I3D.from_checkpoint(str(path))
    with pytest.raises(FileNotFoundError, match="pytorch-i3d"):
        I3D.from_checkpoint(str(tmp_path / "rgb_imagenet.pt"))


def test_features_are_pooled_trunk_before_logits() -> None:
    torch.manual_seed(0)
    model = I3D().eval()
    captured = {}
    model.Mixed_5c.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    x = torch.rand(2, 3, 8, 48, 48) * 2 - 1
    with torch.no_grad():
        feats = model.features(x)
        logits = model(x)
    assert feats.shape == (2, 1024) and logits.shape == (2, 400)
    # 8 x 48 x 48 -> Mixed_5c grid 1 x 2 x 2 (strides 8, 32, 32 with SAME padding); the
    # reference 2x7x7 average pool, clipped to that grid, is the full mean.
    assert captured["x"].shape == (2, 1024, 1, 2, 2)
    torch.testing.assert_close(feats, captured["x"].mean(dim=(2, 3, 4)))
    # Logits are the 1x1x1 head applied to those features.
    head = model.logits.conv3d
    torch.testing.assert_close(logits, feats @ head.weight.flatten(1).T + head.bias, rtol=1e-4, atol=1e-5)
    # Clips differ -> features differ (the network sees its input).
    assert not torch.allclose(feats[0], feats[1])


class _FakeStyleGANVDetector(torch.nn.Module):
    """Stands in for i3d_torchscript.pt: same keyword interface, refuses other settings."""

    def forward(
        self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False
    ) -> torch.Tensor:
        if rescale or resize or not return_features:
            raise RuntimeError("called with the wrong switches")
        if bool(x.min() < -1.0) or bool(x.max() > 1.0):
            raise RuntimeError("input outside [-1, 1]")
        return x.mean(dim=(1, 3, 4)).repeat(1, 25)  # (B, 16 * 25 = 400)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit deprecation notices
def test_torchscript_wrapper_calls_detector_as_documented(tmp_path) -> None:
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_FakeStyleGANVDetector()).save(str(path))
    detector = TorchScriptI3D(str(path))
    x = torch.rand(2, 3, 16, 8, 8) * 2 - 1
    torch.testing.assert_close(detector.features(x), x.mean(dim=(1, 3, 4)).repeat(1, 25))
    # FVD picks the 400-d feature size up from the wrapper.
    fvd = FrechetVideoDistance("i3d_torchscript", weights=str(path), resize=8)
    assert fvd.feature_dim == 400
    fvd.update(x, real=True)
    assert fvd.real_n.item() == 2
    with pytest.raises(FileNotFoundError, match="i3d_torchscript.pt"):
        TorchScriptI3D(str(tmp_path / "missing" / "i3d_torchscript.pt"))
