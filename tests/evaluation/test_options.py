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


def test_sampler_names_are_the_registry_and_both_tools_take_them(load_script):
    from latentvid.diffusion.samplers import SAMPLERS
    from latentvid.evaluation.options import SAMPLER_NAMES

    assert SAMPLER_NAMES == tuple(SAMPLERS)
    evaluate = load_script("tools/evaluate.py", "evaluate_tool_samplers")
    sample = load_script("tools/sample.py", "sample_tool_samplers")
    for name in SAMPLER_NAMES:
        assert evaluate.parse_args(["--ckpt", "x.ckpt", "--sampler", name]).sampler == name
        assert sample.parse_args(["--ckpt", "x.ckpt", "--out", "o", "--sampler", name]).sampler == name
    for tool, args in ((evaluate, ["--ckpt", "x.ckpt"]), (sample, ["--ckpt", "x.ckpt", "--out", "o"])):
        with pytest.raises(SystemExit):
            tool.parse_args([*args, "--sampler", "euler"])


def test_spacing_names_are_the_schedules_and_both_tools_take_them(load_script):
    from latentvid.diffusion.schedule import SPACINGS
    from latentvid.evaluation.options import SPACING_NAMES

    assert SPACING_NAMES == SPACINGS
    evaluate = load_script("tools/evaluate.py", "evaluate_tool_spacing")
    sample = load_script("tools/sample.py", "sample_tool_spacing")
    for name in SPACING_NAMES:
        assert evaluate.parse_args(["--ckpt", "x.ckpt", "--spacing", name]).spacing == name
        assert sample.parse_args(["--ckpt", "x.ckpt", "--out", "o", "--spacing", name]).spacing == name
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--ckpt", "x.ckpt", "--spacing", "uniform"])
