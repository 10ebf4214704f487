"""Frozen open_clip text tower giving per-token caption embeddings, and caption dropout for CFG.

The encoder returns ``context (B, L, D)`` and ``context_mask (B, L)`` (True = real token, from the
start-of-text token to the end-of-text token inclusive), the text-conditioning currency of the
U-Net's cross-attention.

Weights load only from a local file (``checkpoint``); nothing downloads. Without a checkpoint a
small randomly initialised tower of the same open_clip architecture is built, which is enough for
the offline demo and the tests, and a :class:`RandomTextTowerWarning` says so.

Architecture configs (``arch``) resolve in one of two ways:

* a name in open_clip's config registry (``open_clip.list_models()``, e.g. ``"ViT-H-14"``, plus any
  config a caller registered with ``open_clip.add_model_config``);
* a path to a model-config JSON file: either open_clip's own layout
  (``{"embed_dim": ..., "vision_cfg": {...}, "text_cfg": {...}}``) or a Hugging Face
  ``open_clip_config.json`` (the same under a ``"model_cfg"`` key). Only ``text_cfg`` is read.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.factory import load_state_dict as _open_clip_load_state_dict
from open_clip.model import CLIPTextCfg, _build_text_tower
from torch import Tensor, nn

from latentvid.conditioning.caption_cache import CaptionCache

__all__ = ["OpenCLIPTextEncoder", "RandomTextTowerWarning", "caption_dropout", "token_mask"]

CLIP_VOCAB_SIZE = 49408  # open_clip's bundled BPE vocabulary (incl. SOT / EOT)
CLIP_CONTEXT_LENGTH = 77  # context length of every open_clip CLIP text tower
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LAYERS = ("last", "penultimate")
# Parameter names (relative to the text tower) that per-token features need; the text projection,
# logit scale and the whole visual tower are dropped.
_TEXT_TOWER_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.")
_CONFIG_HINT = (
    "the `checkpoint` init arg of latentvid.conditioning.OpenCLIPTextEncoder in your config"
)


class RandomTextTowerWarning(UserWarning):
    """Emitted when the text tower is randomly initialised (no ``checkpoint`` given)."""


def caption_dropout(
    captions: Sequence[str], p: float, generator: torch.Generator | None = None
) -> list[str]:
    """Replace each caption by ``""`` independently with probability ``p``.

    Used during training for classifier-free guidance (the empty caption is the unconditional
    input). Pure: the input list is not modified.

    Args:
        captions: ``B`` captions.
        p: drop probability in ``[0, 1]``.
        generator: random source for reproducible draws, on any device (the global CPU RNG when
            None).

    Returns:
        ``B`` captions, some replaced by ``""``.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"caption_dropout: p must lie in [0, 1], got p={p!r}")
    device = generator.device if generator is not None else None
    draws = torch.rand(len(captions), generator=generator, device=device)  # (B,) in [0, 1)
    # draws < 0 never holds (p = 0 keeps all); draws < 1 always holds (p = 1 drops all)
    drops = (draws < p).tolist()  # one host transfer when the generator lives on a GPU
    return ["" if drop else caption for caption, drop in zip(captions, drops)]


def token_mask(tokens: Tensor, eot_token_id: int) -> Tensor:
    """Mask of real tokens: positions from the start up to the first end-of-text token inclusive.

    The mask is positional rather than ``tokens != pad_id`` because open_clip pads with id 0,
    which is also a genuine BPE token.

    Args:
        tokens: ``(B, L)`` int token ids, each row holding one end-of-text token.
        eot_token_id: id of the end-of-text token.

    Returns:
        ``(B, L)`` bool, True for SOT..EOT.
    """
    is_eot = tokens == eot_token_id  # (B, L)
    if not bool(is_eot.any(dim=-1).all()):
        raise ValueError(
            f"token_mask: every row of tokens needs an end-of-text token (id {eot_token_id})"
        )
    eot_pos = is_eot.int().argmax(dim=-1)  # (B,) first EOT position
    positions = torch.arange(tokens.shape[-1], device=tokens.device)  # (L,)
    return positions[None, :] <= eot_pos[:, None]  # (B, L)


