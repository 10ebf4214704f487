"""Tests for latentvid/conditioning/text.py against open_clip's own model pieces."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIP
from safetensors.torch import save_file
from torch import nn

from latentvid.conditioning import (
    OpenCLIPTextEncoder,
    RandomTextTowerWarning,
    caption_dropout,
    token_mask,
)

WIDTH, LAYERS, HEADS = 32, 3, 4
CAPTIONS = ["a red circle moving left", "", "a white triangle", "!"]
# A tiny open_clip CLIP config (both towers) in open_clip's own model-config layout.
TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 16, "head_width": 8, "layers": 1},
    "text_cfg": {
        "context_length": 77, "vocab_size": 49408, "width": WIDTH, "heads": HEADS, "layers": LAYERS
    },
}


def make_encoder(**kwargs) -> OpenCLIPTextEncoder:
    """A random tiny encoder, its expected warning silenced."""
    args = dict(random_width=WIDTH, random_layers=LAYERS, random_heads=HEADS) | kwargs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomTextTowerWarning)
        return OpenCLIPTextEncoder(**args)


@pytest.fixture(scope="module")
def encoder() -> OpenCLIPTextEncoder:
    return make_encoder(seed=3)


def tiny_clip(seed: int) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(**TINY_CLIP_CFG).eval()


def manual_token_features(clip: CLIP, tokens: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """open_clip's text path (CLIP.encode_text before pooling), run through the first n blocks."""
    x = clip.token_embedding(tokens) + clip.positional_embedding  # (B, L, D)
    for block in clip.transformer.resblocks[:n_blocks]:
        x = block(x, attn_mask=clip.attn_mask)
    return clip.ln_final(x)


def eot_pool(features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B, L, D) -> (B, D): each row's feature at its EOT token (open_clip's argmax pool)."""
    return features[torch.arange(tokens.shape[0]), tokens.argmax(dim=-1)]


# ------------------------------------------------------------------------------ shapes and masks


def test_shapes_dtype_and_mask(encoder: OpenCLIPTextEncoder) -> None:
    context, mask = encoder(CAPTIONS)
    assert context.shape == (4, 77, WIDTH) and context.dtype == torch.float32
    assert mask.shape == (4, 77) and mask.dtype == torch.bool
    assert encoder.output_dim == WIDTH
    bpe = open_clip.SimpleTokenizer()
    for row, caption in zip(mask, CAPTIONS):
        n_valid = len(bpe.encode(caption)) + 2  # SOT + BPE tokens + EOT
        assert row[:n_valid].all() and not row[n_valid:].any()
    assert mask[1].sum() == 2  # "" -> SOT, EOT
    tokens, tok_mask = encoder.tokenize(CAPTIONS)
    assert torch.equal(tokens, open_clip.tokenize(CAPTIONS))
    assert torch.equal(tok_mask, mask)


def test_truncation_keeps_eot_and_full_mask() -> None:
    enc = make_encoder(max_length=6, cache_size=0)
    tokens, mask = enc.tokenize(["one two three four five six seven", "hi"])
    assert tokens[0, -1] == enc.tokenizer.eot_token_id
    assert mask[0].all() and mask[1].tolist() == [True, True, True, False, False, False]
    context, _ = enc(["one two three four five six seven"])
    assert context.shape == (1, 6, WIDTH)


def test_token_mask_is_positional_not_pad_id() -> None:
    eot = 9
    tokens = torch.tensor([[1, 0, 5, eot, 0, 0], [1, eot, 0, 0, 0, 0]])  # id 0 inside a caption
    assert token_mask(tokens, eot).tolist() == [
        [True, True, True, True, False, False],
        [True, True, False, False, False, False],
    ]
    with pytest.raises(ValueError, match="end-of-text"):
        token_mask(torch.tensor([[1, 2, 3]]), eot)


def test_shorter_context_gives_same_leading_features(encoder: OpenCLIPTextEncoder) -> None:
    # causal attention: features of real tokens do not depend on the padding length
    short = make_encoder(seed=3, max_length=10)
    long_ctx, _ = encoder(CAPTIONS)
    short_ctx, short_mask = short(CAPTIONS)
    torch.testing.assert_close(
        short_ctx[short_mask], long_ctx[:, :10][short_mask], atol=1e-5, rtol=1e-5
    )


# ----------------------------------------------------------------- agreement with open_clip's model


def test_matches_open_clip_text_path_last_and_penultimate() -> None:
    last = make_encoder(seed=5, cache_size=0)
    penult = make_encoder(seed=5, layer="penultimate", cache_size=0)
    clip = tiny_clip(seed=0)
    weights = {k.removeprefix("text."): v for k, v in last.state_dict().items()}
    result = clip.load_state_dict(weights, strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith(("visual.", "logit_", "text_projection")) for k in result.missing_keys)
    # the penultimate encoder is the same tower without its last block
    last_block = f"resblocks.{LAYERS - 1}."
    assert set(penult.state_dict()) == {k for k in last.state_dict() if last_block not in k}

    tokens = open_clip.tokenize(CAPTIONS)
    with torch.no_grad():
        want_last = manual_token_features(clip, tokens, LAYERS)
        want_penult = manual_token_features(clip, tokens, LAYERS - 1)
        # and through open_clip's own encode path: pooled EOT feature projected = encode_text
        pooled = eot_pool(last(CAPTIONS)[0], tokens) @ clip.text_projection
        torch.testing.assert_close(pooled, clip.encode_text(tokens), atol=1e-5, rtol=1e-5)
    got_last, _ = last(CAPTIONS)
    got_penult, _ = penult(CAPTIONS)
    torch.testing.assert_close(got_last, want_last, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_penult, want_penult, atol=1e-5, rtol=1e-5)
    assert (got_last - got_penult).abs().max() > 1e-2


@pytest.fixture(scope="module")
def tiny_clip_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, CLIP]:
    """A tiny CLIP's model-config JSON and full (both towers) state dict saved with torch.save."""
    root = tmp_path_factory.mktemp("tiny_clip")
    cfg_path = root / "tiny-clip.json"
    cfg_path.write_text(json.dumps(TINY_CLIP_CFG))
    clip = tiny_clip(seed=11)
    ckpt_path = root / "open_clip_pytorch_model.bin"
    torch.save(clip.state_dict(), ckpt_path)
    return cfg_path, ckpt_path, clip


