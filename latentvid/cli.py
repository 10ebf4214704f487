"""The ``latentvid`` command: LightningCLI over any latentvid LightningModule and DataModule.

    latentvid fit -c configs/base.yaml                      # train
    latentvid fit -c configs/base.yaml --trainer.max_steps 100
    latentvid validate -c configs/base.yaml --ckpt_path runs/base/.../last.ckpt
    latentvid fit --help                                    # every option, from the constructors

Configs mirror constructor signatures (``class_path`` / ``init_args``); the resolved config is
saved as ``config.yaml`` in every run directory.
"""

from __future__ import annotations

import os
import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

DEBUG_ENV = "LATENTVID_DEBUG"


class LatentVidCLI(LightningCLI):
    """LightningCLI with latentvid's defaults (subclass mode, config saved beside checkpoints)."""

    def __init__(self, args: list[str] | None = None, **kwargs) -> None:
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},
            args=args,
            **kwargs,
        )


def _one_line(exc: BaseException) -> str:
    """The first useful line of an argument/config error (jsonargparse nests the cause in the message)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # jsonargparse puts the specific cause ("Key 'x' is not expected", "File does not exist") last
    return lines[-1] if lines else type(exc).__name__


def main(args: list[str] | None = None) -> None:
    """Entry point of ``latentvid`` and ``tools/fit.py``. Config and file errors end in one line."""
    from jsonargparse import ArgumentError

    debug = os.environ.get(DEBUG_ENV) == "1"
    try:
        LatentVidCLI(args=args)
    except ArgumentError as exc:
        if debug:
            raise
        sys.stderr.write(f"latentvid: config error: {_one_line(exc)}\n(run with --help for the options, "
                         f"{DEBUG_ENV}=1 for a traceback)\n")
        sys.exit(2)
    except FileNotFoundError as exc:
        if debug:
            raise
        sys.stderr.write(f"latentvid: file not found: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
