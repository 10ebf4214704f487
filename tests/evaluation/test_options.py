"""Tests of latentvid/evaluation/options.py: metric parsing, and one field per tools/evaluate.py flag."""

import pytest

from latentvid.evaluation.options import EvalOptions, parse_metric_names


def test_parse_metric_names():
    assert parse_metric_names(" probe, FVD,probe") == ["probe", "fvd"]
    with pytest.raises(ValueError, match="unknown.*'bleu'"):
        parse_metric_names("probe,bleu")
    assert EvalOptions(metrics="clip,psnr").metric_names == ["clip", "psnr"]


def test_every_flag_is_a_field_with_the_flag_default(load_script):
    """The tool passes its namespace as EvalOptions(**vars(args)): same names, same defaults."""
    tool = load_script("tools/evaluate.py", "evaluate_tool_options")
    args = vars(tool.parse_args(["--generated", "x"]))
    options = vars(EvalOptions(generated="x"))
    assert args.keys() == options.keys()
    assert args == options
