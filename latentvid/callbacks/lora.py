"""Write a LoRA fine-tune's adapters as a small diffusers-layout safetensors file while training.

The file loads into the model's diffusers pipeline (``pipe.load_lora_weights(folder, weight_name=...)``)
and back into latentvid (``lora_weights:`` of :mod:`latentvid.nn.video_transformers`); the Lightning
checkpoints keep the adapters too (and the optimiser state, for resuming).
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer


class SaveLoRA(Callback):
    """Save ``pl_module.unet``'s LoRA adapters (:meth:`~latentvid.nn.video_transformers.PretrainedVideoTransformer.save_lora`).

    Args:
        dirpath: folder of the files; None = ``<the run's log dir>/lora``.
        every_n_train_steps: also write ``step=<N>.safetensors`` every N optimiser steps; None: only
            ``last.safetensors``, rewritten at every checkpoint save and at the end of training.

    Under FSDP the adapters are sharded and this callback refuses to start: export from the saved
    checkpoint instead (``tools/export_lora.py``).
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int | None = None) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(f"SaveLoRA.every_n_train_steps must be >= 1 or null, got {every_n_train_steps}")
        self.dirpath = dirpath
        self.every_n_train_steps = every_n_train_steps

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        unet = getattr(pl_module, "unet", None)
        if not getattr(unet, "has_lora", False):
            raise ValueError(f"SaveLoRA needs a denoiser with LoRA adapters (lora_rank set), got {type(unet).__name__}")
        if "FSDP" in type(trainer.strategy).__name__:
            raise ValueError("SaveLoRA cannot read FSDP-sharded adapters: leave it out of trainer.callbacks and export "
                             "them from a checkpoint (state_dict_type: full) with tools/export_lora.py")

    def folder(self, trainer: Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "lora"

    def save(self, trainer: Trainer, pl_module: LightningModule, name: str) -> None:
        if trainer.is_global_zero:
            pl_module.unet.save_lora(self.folder(trainer) / name)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0 and trainer.global_step > 0:
            self.save(trainer, pl_module, f"step={trainer.global_step}.safetensors")

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        self.save(trainer, pl_module, "last.safetensors")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.save(trainer, pl_module, "last.safetensors")
