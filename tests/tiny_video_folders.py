"""Tiny random diffusers video pipeline folders (Wan, CogVideoX, LTX-Video), written with the pipelines'
own ``save_pretrained`` so that the layout is diffusers' (model_index.json, transformer/, vae/,
text_encoder/, tokenizer/, scheduler/). Built offline: a word-level tokenizer over the shapes grammar,
T5 / UMT5 encoders of two layers, transformers of two blocks.

Loaded by the ``tiny_video`` fixture of tests/conftest.py (tests/ is not a package).
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("a an the red green blue yellow white circle square triangle moving left right up down "
         "slowly fast video of").split()
TEXT_DIM = 16  # d_model of the tiny T5 / UMT5 encoders


def write_t5_tokenizer(folder: Path, max_length: int) -> int:
    """A word-level tokenizer with T5's special tokens (<pad> 0, </s> 1, <unk> 2), appending </s> to
    every caption as T5's does; saved as tokenizer.json + tokenizer_config.json. Returns the vocab size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_length)
    fast.save_pretrained(str(folder))
    return len(vocab)


def t5_encoder(kind: str, vocab_size: int):
    """A 2-layer random T5 (``"t5"``) or UMT5 (``"umt5"``) encoder of width TEXT_DIM."""
    import transformers

    cfg = dict(vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0,
               eos_token_id=1, decoder_start_token_id=0)
    if kind == "umt5":
        return transformers.UMT5EncoderModel(transformers.UMT5Config(**cfg)).eval()
    return transformers.T5EncoderModel(transformers.T5Config(**cfg)).eval()


