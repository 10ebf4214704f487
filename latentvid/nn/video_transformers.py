"""Pretrained diffusers video transformers (Wan 2.1 / 2.2 T2V, CogVideoX, LTX-Video) as latentvid denoisers.

Each class is an adapter, like the diffusers VAEs: it loads the model from a local diffusers folder
(nothing downloads), maps latentvid's inputs (z, logSNR, text tokens, mask) to the model's own
(latent layout, timestep convention) and returns the model's raw prediction, which
:class:`~latentvid.models.latent_diffusion.LatentDiffusion` reads as its ``target``:

=============  ===============================  =========================  ====================  ========
model          process (schedule)               timestep from logSNR       prediction (target)   text
=============  ===============================  =========================  ====================  ========
Wan            rectified flow, sigma = t        1000 sigma                 eps - x0 (``flow``)   UMT5
CogVideoX      VP, its DDPM table (zero SNR     fractional index n in the  v (``v``)             T5
               at n = N-1, SNR shift)           table (:func:`timestep`)
LTX-Video      rectified flow, sigma = t        1000 sigma                 eps - x0 (``flow``)   T5
=============  ===============================  =========================  ====================  ========

with sigma = sigmoid(-logSNR / 2) on the flow (:func:`flow_timestep`). So the schedule owns the noise
levels (and SD3's shift), and every latentvid sampler, CFG and the training loss work unchanged.

Fine-tuning: the whole transformer (``lora_rank: null``), or LoRA adapters through peft
(``lora_rank``, ``lora_alpha``, ``lora_target_modules``, ``lora_dropout``) with the base frozen and
left out of checkpoints (:meth:`PretrainedVideoTransformer.frozen_state_keys`). :meth:`save_lora`
writes the adapters in the layout the diffusers pipelines load with ``pipe.load_lora_weights``,
and ``lora_weights`` loads such a file back. ``gradient_checkpointing`` recomputes each block in
backward; ``dtype: bfloat16`` holds the weights in bf16; :func:`fsdp_wrap_policy` wraps each
transformer block in its own FSDP unit.

Inputs the pretrained models have no use for: ``fps`` is ignored by Wan and CogVideoX (LTX-Video
scales its RoPE by the frame rate, so it gets the clip's); a ``frame_mask`` with padded frames is
refused (their attention sees every frame, so padding would change the valid frames' predictions:
train on full clips, ``image_ratio: 0``).

Wan 2.2 T2V-A14B's two experts (``transformer`` for high noise, ``transformer_2`` for low noise) are
one :class:`WanTransformer` that routes each sample by its timestep, as WanPipeline does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""The attention projections of every block (self- and cross-attention), as in diffusers' training scripts."""


# ---- the timestep conventions (pure functions) ---------------------------------------------------
def flow_sigma(logsnr: Tensor) -> Tensor:
    """logSNR (...) -> the flow's sigma = t = sigmoid(-logSNR / 2) (...) float64 (+-inf -> 0 / 1 exactly)."""
    return torch.sigmoid(-0.5 * logsnr.to(torch.float64))


def timesteps_per_token(timestep: Tensor, height: int, width: int) -> Tensor:
    """Per-frame timesteps (B, T) -> per token (B, T height width) for a transformer whose tokens run frames
    outermost, ``height`` x ``width`` patches a frame (Wan, LTX-Video with temporal patch 1)."""
    b, t = timestep.shape
    return timestep[:, :, None].expand(b, t, height * width).reshape(b, -1)


def flow_timestep(logsnr: Tensor, num_train_timesteps: int = 1000) -> Tensor:
    """logSNR (...) -> a flow-matching model's timestep N * sigma (...) float64 (Wan, LTX-Video: N = 1000)."""
    return num_train_timesteps * flow_sigma(logsnr)


def logsnr_from_flow_sigma(sigma: Tensor) -> Tensor:
    """The inverse of :func:`flow_sigma`: sigma (...) -> logSNR = 2 log((1 - sigma) / sigma) (...)."""
    s = sigma.to(torch.float64)
    return 2.0 * (torch.log1p(-s) - torch.log(s))


def flow_match_logsnrs(steps: int, shift: float = 1.0, num_train_timesteps: int = 1000) -> Tensor:
    """(steps + 1,) logSNRs of diffusers' ``FlowMatchEulerDiscreteScheduler(shift=shift)`` default grid.

    Its sigmas are ``steps`` values evenly spaced in the unshifted sigma from 1 down to the shifted
    training minimum, shifted by shift s / (1 + (shift - 1) s), then a final 0 (logSNR -inf ... +inf).
    Give it to a latentvid sampler to take exactly the diffusers pipelines' steps.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n = num_train_timesteps

    def shifted(s: Tensor) -> Tensor:
        return shift * s / (1.0 + (shift - 1.0) * s)

    sigma_min = float(shifted(torch.tensor(1.0 / n, dtype=torch.float64)))
    # set_timesteps goes through float32 numpy timesteps: round the same way so the grids agree
    sigmas = torch.linspace(n * 1.0, n * sigma_min, steps, dtype=torch.float64).float().double() / n
    sigmas = shifted(sigmas).float().double()
    lam = logsnr_from_flow_sigma(sigmas)
    return torch.cat([lam, torch.tensor([float("inf")], dtype=torch.float64)]).float()


# ---- FSDP -----------------------------------------------------------------------------------------
BLOCK_CLASSES = {
    "WanTransformer3DModel": "diffusers.models.transformers.transformer_wan.WanTransformerBlock",
    "CogVideoXTransformer3DModel": "diffusers.models.transformers.cogvideox_transformer_3d.CogVideoXBlock",
    "LTXVideoTransformer3DModel": "diffusers.models.transformers.transformer_ltx.LTXVideoTransformerBlock",
}
"""Each model's repeated block: the unit of FSDP wrapping (and of gradient checkpointing)."""


