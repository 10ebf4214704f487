#!/usr/bin/env python
"""Train a latentvid model: ``python tools/fit.py -c configs/base.yaml [--trainer.max_steps N ...]``.

The same as ``latentvid fit ...``; ``--help`` lists every option.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from latentvid.cli import main  # noqa: E402

if __name__ == "__main__":
    # LightningCLI reads sys.argv; `fit.py ARGS` == `latentvid fit ARGS`. Lightning's DDP launcher
    # re-runs this script for ranks > 0 with the argv it sees, "fit" already in it.
    if sys.argv[1:2] != ["fit"]:
        sys.argv.insert(1, "fit")
    main()
