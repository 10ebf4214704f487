"""Record where a run was launched, so its checkpoints load from any directory.

A recipe names its files (the VAE, the data, a teacher, ``init_from``) relative to the directory
``tools/fit.py`` runs from, and the checkpoint's saved config keeps them that way. :class:`LaunchDir`
writes that directory into every checkpoint (``checkpoint["launch_dir"]``);
:func:`latentvid.pipelines.loading.load_model` resolves the config's relative paths against it when
they do not exist from the current directory. :class:`latentvid.cli.LatentVidCLI` adds it to every run.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

KEY = "launch_dir"


class LaunchDir(Callback):
    """Store the working directory at construction (the run's launch) in each checkpoint."""

    def __init__(self) -> None:
        self.path = os.getcwd()

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[KEY] = self.path