def resolve_model_config(arch: str) -> dict[str, Any]:
    """Return the open_clip model config (``embed_dim``, ``text_cfg``, ...) for ``arch``.

    Args:
        arch: an open_clip registry name (``open_clip.list_models()``) or a path to a model-config
            JSON file (open_clip layout, or a Hugging Face ``open_clip_config.json``).
    """
    if arch.startswith("hf-hub:"):
        raise ValueError(
            f"arch={arch!r}: 'hf-hub:' names would download; save the repo's open_clip_config.json "
            "locally and pass its path as arch"
        )
    if arch.endswith(".json"):
        path = Path(arch).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"arch: open_clip model-config JSON not found: '{path}'")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"arch: '{path}' is not valid JSON: {err}") from err
        cfg = cfg.get("model_cfg", cfg) if isinstance(cfg, dict) else cfg
        if not isinstance(cfg, dict) or not isinstance(cfg.get("text_cfg"), dict):
            raise ValueError(f"arch: model config '{path}' has no 'text_cfg' object")
        return cfg
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(
            f"arch={arch!r} is not a known open_clip architecture: use a name from "
            "open_clip.list_models() (e.g. 'ViT-H-14') or a path to a model-config JSON"
        )
    return cfg


def text_tower_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Select the text-tower tensors needed for per-token features from an open_clip state dict.

    Accepts a full CLIP state dict (text keys at top level next to ``visual.*``), a CustomTextCLIP
    one (text keys under ``text.``) or a text-only one. Returns keys relative to the text tower
    (``token_embedding.weight``, ``positional_embedding``, ``transformer.*``, ``ln_final.*``).
    """
    has_text_prefix = any(key.startswith("text.") for key in state_dict)
    selected = {}
    for key, value in state_dict.items():
        if has_text_prefix:
            if not key.startswith("text."):
                continue
            key = key[len("text."):]
        if key.startswith(_TEXT_TOWER_PREFIXES):
            selected[key] = value
    return selected


def _download_hint(arch: str) -> str:
    """Say which open_clip weights to fetch for ``arch`` (from open_clip's offline metadata)."""
    tags = open_clip.list_pretrained_tags_by_model(arch)  # [] for an arch given as a JSON path
    if not tags:
        return (
            f"Download open_clip weights matching arch {arch!r} "
            "(open_clip_pytorch_model.bin or open_clip_model.safetensors)"
        )
    tag = "laion2b_s32b_b79k" if "laion2b_s32b_b79k" in tags else tags[0]
    repo = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "").rstrip("/")
    where = f" from the Hugging Face repo {repo}" if repo else ""
    return (
        f"Download the open_clip {arch} weights with pretrained tag {tag!r} "
        f"(file open_clip_pytorch_model.bin or open_clip_model.safetensors{where})"
    )


@lru_cache(maxsize=8)
def _tokenizer(context_length: int) -> open_clip.SimpleTokenizer:
    # The BPE vocabulary ships inside the open_clip package, so this works offline; shared because
    # building the merge table costs a noticeable fraction of a second per instance.
    return open_clip.SimpleTokenizer(context_length=context_length)


