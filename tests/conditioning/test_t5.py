"""latentvid/conditioning/t5.py against the diffusers pipelines' own prompt encoding (tiny random folders)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from latentvid.conditioning.t5 import T5TextEncoder, clean_prompt

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a red circle moving left", "  a  blue   square &amp; moving up ", ""]


def test_wan_encoding_equals_wan_pipeline(tiny_video):
    from diffusers import WanPipeline

    folder = tiny_video("wan")
    enc = T5TextEncoder(str(folder), max_length=24, clean=True)
    pipe = WanPipeline.from_pretrained(str(folder))
    want, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False, max_sequence_length=24)
    context, mask = enc(PROMPTS)
    assert context.shape == (3, 24, 16) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [6, 7, 1]  # words + </s>; "&amp;" unescaped to "&" (an unknown word)
    # WanPipeline zeroes the padding; the Wan denoiser does the same with this mask
    torch.testing.assert_close(context * mask[..., None], want, rtol=0, atol=1e-6)
    assert (context[~mask].abs().sum(-1) > 0).all()  # the encoder's own features are kept here


def test_options_and_cache(tiny_video):
    folder = tiny_video("wan")
    unmasked = T5TextEncoder(str(folder), max_length=10, use_attention_mask=False, mask_padding=False, cache_size=0)
    masked = T5TextEncoder(str(folder), max_length=10, cache_size=4)
    c0, m0 = unmasked(PROMPTS[:1])
    c1, m1 = masked(PROMPTS[:1])
    assert m0.all() and m1.sum() == 6
    assert (c0 - c1)[0, :6].abs().max() > 1e-4  # attending to the padding changes the real tokens' features
    again, _ = masked(PROMPTS[:1])
    torch.testing.assert_close(again, c1)
    assert clean_prompt("  a &amp;lt;b&amp;gt;\n c ") == "a <b> c"


def test_errors_name_the_folder(tiny_video, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "text_encoder")):
        T5TextEncoder(str(tmp_path))
    folder = tiny_video("wan")
    bad = tmp_path / "bad"
    shutil.copytree(folder / "text_encoder", bad / "text_encoder")
    shutil.copytree(folder / "tokenizer", bad / "tokenizer")
    cfg = json.loads((bad / "text_encoder" / "config.json").read_text())
    (bad / "text_encoder" / "config.json").write_text(json.dumps({**cfg, "model_type": "clip_text_model"}))
    with pytest.raises(ValueError, match=r"text_encoder/config\.json: model_type 'clip_text_model' is not a T5"):
        T5TextEncoder(str(bad))
    with pytest.raises(ValueError, match="dtype must be one of"):
        T5TextEncoder(str(folder), dtype="int8")


def test_cogvideox_encoding_equals_cogvideox_pipeline(tiny_video):
    from diffusers import CogVideoXPipeline

    folder = tiny_video("cogvideox")
    enc = T5TextEncoder(str(folder), max_length=16, use_attention_mask=False, mask_padding=False)
    pipe = CogVideoXPipeline.from_pretrained(str(folder))
    want, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False, max_sequence_length=16)
    context, mask = enc(PROMPTS)
    assert mask.all()  # CogVideoX attends to every token, padding included
    torch.testing.assert_close(context, want, rtol=0, atol=1e-6)


def test_ltx_encoding_equals_ltx_pipeline(tiny_video):
    from diffusers import LTXPipeline

    folder = tiny_video("ltx")
    enc = T5TextEncoder(str(folder), max_length=20, use_attention_mask=False)
    pipe = LTXPipeline.from_pretrained(str(folder))
    want, want_mask, _, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False, max_sequence_length=20)
    context, mask = enc(PROMPTS)
    torch.testing.assert_close(context, want, rtol=0, atol=1e-5)  # encoded without the mask ...
    assert torch.equal(mask, want_mask)  # ... which the LTX denoiser gets