def _import(path: str) -> type:
    module, name = path.rsplit(".", 1)
    import importlib

    return getattr(importlib.import_module(module), name)


def fsdp_wrap_policy(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """FSDP ``auto_wrap_policy``: one FSDP unit per transformer block of any model in :data:`BLOCK_CLASSES`
    (name it in the trainer's ``strategy: FSDPStrategy`` init args; the rest of the model is the root unit)."""
    if recurse:
        return True
    return isinstance(module, tuple(_import(p) for p in BLOCK_CLASSES.values()))


# ---- the shared adapter -----------------------------------------------------------------------------
def read_model_config(folder: Path, expected: str) -> dict[str, Any]:
    """``folder/config.json`` of a diffusers model whose ``_class_name`` must be ``expected``;
    FileNotFoundError / ValueError naming the path and the key at fault."""
    file = folder / "config.json"
    if not file.is_file():
        raise FileNotFoundError(
            f"no {expected} at {folder} (config.json not found). Point `pretrained` at a local diffusers "
            f"pipeline folder (transformer/, vae/, text_encoder/, tokenizer/, scheduler/), downloaded on a "
            f"machine with internet, e.g. `huggingface-cli download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --local-dir <dir>`."
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from err
    name = config.get("_class_name")
    if name != expected:
        raise ValueError(f"{file}: _class_name is {name!r}, expected {expected!r} (is `pretrained` a folder of "
                         f"the model this class wraps?)")
    return config


class PretrainedVideoTransformer(nn.Module):
    """A diffusers video transformer from a local folder with latentvid's denoiser ``forward``.

    Subclasses name the diffusers class (``diffusers_class``), its LoRA loader mixin (``lora_loader``),
    and implement :meth:`timestep` and :meth:`predict`.

    Args:
        pretrained: local diffusers pipeline folder (``transformer/config.json`` + weights).
        subfolder: the transformer's subfolder of ``pretrained`` (None: ``pretrained`` is that folder).
        variant: weights variant, e.g. ``"fp16"``.
        dtype: the weights' dtype, ``"float32"``, ``"bfloat16"`` or ``"float16"`` (LoRA adapters stay float32).
        lora_rank: None trains the whole transformer; a rank adds LoRA adapters (peft) and freezes the base.
        lora_alpha: LoRA scale numerator (the update is alpha / rank * B A); None = ``lora_rank``.
        lora_target_modules: module names (suffixes) that get adapters.
        lora_dropout: dropout on the adapters' input.
        lora_weights: a LoRA safetensors file (diffusers layout, :meth:`save_lora`) to load and keep
            training; its rank, alpha and targets come from the file (then ``lora_rank`` etc. must be None).
        gradient_checkpointing: recompute each transformer block in backward (training only).
    """

    diffusers_class: str = ""
    lora_loader: str = ""

    def __init__(
        self,
        pretrained: str,
        subfolder: str | None = "transformer",
        variant: str | None = None,
        dtype: str = "float32",
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        lora_target_modules: list[str] | None = None,
        lora_dropout: float = 0.0,
        lora_weights: str | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if lora_rank is not None and lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1 or null (full fine-tuning), got {lora_rank}")
        if lora_weights is not None and lora_rank is not None:
            raise ValueError("give lora_rank (fresh adapters) or lora_weights (adapters from a file), not both")
        if not 0.0 <= lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must lie in [0, 1), got {lora_dropout}")
        root = Path(pretrained).expanduser()
        folder = root / subfolder if subfolder else root
        self.config = read_model_config(folder, self.diffusers_class)
        self.transformer = self._load(folder, variant, dtype)
        # a second expert (Wan 2.2 A14B's low-noise transformer_2): a subclass names its subfolder
        expert_2 = getattr(self, "_expert_2_subfolder", None)
        self.transformer_2 = self._load(root / expert_2, variant, dtype) if expert_2 else None
        self.pretrained = str(root)
        self.lora_rank = lora_rank
        if lora_rank is not None:
            self._add_lora(lora_rank, lora_alpha, lora_target_modules, lora_dropout)
        elif lora_weights is not None:
            self.load_lora(lora_weights)
        if gradient_checkpointing:
            for model in self.experts().values():
                model.enable_gradient_checkpointing()
        self.fps_embed = None  # latentvid's denoiser attributes: no fps embedding, no extra scalars
        self.num_extra_conditions = 0
        self.frame_conditioning = False  # known frames as inputs: where the model has a way (LTX-Video, Wan TI2V)

    def _load(self, folder: Path, variant: str | None, dtype: str) -> nn.Module:
        """The diffusers model of ``folder`` (its config's class checked), weights in ``dtype``."""
        read_model_config(folder, self.diffusers_class)  # a clear error for a missing folder / wrong class
        import diffusers  # lazy: slow to import

        cls = getattr(diffusers, self.diffusers_class)
        try:
            return cls.from_pretrained(str(folder), local_files_only=True, variant=variant, torch_dtype=DTYPES[dtype])
        except (OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"could not load {self.diffusers_class} from {folder}: {err}") from err

    def experts(self) -> dict[str, nn.Module]:
        """The diffusers models by pipeline component name: ``transformer`` (and ``transformer_2``)."""
        out = {"transformer": self.transformer}
        if self.transformer_2 is not None:
            out["transformer_2"] = self.transformer_2
        return out

    @staticmethod
    def lora_file(path: Path, component: str) -> Path:
        """Where :meth:`save_lora` puts a component's adapters: ``path`` itself for ``transformer``,
        ``<stem>_transformer_2.safetensors`` beside it for the second expert."""
        return path if component == "transformer" else path.with_name(f"{path.stem}_{component}{path.suffix}")

    # ---- LoRA ----------------------------------------------------------------------------------
    @property
    def has_lora(self) -> bool:
        return bool(getattr(self.transformer, "peft_config", None))

    def _add_lora(self, rank: int, alpha: float | None, targets: list[str] | None, dropout: float) -> None:
        from peft import LoraConfig

        targets = list(targets or DEFAULT_LORA_TARGETS)
        names = [n for n, _ in self.transformer.named_modules()]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            raise ValueError(f"lora_target_modules {missing} name no module of {self.diffusers_class} "
                             f"(e.g. {names[1:8]} ...)")
        for model in self.experts().values():
            config = LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank),
                                target_modules=targets, lora_dropout=dropout, init_lora_weights=True)
            model.add_adapter(config)
        self._freeze_base()

    def _freeze_base(self) -> None:
        """Only the adapters train; they are held in float32 whatever the base dtype."""
        for name, p in self.named_parameters():
            is_lora = "lora_" in name
            p.requires_grad_(is_lora)
            if is_lora and p.dtype != torch.float32:
                p.data = p.data.float()

    def lora_state_dict(self, component: str = "transformer") -> dict[str, Tensor]:
        """A component's adapter weights in diffusers' layout, without the ``transformer.`` prefix (detached, CPU)."""
        if not self.has_lora:
            raise ValueError(f"{type(self).__name__} has no LoRA adapters (set lora_rank)")
        from peft.utils import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.experts()[component], adapter_name="default")
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def lora_metadata(self, component: str = "transformer") -> dict[str, Any]:
        """The adapter's peft config (rank, alpha, targets, dropout) as diffusers stores it beside the weights."""
        cfg = self.experts()[component].peft_config["default"].to_dict()
        return {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}

    def save_lora(self, path: str | Path) -> Path:
        """Write the adapters to ``path`` (a ``.safetensors`` file) in the layout the diffusers pipeline of
        this model loads with ``pipe.load_lora_weights(folder, weight_name=name)`` (keys
        ``transformer.<module>.lora_A.weight`` / ``lora_B.weight``, rank and alpha in the metadata).
        A second expert's adapters go to :meth:`lora_file` (``<stem>_transformer_2.safetensors``), which
        WanPipeline loads with ``load_lora_weights(..., load_into_transformer_2=True)``. Returns ``path``."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"LoRA file must end in .safetensors, got {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        import diffusers

        loader = getattr(diffusers.loaders.lora_pipeline, self.lora_loader)
        for component in self.experts():
            file = self.lora_file(path, component)
            loader.save_lora_weights(str(file.parent), transformer_lora_layers=self.lora_state_dict(component),
                                     weight_name=file.name, safe_serialization=True,
                                     transformer_lora_adapter_metadata=self.lora_metadata(component))
        return path

    def load_lora(self, path: str | Path) -> None:
        """Load adapters from a diffusers-layout LoRA file (:meth:`save_lora`, or one trained elsewhere for
        this model; a second expert's from :meth:`lora_file`) as this model's adapters; the base is frozen
        and the adapters train."""
        path = Path(path).expanduser()
        if self.has_lora:
            raise ValueError("this model already has LoRA adapters")
        import diffusers

        loader = getattr(diffusers.loaders.lora_pipeline, self.lora_loader)
        for component, model in self.experts().items():
            file = self.lora_file(path, component)
            if not file.is_file():
                raise FileNotFoundError(f"lora_weights: no LoRA file at {file}" + (
                    "" if component == "transformer" else f" (the {component} expert's adapters)"))
            try:
                # the pipeline loader's reading: the metadata holds alpha (and converts other trainers' layouts)
                state, metadata = loader.lora_state_dict(str(file.parent), weight_name=file.name,
                                                         return_lora_metadata=True)
                model.load_lora_adapter(state, prefix="transformer", metadata=metadata, adapter_name="default")
            except (ValueError, KeyError, RuntimeError, OSError) as err:
                raise ValueError(f"lora_weights {file} does not fit {self.diffusers_class}: {err}") from err
            if not getattr(model, "peft_config", None):
                raise ValueError(f"lora_weights {file} holds no transformer.* LoRA weights")
        self.lora_rank = int(self.transformer.peft_config["default"].r)
        self._freeze_base()

    # ---- checkpoints ---------------------------------------------------------------------------
    def frozen_state_keys(self) -> list[str]:
        """State-dict keys (of this module) that reload from ``pretrained``: the frozen base under LoRA,
        nothing when the whole transformer trains. LatentDiffusion leaves them out of checkpoints."""
        if not self.has_lora:
            return []
        return [k for k in self.state_dict() if "lora_" not in k]

    # ---- latentvid's denoiser interface ----------------------------------------------------------
    @property
    def in_channels(self) -> int:
        return int(self.config["in_channels"])

    @property
    def out_channels(self) -> int:
        return int(self.config.get("out_channels") or self.config["in_channels"])

    @property
    def downsample_factor(self) -> int:
        """H and W of the latents must be multiples of this (the spatial patch size)."""
        raise NotImplementedError

    @property
    def frame_multiple(self) -> int:
        """Latent frames must be a multiple of this (the temporal patch size; 1 = any)."""
        return 1

    @property
    def block_class(self) -> type:
        """The repeated block class (FSDP unit, checkpointing unit)."""
        return _import(BLOCK_CLASSES[self.diffusers_class])

    def timestep(self, logsnr: Tensor) -> Tensor:
        """logSNR (B,) -> the model's own timestep (B,) float64."""
        raise NotImplementedError

    def predict(self, x: Tensor, timestep: Tensor, context: Tensor, context_mask: Tensor | None,
                fps: Tensor | None = None) -> Tensor:
        """The diffusers model on latents x (B, C, T, H, W) in its dtype -> its prediction (B, C, T, H, W);
        ``timestep`` (B,), or (B, T) per latent frame for a ``frame_conditioning`` model."""
        raise NotImplementedError

    def _check(self, x: Tensor, logsnr: Tensor, context: Tensor | None, context_mask: Tensor | None,
               frame_mask: Tensor | None, extra: Tensor | None) -> None:
        name = type(self).__name__
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"{name}: x must be (B, {self.in_channels}, T, H, W), got {tuple(x.shape)}")
        b, _, t, h, w = x.shape
        f = self.downsample_factor
        if h % f or w % f:
            raise ValueError(f"{name}: latent H={h} and W={w} must be multiples of the patch size {f}")
        if t % self.frame_multiple:
            raise ValueError(f"{name}: latent frames {t} must be a multiple of the temporal patch {self.frame_multiple}")
        if logsnr.shape != (b,):
            raise ValueError(f"{name}: logsnr must be ({b},), got {tuple(logsnr.shape)}")
        if context is None or context.ndim != 3 or context.shape[0] != b or context.shape[2] != self.context_dim:
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"{name}: context must be ({b}, L, {self.context_dim}), got {got}")
        if context_mask is not None and (context_mask.dtype != torch.bool or context_mask.shape != context.shape[:2]):
            raise ValueError(f"{name}: context_mask must be bool {tuple(context.shape[:2])}, "
                             f"got {context_mask.dtype} {tuple(context_mask.shape)}")
        if frame_mask is not None and not bool(frame_mask.all()):
            raise ValueError(f"{name}: padded frames (frame_mask False) are not supported by a pretrained video "
                             f"transformer (its attention sees every frame); train on full clips (image_ratio: 0)")
        if extra is not None:
            raise ValueError(f"{name}: takes no extra scalar conditions")

    def forward(
        self,
        x: Tensor,
        logsnr: Tensor,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        fps: Tensor | None = None,
        frame_mask: Tensor | None = None,
        extra: Tensor | None = None,
        known: Tensor | None = None,
        known_mask: Tensor | None = None,
    ) -> Tensor:
        """The model's prediction (B, C, T, H, W) float32 for noisy latents x (B, C, T, H, W) at logsnr (B,),
        text tokens ``context`` (B, L, D) with ``context_mask`` (B, L) bool; ``fps`` (B,) only reaches
        LTX-Video (its RoPE is scaled by the frame rate). ``known`` (B, C, T, H, W) / ``known_mask`` (B, T)
        bool: clean latents of given frames (``frame_conditioning`` only), which go in clean at timestep 0."""
        self._check(x, logsnr, context, context_mask, frame_mask, extra)
        timestep = self.timestep(logsnr)  # (B,)
        if known is not None or known_mask is not None:
            self._check_known(x, known, known_mask)
        if self.frame_conditioning:
            x, timestep = self._given_frames(x, timestep, known, known_mask)
        dtype = self.transformer.dtype
        out = self.predict(x.to(dtype), timestep, context.to(dtype), context_mask, fps)
        return out.to(x.dtype)

    def _check_known(self, x: Tensor, known: Tensor | None, known_mask: Tensor | None) -> None:
        """ValueError naming what does not fit: known frames need ``frame_conditioning``, ``known`` shaped
        like x and ``known_mask`` (B, T) bool."""
        name = type(self).__name__
        if not self.frame_conditioning:
            raise ValueError(f"{name}: known frames given but the model was built with frame_conditioning=False")
        b, _, t = x.shape[:3]
        if known is None or known.shape != x.shape:
            raise ValueError(f"{name}: known must be shaped like x {tuple(x.shape)}, "
                             f"got {None if known is None else tuple(known.shape)}")
        if known_mask is None or known_mask.dtype != torch.bool or known_mask.shape != (b, t):
            got = None if known_mask is None else f"{known_mask.dtype} {tuple(known_mask.shape)}"
            raise ValueError(f"{name}: known_mask must be bool ({b}, {t}), got {got}")

    def _given_frames(self, x: Tensor, timestep: Tensor, known: Tensor | None, known_mask: Tensor | None
                      ) -> tuple[Tensor, Tensor]:
        """The network's input and timestep with given frames (checked; None: none given): x with them put
        in clean, and per-frame timesteps (B, T), 0 on them, as LTX-Video and Wan 2.2 TI2V-5B condition on
        a first frame (their image-to-video pipelines)."""
        if known is None:
            return x, timestep
        m = known_mask.to(x.device)
        x = torch.where(m[:, None, :, None, None], known.to(x), x)
        return x, timestep[:, None] * (~m).to(timestep.dtype)


