"""The evaluation report as text and JSON: an aligned table, strict JSON with non-finite values spelt out."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from latentvid.files import write_json_atomic


def json_safe(value: Any) -> Any:
    """Non-finite floats as the strings "inf", "-inf", "nan" (strict JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def format_table(metrics: dict[str, dict[str, Any]]) -> str:
    """The results as an aligned text table: metric, value (6 significant digits), n."""
    rows = [("metric", "value", "n")]
    for name, entry in metrics.items():
        n = str(entry["n"]) + (f" (real {entry['n_real']})" if "n_real" in entry else "")
        rows.append((name, f"{entry['value']:.6g}", n))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c}" for a, b, c in rows)


def write_report(report: dict[str, Any], out: str | Path) -> Path:
    """Write ``report`` as strict JSON (see :func:`json_safe`) to ``out``, creating its folder -> the path."""
    return write_json_atomic(out, json_safe(report), allow_nan=False, default=str)