@pytest.mark.parametrize("layer", ["last", "penultimate"])
def test_full_clip_checkpoint_matches_open_clip(tiny_clip_files, layer: str) -> None:
    cfg_path, ckpt_path, clip = tiny_clip_files
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomTextTowerWarning)  # a loaded tower must not warn
        enc = OpenCLIPTextEncoder(arch=str(cfg_path), checkpoint=str(ckpt_path), layer=layer)
    assert not any(k.startswith("visual") for k in enc.state_dict())
    context, mask = enc(CAPTIONS)
    tokens = open_clip.tokenize(CAPTIONS)
    index = -1 if layer == "last" else -2
    with torch.no_grad():
        # open_clip's own intermediates API, final LayerNorm applied to each block output
        out = clip.forward_intermediates(
            text=tokens, normalize_intermediates=True, intermediates_only=True
        )
        want = out["text_intermediates"][index]
    torch.testing.assert_close(context, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(mask, token_mask(tokens, enc.tokenizer.eot_token_id))
    if layer == "last":
        with torch.no_grad():
            pooled = eot_pool(context, tokens) @ clip.text_projection
            torch.testing.assert_close(pooled, clip.encode_text(tokens), atol=1e-5, rtol=1e-5)


def test_text_only_safetensors_checkpoint(tiny_clip_files, tmp_path: Path) -> None:
    cfg_path, _, clip = tiny_clip_files
    # CustomTextCLIP layout ("text." prefix), text tower only, as safetensors
    text_keys = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_proj")
    state = {
        f"text.{k}": v.contiguous() for k, v in clip.state_dict().items() if k.startswith(text_keys)
    }
    path = tmp_path / "text_tower.safetensors"
    save_file(state, str(path))
    enc = OpenCLIPTextEncoder(arch=str(cfg_path), checkpoint=str(path), max_length=20)
    tokens = open_clip.tokenize(CAPTIONS)
    with torch.no_grad():
        want = manual_token_features(clip, tokens, LAYERS)[:, :20]
    torch.testing.assert_close(enc(CAPTIONS)[0], want, atol=1e-5, rtol=1e-5)


def test_checkpoint_of_wrong_arch_is_rejected(tiny_clip_files, tmp_path: Path) -> None:
    cfg_path, ckpt_path, _ = tiny_clip_files
    wider = json.loads(cfg_path.read_text())
    wider["text_cfg"]["width"] = 64
    wider_path = tmp_path / "wider.json"
    wider_path.write_text(json.dumps(wider))
    with pytest.raises(ValueError, match="does not match arch"):
        OpenCLIPTextEncoder(arch=str(wider_path), checkpoint=str(ckpt_path))
    with pytest.raises(ValueError, match="not a known open_clip architecture"):
        OpenCLIPTextEncoder(arch="No-Such-Arch", checkpoint=str(ckpt_path))
    # a checkpoint without the text tower (here: only the visual tower)
    visual_only = tmp_path / "visual.bin"
    full = torch.load(ckpt_path, weights_only=True)
    torch.save({k: v for k, v in full.items() if k.startswith("visual.")}, visual_only)
    with pytest.raises(ValueError, match="lacks text-tower weights"):
        OpenCLIPTextEncoder(arch=str(cfg_path), checkpoint=str(visual_only))


def test_missing_checkpoint_names_path_and_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "open_clip_pytorch_model.bin"
    with pytest.raises(FileNotFoundError) as info:
        OpenCLIPTextEncoder(arch="ViT-H-14", checkpoint=str(missing))
    message = str(info.value)
    assert str(missing) in message and "laion2b_s32b_b79k" in message and "`checkpoint`" in message


# ----------------------------------------------------------------------------- random init


def test_random_init_deterministic_rng_untouched_and_warns() -> None:
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    with pytest.warns(RandomTextTowerWarning, match="RANDOMLY INITIALISED"):
        a = OpenCLIPTextEncoder(random_width=WIDTH, random_layers=2, random_heads=HEADS, seed=7)
    assert torch.equal(torch.rand(3), expected_next)  # global RNG stream not advanced
    b = make_encoder(random_layers=2, seed=7)
    c = make_encoder(random_layers=2, seed=8)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.text.token_embedding.weight, c.text.token_embedding.weight)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="layer"):
        make_encoder(layer="middle")
    with pytest.raises(ValueError, match="random_heads"):
        make_encoder(random_width=30, random_heads=4)
    with pytest.raises(ValueError, match="penultimate"):
        make_encoder(random_layers=1, layer="penultimate")
    with pytest.raises(TypeError, match="list of str"):
        make_encoder()("a single caption")


