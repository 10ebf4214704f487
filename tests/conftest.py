"""Fixtures shared across test folders (pytest runs with --import-mode=importlib: no test imports another)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def load_script() -> Callable[[str, str], types.ModuleType]:
    """``load_script("tools/evaluate.py", name)``: a repository script (tools/ and benchmarks/ are not
    packages) executed as a fresh module, registered in sys.modules under ``name`` (dataclasses look
    their module up there)."""

    def load(relpath: str, name: str) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(name, REPO / relpath)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions on a shared 2-core machine run many times faster on one thread; modules opt
    in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---- tiny random Stable Diffusion folders (diffusers layout), for the SD fine-tuning path ----------

# U-Net configs shaped like SD 1.x (conv projections, one head count) and SD 2.x (linear projections,
# per-block head counts, all-but-last blocks with attention, more transformer layers), at toy sizes.
TINY_UNETS = {
    "sd1": dict(
        block_out_channels=(32, 64), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
        norm_num_groups=8, sample_size=8,
    ),
    "sd2": dict(
        block_out_channels=(32, 32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=48,
        attention_head_dim=[2, 4, 4], use_linear_projection=True, transformer_layers_per_block=[1, 2, 1],
        norm_num_groups=8, sample_size=8,
    ),
}
TINY_TEXT = {  # SD 1.x: OpenAI CLIP (quick_gelu, pads with EOT); SD 2.x: OpenCLIP-H converted (gelu, pads with "!")
    "sd1": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, hidden_act="quick_gelu",
                pad="<|endoftext|>"),
    "sd2": dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, hidden_act="gelu", pad="!"),
}
PREDICTION = {"sd1": "epsilon", "sd2": "v_prediction"}
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
BPE_MERGES = ["r e", "re d</w>", "c i", "ci r", "cir c", "circ l", "circl e</w>", "m o", "mo v", "mov i", "movi n",
              "movin g</w>", "l e", "le f", "lef t</w>", "u p</w>"]


def _byte_alphabet() -> list[str]:
    """CLIP's byte-to-unicode alphabet: 256 printable characters standing for the 256 byte values."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_clip_tokenizer(folder: Path, pad_token: str, max_length: int = 77) -> int:
    """A tiny CLIP BPE tokenizer in the SD folder layout (vocab.json, merges.txt, configs); returns the vocab size."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet), *("".join(m.split()) for m in BPE_MERGES),
                  "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(BPE_MERGES) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "do_lower_case": True, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return len(vocab)


def build_tiny_sd(root: Path, kind: str, seed: int = 0) -> Path:
    """Write a random tiny Stable Diffusion folder of ``kind`` ("sd1" / "sd2") to ``root``.

    unet/ (UNet2DConditionModel), scheduler/ (PNDMScheduler, SD's betas), text_encoder/ (CLIPTextModel),
    tokenizer/, vae/ (AutoencoderKL, spatial factor 2) and model_index.json, as diffusers saves them.
    """
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG stream as it was
        torch.manual_seed(seed)
        return _build_tiny_sd(root, kind)


def _build_tiny_sd(root: Path, kind: str) -> Path:
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    UNet2DConditionModel(**TINY_UNETS[kind]).save_pretrained(root / "unet")
    PNDMScheduler(**SD_SCHEDULE, prediction_type=PREDICTION[kind], skip_prk_steps=True,
                  steps_offset=1).save_pretrained(root / "scheduler")
    if kind == "sd1":  # like Stable Diffusion 1.5's file, which predates the key (diffusers assumes epsilon)
        sched = root / "scheduler" / "scheduler_config.json"
        sched.write_text(json.dumps({k: v for k, v in json.loads(sched.read_text()).items() if k != "prediction_type"}))
    text = dict(TINY_TEXT[kind])
    pad = text.pop("pad")
    vocab_size = write_clip_tokenizer(root / "tokenizer", pad)
    cfg = CLIPTextConfig(vocab_size=vocab_size, intermediate_size=2 * text["hidden_size"], max_position_embeddings=77,
                         bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=1, **text)
    CLIPTextModel(cfg).eval().save_pretrained(root / "text_encoder")
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  sample_size=16).save_pretrained(root / "vae")
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "vae": ["diffusers", "AutoencoderKL"],
             "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
    (root / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Callable[..., Path]:
    """Factory ``tiny_sd(kind="sd1", seed=0) -> Path`` of a cached tiny random SD folder (treat as read-only)."""
    made: dict[tuple[str, int], Path] = {}

    def make(kind: str = "sd1", seed: int = 0) -> Path:
        if (kind, seed) not in made:
            made[kind, seed] = build_tiny_sd(tmp_path_factory.mktemp(f"{kind}_{seed}"), kind, seed)
        return made[kind, seed]

    return make


# ---- tiny random diffusers video pipeline folders (Wan, CogVideoX, LTX-Video) ---------------------

@pytest.fixture(scope="session")
def tiny_video(tmp_path_factory, load_script) -> Callable[..., Path]:
    """Factory ``tiny_video(kind="wan", seed=0) -> Path`` of a cached tiny random pipeline folder
    (tests/tiny_video_folders.py; treat as read-only)."""
    builders = load_script("tests/tiny_video_folders.py", "tiny_video_folders").BUILDERS
    made: dict[tuple[str, int], Path] = {}

    def make(kind: str = "wan", seed: int = 0) -> Path:
        if (kind, seed) not in made:
            made[kind, seed] = builders[kind](tmp_path_factory.mktemp(f"{kind}_{seed}"), seed)
        return made[kind, seed]

    return make
