"""Tests of latentvid/conditioning/hf_clip.py against diffusers' Stable Diffusion pipeline's prompt encoding."""

from __future__ import annotations

import shutil

import pytest
import torch

from latentvid.conditioning import HFCLIPTextEncoder

CAPTIONS = ["a red circle moving left", "", "A RED circle, moving UP!", "word " * 100]  # the last one is truncated


@pytest.fixture(scope="module")
def pipelines(tiny_sd):
    """diffusers' StableDiffusionPipeline over each tiny SD folder: the reference prompt encoder."""
    from diffusers import StableDiffusionPipeline

    return {kind: StableDiffusionPipeline.from_pretrained(str(tiny_sd(kind)), safety_checker=None,
                                                          feature_extractor=None, requires_safety_checker=False)
            for kind in ("sd1", "sd2")}


@pytest.mark.parametrize("layer", ["last", "penultimate"])
@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_embeddings_equal_the_sd_pipelines(tiny_sd, pipelines, kind, layer):
    encoder = HFCLIPTextEncoder(str(tiny_sd(kind)), layer=layer)
    context, mask = encoder(CAPTIONS)
    pipe = pipelines[kind]
    if layer == "penultimate":
        # the penultimate layer + final norm is the last output of the tower without its final block,
        # which is how SD 2.x's converted text encoder is stored
        from transformers import CLIPTextModel

        layers = pipe.text_encoder.config.num_hidden_layers
        shorter = CLIPTextModel.from_pretrained(str(tiny_sd(kind) / "text_encoder"), num_hidden_layers=layers - 1)
        pipe = type(pipe)(**{**pipe.components, "text_encoder": shorter.eval()}, requires_safety_checker=False)
        assert not torch.allclose(context, HFCLIPTextEncoder(str(tiny_sd(kind)))(CAPTIONS)[0], atol=1e-3)
    ref, _ = pipe.encode_prompt(CAPTIONS, "cpu", 1, False)
    assert context.shape == ref.shape == (4, 77, encoder.output_dim)
    torch.testing.assert_close(context, ref, atol=1e-6, rtol=1e-6)
    assert mask.dtype == torch.bool and bool(mask.all()), "SD attends to all 77 positions"
    assert not torch.allclose(context[0], context[2]), "captions differ"


def test_tokenizer_layouts_of_sd1_and_sd2(tiny_sd):
    sd1, sd2 = (HFCLIPTextEncoder(str(tiny_sd(k)), mask_padding=True) for k in ("sd1", "sd2"))
    for enc, pad in ((sd1, "<|endoftext|>"), (sd2, "!")):
        tokens, real = enc.tokenize(["a red circle"])
        names = enc.tokenizer.convert_ids_to_tokens(tokens[0].tolist())
        assert names[:5] == ["<|startoftext|>", "a</w>", "red</w>", "circle</w>", "<|endoftext|>"]
        assert set(names[5:]) == {pad}
        assert real[0].tolist() == [True] * 5 + [False] * 72
        _, mask = enc(["a red circle", ""])
        assert mask.sum(dim=1).tolist() == [5, 2]  # SOT..EOT only


def test_frozen_cached_and_layer_independent_of_the_cache(tiny_sd):
    enc = HFCLIPTextEncoder(str(tiny_sd("sd1")), cache_size=2)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not enc.model.training
    a, _ = enc(["x y", "a red circle"])
    a[:] = 0.0  # callers may write into results: the cache must not change
    b, _ = enc(["a red circle", "x y", "a red circle"])
    uncached = HFCLIPTextEncoder(str(tiny_sd("sd1")), cache_size=0)
    c, _ = uncached(["a red circle", "x y", "a red circle"])
    torch.testing.assert_close(b, c)
    assert len(enc._cache) == 2 and not uncached._cache
    enc.to(torch.float64)
    assert not enc._cache and enc(["x y"])[0].dtype == torch.float64
    empty, empty_mask = enc([])
    assert empty.shape == (0, 77, 32) and empty_mask.shape == (0, 77)
    with pytest.raises(TypeError, match="list of str"):
        enc("a red circle")


def test_missing_files_and_bad_options_are_named(tiny_sd, tmp_path):
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        HFCLIPTextEncoder(str(tmp_path))
    root = tmp_path / "sd"
    shutil.copytree(tiny_sd("sd1"), root)
    shutil.rmtree(root / "tokenizer")
    with pytest.raises(FileNotFoundError, match="tokenizer_config.json"):
        HFCLIPTextEncoder(str(root))
    with pytest.raises(ValueError, match="layer"):
        HFCLIPTextEncoder(str(tiny_sd("sd1")), layer="pooled")
    with pytest.raises(ValueError, match="max_length"):
        HFCLIPTextEncoder(str(tiny_sd("sd1")), max_length=100)
    short = HFCLIPTextEncoder(str(tiny_sd("sd1")), max_length=8)
    assert short(["a red circle moving left"])[0].shape == (1, 8, 32)