# --------------------------------------------------------------------------- frozen and cached


def test_frozen_eval_and_no_graph(encoder: OpenCLIPTextEncoder) -> None:
    assert not any(p.requires_grad for p in encoder.parameters())
    parent = nn.ModuleDict({"text": encoder, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training and not any(m.training for m in encoder.modules())
    with torch.enable_grad():
        context, mask = encoder(["a blue square moving up"])
    assert context.grad_fn is None and not context.requires_grad and mask.grad_fn is None


def test_cache_hits_and_returns_equal_values() -> None:
    enc = make_encoder(cache_size=3)
    batch_sizes: list[int] = []
    enc.text.transformer.register_forward_hook(
        lambda module, args, out: batch_sizes.append(args[0].shape[0])  # encoded batch size
    )

    first, mask1 = enc(["a", "b", "a", "c"])
    assert batch_sizes == [3]  # duplicates encoded once
    first[:] = 0.0  # callers own their output: the cache must not be affected
    again, mask2 = enc(["c", "a", "b"])
    assert batch_sizes == [3]  # all hits
    uncached = make_encoder(cache_size=0)(["c", "a", "b"])[0]
    torch.testing.assert_close(again, uncached, atol=0, rtol=0)
    assert torch.equal(mask2, mask1[[3, 0, 1]])

    enc(["d"])  # evicts the least recently used ("c")
    assert batch_sizes == [3, 1]
    enc(["a", "b", "d"])
    assert batch_sizes == [3, 1]
    enc(["c"])
    assert batch_sizes == [3, 1, 1]


def test_cache_invalidated_on_dtype_change_and_state_dict_load() -> None:
    enc = make_encoder(seed=1)
    before, _ = enc(CAPTIONS)
    enc.to(torch.float64)
    as_double, _ = enc(CAPTIONS)
    assert as_double.dtype == torch.float64
    torch.testing.assert_close(as_double.float(), before, atol=1e-5, rtol=1e-5)
    enc.to(torch.float32)
    enc(CAPTIONS)  # fill the cache with the old weights' features

    other = make_encoder(seed=2)
    enc.load_state_dict(other.state_dict())
    torch.testing.assert_close(enc(CAPTIONS)[0], other(CAPTIONS)[0], atol=0, rtol=0)
    assert (enc(CAPTIONS)[0] - before).abs().max() > 1e-2


def test_state_dict_round_trip_through_file(tmp_path: Path, encoder: OpenCLIPTextEncoder) -> None:
    path = tmp_path / "encoder.pt"
    torch.save(encoder.state_dict(), path)
    fresh = make_encoder(seed=99)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(fresh(CAPTIONS)[0], encoder(CAPTIONS)[0], atol=0, rtol=0)


def test_cached_under_inference_mode_is_usable_for_backward() -> None:
    enc = make_encoder()
    with torch.inference_mode():
        enc(["a green circle"])  # e.g. Lightning's validation loop fills the cache
    context, _ = enc(["a green circle"])
    weight = torch.ones(WIDTH, requires_grad=True)
    (context * weight).sum().backward()  # saving an inference tensor for backward would raise
    assert weight.grad is not None


# ------------------------------------------------------------------------------ caption dropout


def test_caption_dropout() -> None:
    captions = [f"caption {i}" for i in range(2000)]
    assert caption_dropout(captions, 0.0) == captions
    assert caption_dropout(captions, 1.0) == [""] * len(captions)
    dropped = caption_dropout(captions, 0.3, torch.Generator().manual_seed(0))
    kept = [c for c in dropped if c]
    assert kept == [c for c in captions if c in set(kept)]  # survivors unchanged and in order
    rate = dropped.count("") / len(captions)
    assert abs(rate - 0.3) < 4 * (0.3 * 0.7 / len(captions)) ** 0.5  # within 4 standard errors
    again = caption_dropout(captions, 0.3, torch.Generator().manual_seed(0))
    other = caption_dropout(captions, 0.3, torch.Generator().manual_seed(1))
    assert again == dropped and other != dropped
    with pytest.raises(ValueError, match="p=1.5"):
        caption_dropout(captions, 1.5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_cache_and_dropout_generator() -> None:
    enc = make_encoder()
    on_cpu, _ = enc(CAPTIONS)  # cached on the CPU
    enc.to("cuda")
    context, mask = enc(CAPTIONS)
    assert context.device.type == "cuda" and mask.device.type == "cuda"
    torch.testing.assert_close(context.cpu(), on_cpu, atol=1e-4, rtol=1e-4)
    gpu_drop = caption_dropout(CAPTIONS * 50, 0.5, torch.Generator("cuda").manual_seed(0))
    assert 0 < gpu_drop.count("") < len(gpu_drop)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_tower_returns_float32_close_to_float32(dtype: str) -> None:
    full = make_encoder(seed=4)
    half = make_encoder(seed=4, dtype=dtype)
    assert all(p.dtype == getattr(torch, dtype) for p in half.parameters())
    context, mask = half(CAPTIONS)
    reference, ref_mask = full(CAPTIONS)
    assert context.dtype == torch.float32 and torch.equal(mask, ref_mask)
    err = (context - reference)[mask].norm() / reference[mask].norm()
    assert 0 < err < 3e-2  # reduced-precision rounding, not a different computation
    with pytest.raises(ValueError, match="dtype must be one of"):
        make_encoder(dtype="int8")
