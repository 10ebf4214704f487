#!/usr/bin/env python
"""Train a latentvid model: ``python tools/fit.py -c configs/base.yaml [--trainer.max_steps N ...]``.

The same as ``latentvid fit ...``; ``--help`` lists every option.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from latentvid.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.argv.insert(1, "fit")  # LightningCLI reads sys.argv; `fit.py ARGS` == `latentvid fit ARGS`
    main()