class OpenCLIPTextEncoder(nn.Module):
    """Frozen open_clip text transformer returning per-token caption embeddings.

    ``forward(captions)`` tokenizes with open_clip's BPE tokenizer (SOT, tokens, EOT, zero padding
    to ``max_length``), runs the causal text transformer and returns the per-token features after
    the final LayerNorm, with the real-token mask. The module is frozen: no parameter requires
    grad, it stays in eval mode whatever the parent does, and outputs never carry a graph.
    Embeddings of recently seen captions are kept in an LRU cache (cleared when the module moves
    device or dtype, or loads a state dict).

    Args:
        arch: open_clip architecture of ``checkpoint``: a registry name (e.g. ``"ViT-H-14"``, the
            tower of Stable Diffusion 2.x) or a path to a model-config JSON. Used only with a
            checkpoint.
        checkpoint: local path to open_clip weights (a full CLIP state dict such as
            ``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors``, or a text-tower-only
            state dict). None builds a small random tower (demo and tests only) and warns.
        layer: ``"last"`` (final block output, then ``ln_final``) or ``"penultimate"`` (the
            next-to-last block output, then ``ln_final``, as Stable Diffusion 2.x conditions; the
            unused last block is not kept).
        max_length: context length L in tokens, SOT and EOT included; longer captions are
            truncated. At most the checkpoint's context length (77 for CLIP). The features of real
            tokens do not depend on it (causal attention), so a short L (e.g. 16 for the shapes
            captions) only saves cross-attention work.
        random_width: embedding width D of the random tower (``checkpoint=None``).
        random_layers: number of transformer blocks of the random tower.
        random_heads: attention heads of the random tower (must divide ``random_width``).
        seed: seed of the random tower's initialisation (the global RNG is left untouched).
        cache_size: how many captions' embeddings the LRU cache keeps; 0 disables it.
        dtype: precision the frozen tower is stored and run in, ``"float32"`` (default),
            ``"bfloat16"`` or ``"float16"``. Reduced precision halves its memory and time on a
            GPU (a ViT-H tower is 354 M parameters); ``forward`` then still returns float32
            features, so the U-Net sees the same input type either way.
    """

    def __init__(
        self,
        arch: str = "ViT-H-14",
        checkpoint: str | None = None,
        layer: str = "last",
        max_length: int = 77,
        random_width: int = 128,
        random_layers: int = 2,
        random_heads: int = 4,
        seed: int = 0,
        cache_size: int = 1024,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got dtype={dtype!r}")
        if layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, got layer={layer!r}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (SOT and EOT), got max_length={max_length}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got cache_size={cache_size}")
        self.arch = arch
        self.checkpoint = checkpoint
        self.layer = layer
        self.max_length = max_length
        self.cache_size = cache_size
        self.is_random = checkpoint is None

        if checkpoint is None:
            self.text = self._random_tower(random_width, random_layers, random_heads, seed)
            warnings.warn(
                "OpenCLIPTextEncoder: no checkpoint given, so the text tower is RANDOMLY "
                f"INITIALISED (width={random_width}, layers={random_layers}, seed={seed}). That is "
                "fine for the offline demo and tests, not for real training. "
                f"{_download_hint('ViT-H-14')}, then set {_CONFIG_HINT} to the local file "
                "(and `arch` to its architecture).",
                RandomTextTowerWarning,
                stacklevel=2,
            )
        else:
            self.text = self._pretrained_tower(arch, checkpoint)
        self.text.requires_grad_(False)
        self.text.eval()
        self.dtype_name = dtype
        self.text.to(DTYPES[dtype])

        self.tokenizer = _tokenizer(max_length)
        self._cache = CaptionCache(cache_size)

    # ----------------------------------------------------------------------------- construction

    def _drop_unused_block(self, tower: nn.Module) -> None:
        """The penultimate option never runs the last block, so it is not kept."""
        blocks = tower.transformer.resblocks
        if self.layer == "penultimate":
            if len(blocks) < 2:
                raise ValueError(
                    f"layer='penultimate' needs >= 2 transformer blocks, got {len(blocks)}"
                )
            tower.transformer.resblocks = blocks[:-1]

    def _random_tower(self, width: int, layers: int, heads: int, seed: int) -> nn.Module:
        if width <= 0 or layers <= 0 or heads <= 0 or width % heads:
            raise ValueError(
                "random tower needs positive sizes with random_heads dividing random_width, got "
                f"random_width={width}, random_layers={layers}, random_heads={heads}"
            )
        # Initialise at CLIP's context length and keep the first max_length positions, so the
        # weights (and, causal attention, the real-token features) do not depend on max_length.
        init_context = max(CLIP_CONTEXT_LENGTH, self.max_length)
        cfg = CLIPTextCfg(
            context_length=init_context, vocab_size=CLIP_VOCAB_SIZE, width=width, layers=layers,
            heads=heads, proj_type="none",
        )
        # open_clip initialises through the global RNG; fork it so the caller's stream is untouched
        # and two encoders with the same seed are identical.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tower = _build_text_tower(embed_dim=width, text_cfg=cfg)
        positions = tower.positional_embedding[: self.max_length].clone()  # (max_length, D)
        tower.positional_embedding = nn.Parameter(positions)
        tower.num_pos = tower.context_length = self.max_length
        tower.attn_mask = tower.build_causal_mask()  # (max_length, max_length)
        self._drop_unused_block(tower)
        return tower

    def _pretrained_tower(self, arch: str, checkpoint: str) -> nn.Module:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"open_clip text-tower checkpoint not found: '{path}'. {_download_hint(arch)} to a "
                f"local path and set {_CONFIG_HINT} to it (with `arch` naming its architecture), "
                "or set checkpoint to null for a random demo-only text tower."
            )
        model_cfg = resolve_model_config(arch)
        text_cfg = model_cfg["text_cfg"]
        if text_cfg.get("hf_model_name") or text_cfg.get("embed_cls"):
            raise ValueError(
                f"arch={arch!r}: only open_clip's own causal TextTransformer is supported (this "
                "config uses a Hugging Face text model or a CoCa class token)"
            )
        ckpt_context = int(text_cfg.get("context_length", CLIP_CONTEXT_LENGTH))
        if self.max_length > ckpt_context:
            raise ValueError(
                f"max_length={self.max_length} exceeds the context length {ckpt_context} "
                f"of arch={arch!r}"
            )

        # Build on the meta device and assign the loaded tensors: no throw-away random init of a
        # ~350M-parameter tower, no second copy in memory.
        # our context length (the checkpoint's positions are sliced below); no pooled projection
        tower_cfg = CLIPTextCfg(
            **{**text_cfg, "context_length": self.max_length, "proj_type": "none"}
        )
        with torch.device("meta"):
            tower = _build_text_tower(
                embed_dim=int(model_cfg.get("embed_dim", text_cfg.get("width", 512))),
                text_cfg=tower_cfg,
                quick_gelu=bool(model_cfg.get("quick_gelu", False)),
            )
        self._drop_unused_block(tower)

        try:
            raw = _open_clip_load_state_dict(str(path), device="cpu")
        except Exception as err:
            raise ValueError(f"could not read open_clip checkpoint '{path}': {err}") from err
        state = text_tower_state_dict(raw)
        if "positional_embedding" in state:
            # causal attention: the first max_length positions do not depend on later ones
            state["positional_embedding"] = state["positional_embedding"][: self.max_length]
        expected = tower.state_dict()
        state = {k: v.to(expected[k].dtype) for k, v in state.items() if k in expected}
        missing = sorted(set(expected) - set(state))
        if missing:
            more = " ..." if len(missing) > 5 else ""
            raise ValueError(
                f"checkpoint '{path}' lacks text-tower weights for arch={arch!r}: missing "
                f"{missing[:5]}{more} (is it an open_clip {arch} checkpoint?)"
            )
        try:
            tower.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as err:
            raise ValueError(f"checkpoint '{path}' does not match arch={arch!r}: {err}") from err
        # the causal mask is a non-persistent buffer, still on the meta device
        tower.attn_mask = tower.build_causal_mask()
        return tower

    # ------------------------------------------------------------------------------ frozen module

    @property
    def output_dim(self) -> int:
        """Embedding width D of the per-token features."""
        return int(self.text.width)

    def train(self, mode: bool = True) -> OpenCLIPTextEncoder:
        """Stay in eval mode whatever the parent asks: the tower is a frozen feature extractor."""
        return super().train(False)

    def _apply(self, fn: Any, recurse: bool = True) -> OpenCLIPTextEncoder:
        # .to() / .cuda() / .half(): cached embeddings would be on the old device or dtype
        self._cache.clear()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        # new weights make every cached embedding stale
        self._cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        source = "random" if self.is_random else f"checkpoint={self.checkpoint!r}"
        return f"arch={self.arch!r}, {source}, layer={self.layer!r}, max_length={self.max_length}"

    # ---------------------------------------------------------------------------------- encoding

    def tokenize(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Tokenize captions with open_clip's BPE tokenizer.

        Args:
            captions: ``B`` strings.

        Returns:
            tokens ``(B, L)`` long on CPU (SOT, BPE ids, EOT, zero padding; L = max_length) and the
            real-token mask ``(B, L)`` bool.
        """
        tokens = self.tokenizer(list(captions))  # (B, L)
        return tokens, token_mask(tokens, self.tokenizer.eot_token_id)

    @torch.no_grad()
    def encode_tokens(self, tokens: Tensor) -> Tensor:
        """Per-token features of token ids, without the cache.

        Args:
            tokens: ``(B, L)`` long token ids, ``L <= max_length``.

        Returns:
            ``(B, L, D)`` features in the module's dtype and device, after ``ln_final``.
        """
        seq_len = tokens.shape[1]
        if seq_len > self.max_length:
            raise ValueError(f"tokens have length {seq_len} > max_length={self.max_length}")
        tower = self.text
        tokens = tokens.to(tower.token_embedding.weight.device)
        x = tower.token_embedding(tokens) + tower.positional_embedding[:seq_len]  # (B, L, D)
        x = tower.transformer(x, attn_mask=tower.attn_mask[:seq_len, :seq_len])  # (B, L, D)
        return tower.ln_final(x)

    # no_grad rather than inference_mode: outputs may be saved for backward by the parent's
    # cross-attention, which inference tensors forbid.
    @torch.no_grad()
    def forward(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Encode captions (cached per caption).

        Args:
            captions: ``B`` strings (``""`` is the unconditional caption: SOT + EOT).

        Returns:
            context ``(B, L, D)`` float features and context_mask ``(B, L)`` bool (True from SOT to
            EOT inclusive), with L = max_length and D = output_dim, on the module's device.
        """
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError(
                f"captions must be a list of str, got {type(captions).__name__}: {captions!r:.80}"
            )
        captions = list(captions)
        if not captions:
            ref = self.text.token_embedding.weight
            empty_mask = torch.zeros(0, self.max_length, dtype=torch.bool, device=ref.device)
            return ref.new_zeros(0, self.max_length, self.output_dim), empty_mask
        def encode(missing: list[str]) -> tuple[Tensor, Tensor]:
            tokens, mask = self.tokenize(missing)  # (N, L) each
            return self.encode_tokens(tokens), mask  # (N, L, D), (N, L)

        context, context_mask = self._cache(captions, encode)  # (B, L, D), (B, L)
        if self.dtype_name != "float32":
            context = context.float()  # a reduced-precision tower still hands over float32 features
        return context, context_mask