class WanTransformer(PretrainedVideoTransformer):
    """Wan 2.1 / Wan 2.2 (single-transformer) text-to-video ``WanTransformer3DModel``: flow matching.

    Latents (B, 16, T, H, W) at flow time sigma (logSNR = 2 log((1 - sigma) / sigma)) -> the velocity
    eps - x0 (``target: flow``), timestep 1000 sigma. Text: UMT5 tokens with padding zeroed and all
    tokens attended, as WanPipeline gives them (masked tokens are zeroed here, so any mask works).
    Pair with ``RectifiedFlowSchedule`` (its ``shift`` is Wan's: 3 for 480p, 5 for 720p sampling).

    Wan 2.2 A14B has two experts: ``transformer_2_subfolder: transformer_2`` loads the low-noise one, and
    each sample goes to the high-noise ``transformer`` when its timestep is >= ``boundary_ratio`` x 1000
    (from model_index.json when None), to ``transformer_2`` below, as in WanPipeline. Training then
    trains both, each on its own noise levels (LoRA: one adapter file per expert, :meth:`lora_file`).

    With ``frame_conditioning`` it takes given latent frames (``known``, ``known_mask``) clean, their
    tokens at timestep 0: Wan 2.2 TI2V-5B's image-to-video (WanImageToVideoPipeline with
    ``expand_timesteps``), which LatentDiffusion's frame tools and known-frame-mask training then use.
    Wan 2.1 and A14B condition on images through a CLIP tower and extra input channels instead (not
    supported); on Wan 2.1 this option is a way in the model was not trained on, which a fine-tune would
    have to learn, and A14B's two experts refuse it.

    Args:
        transformer_2_subfolder: the second (low-noise) expert's subfolder; None for one transformer.
        boundary_ratio: where the experts switch, as a fraction of the 1000 timesteps.
        frame_conditioning: take given latent frames (above); one transformer, temporal patch 1.
        Other args: see :class:`PretrainedVideoTransformer`.
    """

    diffusers_class = "WanTransformer3DModel"
    lora_loader = "WanLoraLoaderMixin"

    def __init__(self, pretrained: str, *args: Any, transformer_2_subfolder: str | None = None,
                 boundary_ratio: float | None = None, frame_conditioning: bool = False, **kwargs: Any) -> None:
        self._expert_2_subfolder = transformer_2_subfolder  # read by the base class while loading
        super().__init__(pretrained, *args, **kwargs)
        if frame_conditioning and (self.transformer_2 is not None or self.frame_multiple != 1):
            raise ValueError("WanTransformer: frame_conditioning needs one transformer with temporal patch 1 "
                             "(Wan 2.2 TI2V-5B's layout)")
        self.frame_conditioning = bool(frame_conditioning)
        if self.transformer_2 is None:
            if boundary_ratio is not None:
                raise ValueError("boundary_ratio is for a two-expert model: set transformer_2_subfolder too")
            self.boundary_ratio = None
            return
        if boundary_ratio is None:  # Wan 2.2 A14B's model_index.json says where the experts switch
            index = Path(pretrained).expanduser() / "model_index.json"
            try:
                boundary_ratio = json.loads(index.read_text(encoding="utf-8")).get("boundary_ratio")
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"{index}: cannot read boundary_ratio ({err}); set boundary_ratio") from err
            if boundary_ratio is None:
                raise ValueError(f"{index} has no boundary_ratio: set boundary_ratio for the two experts")
        if not 0.0 < float(boundary_ratio) < 1.0:
            raise ValueError(f"boundary_ratio must lie in (0, 1), got {boundary_ratio}")
        self.boundary_ratio = float(boundary_ratio)
        own = {k: v for k, v in self.config.items() if not k.startswith("_")}
        other = {k: v for k, v in self.transformer_2.config.items() if not k.startswith("_") and k in own}
        if {k: own[k] for k in other} != other:
            raise ValueError(f"{Path(pretrained) / transformer_2_subfolder / 'config.json'} differs from the first "
                             f"expert's config: {sorted(k for k in other if other[k] != own[k])}")

    @property
    def context_dim(self) -> int:
        return int(self.config["text_dim"])

    @property
    def downsample_factor(self) -> int:
        return int(self.config["patch_size"][1])

    @property
    def frame_multiple(self) -> int:
        return int(self.config["patch_size"][0])

    def timestep(self, logsnr: Tensor) -> Tensor:
        return flow_timestep(logsnr)

    def predict(self, x: Tensor, timestep: Tensor, context: Tensor, context_mask: Tensor | None,
                fps: Tensor | None = None) -> Tensor:
        if context_mask is not None:  # Wan's padding convention: zero vectors, attended
            context = context * context_mask[..., None].to(context.dtype)
        t = timestep.to(torch.float32)
        if t.ndim == 2:  # per frame, as WanImageToVideoPipeline passes them per token
            t = timesteps_per_token(t, x.shape[3] // self.downsample_factor, x.shape[4] // self.downsample_factor)
        if self.transformer_2 is None:
            return self.transformer(hidden_states=x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]
        # Wan 2.2: the high-noise expert at timesteps >= boundary * 1000 (WanPipeline's rule), the other below
        high = timestep >= self.boundary_ratio * 1000
        out = torch.empty_like(x)
        for model, rows in ((self.transformer, high), (self.transformer_2, ~high)):
            if bool(rows.any()):
                out[rows] = model(hidden_states=x[rows], timestep=t[rows], encoder_hidden_states=context[rows],
                                  return_dict=False)[0].to(out.dtype)
        return out


class CogVideoXTransformer(PretrainedVideoTransformer):
    """CogVideoX 1.0 (2b, 5b) text-to-video ``CogVideoXTransformer3DModel``: v-prediction on a DDPM table.

    Latents (B, 16, T, H, W) at logSNR -> v = alpha eps - sigma x0 (``target: v``), at the fractional
    timestep whose logSNR it is in CogVideoX's table (SNR shifted by ``snr_shift_scale``, zero SNR at
    the last timestep: :class:`~latentvid.diffusion.discrete.DiscreteSchedule` of the same folder,
    whose :meth:`~latentvid.diffusion.discrete.DiscreteSchedule.timestep` is used here, so training,
    sampling and the network agree on every noise level). Text: T5 tokens, all attended, encoded
    without a mask, as CogVideoXPipeline does (``T5TextEncoder(max_length: 226, use_attention_mask:
    false, mask_padding: false)``); the text length must be the config's ``max_text_seq_length`` when
    the model has learned positional embeddings (CogVideoX-2b). 3D rotary embeddings (CogVideoX-5b)
    are computed for each latent size as the pipeline does. CogVideoX 1.5 (``patch_size_t`` 2) takes an
    even number of latent frames, and the VAE gives odd ones: LatentDiffusion (via :attr:`frame_multiple`)
    puts frame 0 again in front in training (CogVideoX's own fine-tuning does) and samples one more
    latent frame in front, dropped before decoding (as CogVideoXPipeline does).

    An image-to-video transformer (CogVideoX 1.0 I2V: ``in_channels`` twice ``out_channels``) needs
    ``frame_conditioning``: the given frames' latents (zero elsewhere) go in beside the noisy ones on the
    channels, as CogVideoXImageToVideoPipeline gives the image, and the given frames are generated too,
    not pinned (:attr:`pins_known_frames` False: LatentDiffusion then keeps them in the loss).

    Args:
        scheduler_config: the scheduler folder / file whose table defines the timestep map; None =
            ``pretrained/scheduler``.
        frame_conditioning: take given frames, for an image-to-video transformer (above).
        Other args: see :class:`PretrainedVideoTransformer`.
    """

    diffusers_class = "CogVideoXTransformer3DModel"
    lora_loader = "CogVideoXLoraLoaderMixin"

    def __init__(self, pretrained: str, *args: Any, scheduler_config: str | None = None,
                 frame_conditioning: bool = False, **kwargs: Any) -> None:
        super().__init__(pretrained, *args, **kwargs)
        from latentvid.diffusion.discrete import DiscreteSchedule

        self.schedule = DiscreteSchedule(pretrained=scheduler_config or str(Path(pretrained).expanduser()))
        channels, out = int(self.config["in_channels"]), self.out_channels
        image_to_video = channels == 2 * out
        if frame_conditioning and (not image_to_video or self.config.get("patch_size_t")):
            raise ValueError(f"CogVideoXTransformer: frame_conditioning needs a CogVideoX 1.0 image-to-video "
                             f"transformer (in_channels twice out_channels, no patch_size_t); "
                             f"{Path(pretrained) / 'transformer'} has {channels} and {out}")
        if image_to_video and not frame_conditioning:
            raise ValueError(f"CogVideoXTransformer: {Path(pretrained) / 'transformer'} is an image-to-video "
                             f"transformer (in_channels {channels} = 2 x {out}): set frame_conditioning: true")
        self.frame_conditioning = bool(frame_conditioning)
        self.pins_known_frames = False  # the pipeline generates the given frame too

    @property
    def in_channels(self) -> int:
        """Channels of the noisy latents (an image-to-video model takes as many again: the given frames)."""
        return self.out_channels if self.frame_conditioning else int(self.config["in_channels"])

    def _given_frames(self, x: Tensor, timestep: Tensor, known: Tensor | None, known_mask: Tensor | None
                      ) -> tuple[Tensor, Tensor]:
        """(B, 2C, T, H, W): x and the given frames' latents, zero on the others (all zero when none given)."""
        if known is None:
            return torch.cat([x, torch.zeros_like(x)], dim=1), timestep
        m = known_mask.to(x.device)[:, None, :, None, None]
        return torch.cat([x, torch.where(m, known.to(x), torch.zeros_like(x))], dim=1), timestep

    @property
    def context_dim(self) -> int:
        return int(self.config["text_embed_dim"])

    @property
    def downsample_factor(self) -> int:
        return int(self.config["patch_size"])

    @property
    def frame_multiple(self) -> int:
        return int(self.config.get("patch_size_t") or 1)

    def timestep(self, logsnr: Tensor) -> Tensor:
        return self.schedule.timestep(logsnr)

    def rotary_embedding(self, frames: int, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor] | None:
        """(cos, sin) of the 3D RoPE for ``frames`` x ``height`` x ``width`` latents, as CogVideoXPipeline builds
        them (None when the model has no rotary embeddings)."""
        if not self.config.get("use_rotary_positional_embeddings"):
            return None
        from diffusers.models.embeddings import get_3d_rotary_pos_embed
        from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

        p, p_t = self.config["patch_size"], self.config.get("patch_size_t")
        grid = (height // p, width // p)
        base_w, base_h = self.config["sample_width"] // p, self.config["sample_height"] // p
        if p_t is None:  # CogVideoX 1.0
            crops = get_resize_crop_region_for_grid(grid, base_w, base_h)
            return get_3d_rotary_pos_embed(embed_dim=self.config["attention_head_dim"], crops_coords=crops,
                                           grid_size=grid, temporal_size=frames, device=device)
        return get_3d_rotary_pos_embed(embed_dim=self.config["attention_head_dim"], crops_coords=None, grid_size=grid,
                                       temporal_size=frames // p_t, grid_type="slice", max_size=(base_h, base_w),
                                       device=device)

    def predict(self, x: Tensor, timestep: Tensor, context: Tensor, context_mask: Tensor | None,
                fps: Tensor | None = None) -> Tensor:
        if context_mask is not None and not bool(context_mask.all()):
            raise ValueError("CogVideoXTransformer: CogVideoX attends to every text token; encode with "
                             "T5TextEncoder(use_attention_mask: false, mask_padding: false)")
        length = self.config.get("max_text_seq_length")
        if not self.config.get("use_rotary_positional_embeddings") and length and context.shape[1] != length:
            raise ValueError(f"CogVideoXTransformer: {context.shape[1]} text tokens, but the model's learned positions "
                             f"need max_text_seq_length={length} (transformer/config.json): set the text encoder's "
                             f"max_length to {length}")
        b, c, t, h, w = x.shape
        rope = self.rotary_embedding(t, h, w, x.device)
        out = self.transformer(hidden_states=x.transpose(1, 2), encoder_hidden_states=context,  # (B, T, C, H, W)
                               timestep=timestep.to(torch.float32), image_rotary_emb=rope, return_dict=False)[0]
        return out.transpose(1, 2)  # (B, C, T, H, W)


def pack_latents(x: Tensor, p: int = 1, p_t: int = 1) -> Tensor:
    """LTX-Video's token layout: (B, C, T, H, W) -> (B, T/p_t * H/p * W/p, C * p_t * p * p), frames outermost."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // p_t, p_t, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, (t // p_t) * (h // p) * (w // p), c * p_t * p * p)


def unpack_latents(tokens: Tensor, t: int, h: int, w: int, p: int = 1, p_t: int = 1) -> Tensor:
    """The inverse of :func:`pack_latents`: (B, S, C * p_t * p * p) -> (B, C, T, H, W) for latent size (t, h, w)."""
    b = tokens.shape[0]
    x = tokens.reshape(b, t // p_t, h // p, w // p, -1, p_t, p, p)
    return x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, -1, t, h, w)


def ltx_vae_factors(vae_config: dict[str, Any]) -> tuple[int, int]:
    """(temporal, spatial) compression of an ``AutoencoderKLLTXVideo`` config, as diffusers computes them."""
    scalings = sum(bool(v) for v in vae_config.get("spatio_temporal_scaling", (True, True, True, False)))
    spatial = vae_config.get("spatial_compression_ratio") or vae_config.get("patch_size", 4) * 2**scalings
    temporal = vae_config.get("temporal_compression_ratio") or vae_config.get("patch_size_t", 1) * 2**scalings
    return int(temporal), int(spatial)


class LTXVideoTransformer(PretrainedVideoTransformer):
    """LTX-Video text-to-video ``LTXVideoTransformer3DModel``: flow matching on packed latent tokens.

    Latents (B, 128, T, H, W) at flow time sigma -> the velocity eps - x0 (``target: flow``), timestep
    1000 sigma, latents packed to tokens as LTXPipeline packs them. Text: T5 tokens with the real-token
    mask passed on as ``encoder_attention_mask``, encoded without a mask as LTXPipeline does
    (``T5TextEncoder(max_length: 128, use_attention_mask: false)``). The 3D RoPE is
    scaled by (temporal factor / fps, spatial factor, spatial factor) of the VAE (``vae/config.json``),
    so the clip's frame rate matters: ``fps`` from the batch / sampler, else ``frame_rate``.

    With ``frame_conditioning`` it also takes given latent frames (``known``, ``known_mask``), as
    LTXImageToVideoPipeline does with an image: they go in clean, their tokens at timestep 0 (LTX-Video
    was trained that way, so no new weights). LatentDiffusion then trains with known-frame masks and
    samples image-to-video, extension and interpolation with ``method="trained"``.

    Args:
        vae_subfolder: subfolder of ``pretrained`` with the VAE's config.json (its compression factors).
        frame_rate: the fps when none is given (LTXPipeline's default 25).
        frame_conditioning: take given latent frames (above); needs ``patch_size_t`` 1 (LTX-Video 0.9).
        Other args: see :class:`PretrainedVideoTransformer`.
    """

    diffusers_class = "LTXVideoTransformer3DModel"
    lora_loader = "LTXVideoLoraLoaderMixin"

    def __init__(self, pretrained: str, *args: Any, vae_subfolder: str = "vae", frame_rate: float = 25.0,
                 frame_conditioning: bool = False, **kwargs: Any) -> None:
        super().__init__(pretrained, *args, **kwargs)
        if frame_rate <= 0:
            raise ValueError(f"frame_rate must be > 0, got {frame_rate}")
        vae_config = read_model_config(Path(pretrained).expanduser() / vae_subfolder, "AutoencoderKLLTXVideo")
        self.vae_temporal, self.vae_spatial = ltx_vae_factors(vae_config)
        self.frame_rate = float(frame_rate)
        if frame_conditioning and self.frame_multiple != 1:
            raise ValueError(f"LTXVideoTransformer: frame_conditioning needs patch_size_t 1 (per-frame timesteps), "
                             f"this model's is {self.frame_multiple}")
        self.frame_conditioning = bool(frame_conditioning)

    @property
    def context_dim(self) -> int:
        return int(self.config["caption_channels"])

    @property
    def downsample_factor(self) -> int:
        return int(self.config.get("patch_size") or 1)

    @property
    def frame_multiple(self) -> int:
        return int(self.config.get("patch_size_t") or 1)

    def timestep(self, logsnr: Tensor) -> Tensor:
        return flow_timestep(logsnr)

    def predict(self, x: Tensor, timestep: Tensor, context: Tensor, context_mask: Tensor | None,
                fps: Tensor | None = None) -> Tensor:
        b, _, t, h, w = x.shape
        p, p_t = self.downsample_factor, self.frame_multiple
        if fps is None:
            fps = torch.full((b,), self.frame_rate, device=x.device)
        # per-sample frame rates: the temporal RoPE scale broadcasts over (B, 1, T, H, W) coordinates
        scale = (self.vae_temporal / fps.to(device=x.device, dtype=torch.float32)).view(b, 1, 1, 1, 1)
        mask = context_mask if context_mask is not None else torch.ones(context.shape[:2], dtype=torch.bool,
                                                                        device=context.device)
        if timestep.ndim == 2:  # per frame, as LTXImageToVideoPipeline passes them per token
            timestep = timesteps_per_token(timestep, h // p, w // p)
        out = self.transformer(hidden_states=pack_latents(x, p, p_t), encoder_hidden_states=context,
                               timestep=timestep.to(torch.float32), encoder_attention_mask=mask,
                               num_frames=t // p_t, height=h // p, width=w // p,
                               rope_interpolation_scale=(scale, self.vae_spatial, self.vae_spatial),
                               return_dict=False)[0]
        return unpack_latents(out, t, h, w, p, p_t)