def build_tiny_wan(root: Path, seed: int = 0, shift: float = 3.0, two_experts: bool = False, ti2v: bool = False) -> Path:
    """A tiny random Wan 2.1 T2V folder: WanTransformer3DModel (2 blocks, 2 heads x 8), AutoencoderKLWan
    (temporal factor 4, spatial factor 4, 4 latent channels), UMT5 encoder, FlowMatchEulerDiscreteScheduler.
    ``two_experts``: Wan 2.2 A14B's layout, a second (low-noise) transformer_2 and boundary_ratio 0.6.
    ``ti2v``: Wan 2.2 TI2V-5B's layout, a residual VAE over 2 x 2 pixel patches (temporal factor 2 here,
    spatial factor 8) and per-token timesteps in the pipeline (``expand_timesteps``)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import AutoTokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok_dir = root / "tokenizer"
        vocab = write_t5_tokenizer(tok_dir, max_length=512)
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
            text_dim=TEXT_DIM, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32)
        stats = dict(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 2.0])
        if ti2v:
            vae = AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=4, dim_mult=[1, 1, 1], num_res_blocks=1,
                                   temperal_downsample=[False, True], is_residual=True, patch_size=2, in_channels=12,
                                   out_channels=12, scale_factor_temporal=2, scale_factor_spatial=8, **stats)
        else:
            vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1], num_res_blocks=1,
                                   temperal_downsample=[True, True], scale_factor_temporal=4, scale_factor_spatial=4,
                                   **stats)
        experts = {"expand_timesteps": True} if ti2v else {}
        if two_experts:
            experts = dict(transformer_2=WanTransformer3DModel(**transformer.config).eval(), boundary_ratio=0.6)
        pipe = WanPipeline(tokenizer=AutoTokenizer.from_pretrained(str(tok_dir)), text_encoder=t5_encoder("umt5", vocab),
                           transformer=transformer.eval(), vae=vae.eval(),
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), **experts)
        pipe.save_pretrained(str(root))
    return root


COGVIDEOX_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", snr_shift_scale=3.0,
                         rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing",
                         clip_sample=False, set_alpha_to_one=True, steps_offset=0)


def build_tiny_cogvideox(root: Path, seed: int = 0, rope: bool = False, patch_size_t: int | None = None,
                         i2v: bool = False) -> Path:
    """A tiny random CogVideoX folder: CogVideoXTransformer3DModel (2 blocks; learned-size sincos positions
    and 16 text tokens like CogVideoX-2b, or 3D RoPE like CogVideoX-5b with ``rope``; CogVideoX 1.5's
    temporal patches with ``patch_size_t`` 2; with ``i2v`` an image-to-video one, twice the input channels,
    saved as a CogVideoXImageToVideoPipeline), AutoencoderKLCogVideoX (temporal factor 4, spatial factor 4,
    4 channels), T5 encoder, CogVideoXDDIMScheduler (v, SNR shift 3, zero terminal SNR, trailing)."""
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline,
                           CogVideoXPipeline, CogVideoXTransformer3DModel)
    from transformers import AutoTokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok_dir = root / "tokenizer"
        vocab = write_t5_tokenizer(tok_dir, max_length=226)
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16 if rope else 8, in_channels=8 if i2v else 4, out_channels=4,
            time_embed_dim=8, text_embed_dim=TEXT_DIM, num_layers=2, sample_width=8, sample_height=8,
            sample_frames=9, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=16,
            use_rotary_positional_embeddings=rope, patch_size_t=patch_size_t)
        vae = AutoencoderKLCogVideoX(block_out_channels=(8, 8, 16), down_block_types=("CogVideoXDownBlock3D",) * 3,
                                     up_block_types=("CogVideoXUpBlock3D",) * 3, latent_channels=4, layers_per_block=1,
                                     norm_num_groups=4, sample_height=32, sample_width=32, scaling_factor=0.7)
        pipeline = CogVideoXImageToVideoPipeline if i2v else CogVideoXPipeline
        pipe = pipeline(tokenizer=AutoTokenizer.from_pretrained(str(tok_dir)), text_encoder=t5_encoder("t5", vocab),
                        transformer=transformer.eval(), vae=vae.eval(),
                        scheduler=CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULE))
        pipe.save_pretrained(str(root))
    return root


LTX_SCHEDULE = dict(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
                    max_image_seq_len=4096, shift_terminal=0.1)  # LTX-Video 0.9's scheduler config


def build_tiny_ltx(root: Path, seed: int = 0) -> Path:
    """A tiny random LTX-Video folder: LTXVideoTransformer3DModel (2 blocks, 2 heads x 8), AutoencoderKLLTXVideo
    (temporal factor 4, spatial factor 4, 8 channels, random latents_mean / latents_std), T5 encoder,
    FlowMatchEulerDiscreteScheduler with LTX-Video's dynamic shifting and terminal shift."""
    from diffusers import (AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline,
                           LTXVideoTransformer3DModel)
    from transformers import AutoTokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok_dir = root / "tokenizer"
        vocab = write_t5_tokenizer(tok_dir, max_length=128)
        transformer = LTXVideoTransformer3DModel(
            in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
            cross_attention_dim=16, num_layers=2, caption_channels=TEXT_DIM)
        vae = AutoencoderKLLTXVideo(
            latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
            layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, False, False), decoder_spatio_temporal_scaling=(True, True, False, False),
            decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4, upsample_factor=(1,) * 4,
            timestep_conditioning=False, patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False)
        vae.latents_mean.copy_(torch.randn(8) * 0.2)
        vae.latents_std.copy_(torch.rand(8) + 0.5)
        pipe = LTXPipeline(tokenizer=AutoTokenizer.from_pretrained(str(tok_dir)), text_encoder=t5_encoder("t5", vocab),
                           transformer=transformer.eval(), vae=vae.eval(),
                           scheduler=FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULE))
        pipe.save_pretrained(str(root))
    return root


BUILDERS = {"wan": build_tiny_wan, "ltx": build_tiny_ltx,
            "wan22": lambda root, seed=0: build_tiny_wan(root, seed, two_experts=True),
            "wan22-5b": lambda root, seed=0: build_tiny_wan(root, seed, ti2v=True), "cogvideox": build_tiny_cogvideox,
            "cogvideox-rope": lambda root, seed=0: build_tiny_cogvideox(root, seed, rope=True),
            "cogvideox15": lambda root, seed=0: build_tiny_cogvideox(root, seed, rope=True, patch_size_t=2),
            "cogvideox-i2v": lambda root, seed=0: build_tiny_cogvideox(root, seed, rope=True, i2v=True)}
