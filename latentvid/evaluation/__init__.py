"""Sampling from checkpoints and scoring videos, callable from Python.

``tools/sample.py`` and ``tools/evaluate.py`` are argument parsers over these functions::

    model, ckpt = load_model("runs/base")
    videos = sample_videos(model, captions, clip_shape(ckpt), seed=0, steps=30)   # (N, 3, T, H, W)
    probe_scores(videos, captions)                                                 # {"colour": ..., ...}
"""

from latentvid.evaluation.inputs import EvalError
from latentvid.evaluation.options import EvalOptions
from latentvid.evaluation.report import format_table, write_report
from latentvid.evaluation.sampling import clip_shape, sample_batches, sample_seeded, sample_videos, write_samples
from latentvid.evaluation.scoring import evaluate, probe_scores

__all__ = ["EvalError", "EvalOptions", "clip_shape", "evaluate", "format_table", "load_model", "probe_scores",
           "sample_batches", "sample_seeded", "sample_videos", "write_report", "write_samples"]


def __getattr__(name: str):
    # load_model pulls in torch and Lightning: imported on first use, so the tools' --help stays quick
    if name == "load_model":
        from latentvid.pipelines.loading import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
