"""Tests of latentvid/evaluation/report.py: strict JSON for non-finite values, the text table."""

import json

from latentvid.evaluation.report import format_table, json_safe, write_report


def test_non_finite_values_become_strings_and_the_file_is_strict_json(tmp_path):
    report = {"metrics": {"psnr": {"value": float("inf"), "n": 2}}, "x": [float("nan"), -float("inf"), 1.5]}
    assert json_safe(report) == {"metrics": {"psnr": {"value": "inf", "n": 2}}, "x": ["nan", "-inf", 1.5]}
    path = write_report(report, tmp_path / "sub" / "r.json")
    assert json.loads(path.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c))) == json_safe(report)


def test_table_aligns_and_shows_real_counts():
    table = format_table({"fvd": {"value": 123.456789, "n": 4, "n_real": 6}, "probe/all": {"value": 0.5, "n": 4}})
    assert table.splitlines() == ["metric       value  n",
                                  "fvd        123.457  4 (real 6)",
                                  "probe/all      0.5  4"]
