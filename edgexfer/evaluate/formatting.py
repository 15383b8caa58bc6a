"""Numbers as a reader reads them: one formatter for the terminal, the Markdown and the HTML report.

Percentages as percentages, sizes in kB/MB, times in ms or s, counts with separators;
a missing value is an em dash. ``metric(key, value)`` picks the kind from a metric's name,
so a table of whatever a stage measured reads the same everywhere.

Imports nothing heavy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MISSING = "—"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def percent(value: Any, digits: int = 2) -> str:
    """A fraction in [0, 1] as a percentage: 0.9786 → ``97.86 %``."""
    return f"{value * 100:.{digits}f} %" if _is_number(value) else MISSING


def points(delta: Any, digits: int = 2) -> str:
    """A difference of two fractions in percentage points, signed: −0.004 → ``−0.40 pts``."""
    if not _is_number(delta):
        return MISSING
    text = f"{delta * 100:+.{digits}f} pts"
    return text.replace("-", "−")


def spread(std: Any, digits: int = 2) -> str:
    """A standard deviation of fractions in percentage points: 0.005 → ``± 0.50 pts``."""
    return f"± {std * 100:.{digits}f} pts" if _is_number(std) else MISSING


def size(num_bytes: Any) -> str:
    """Bytes in B, kB, MB or GB (decimal units, as file managers show): 27_340 → ``27.3 kB``."""
    if not _is_number(num_bytes):
        return MISSING
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(num_bytes) >= scale:
            value = num_bytes / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    return f"{int(num_bytes):,} B"


def megabytes(value: Any) -> str:
    """A size given in MB (``peak_rss_mb``) in the unit that reads best."""
    return size(value * 1e6) if _is_number(value) else MISSING


def milliseconds(ms: Any) -> str:
    """A latency in ms, µs or s by magnitude, three significant digits: 0.0412 → ``41.2 µs``."""
    if not _is_number(ms):
        return MISSING
    if ms >= 1000:
        return seconds(ms / 1000)
    if ms < 0.1:
        return f"{ms * 1000:.3g} µs"
    return f"{ms:.3g} ms"


def seconds(value: Any) -> str:
    """A duration: ``0.42 s``, ``12.3 s``, ``4 min 05 s``, ``1 h 02 min``."""
    if not _is_number(value):
        return MISSING
    if value < 60:
        return f"{value:.3g} s" if value < 10 else f"{value:.1f} s"
    minutes, secs = divmod(int(round(value)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def count(value: Any) -> str:
    """An integer with thousands separators: 4652008 → ``4,652,008``."""
    return f"{int(value):,}" if _is_number(value) else MISSING


def macs(value: Any) -> str:
    """Multiply-accumulates in M or G: 25_100_000 → ``25.1 M``."""
    if not _is_number(value):
        return MISSING
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{int(value):,}"


def ratio(value: Any) -> str:
    """How many times: 34.6 → ``35×``, 1.42 → ``1.4×``."""
    if not _is_number(value) or value <= 0:
        return MISSING
    return f"{value:.2g}×" if value < 10 else f"{value:,.0f}×"


def plain(value: Any) -> str:
    """A number with no unit: integers with separators, floats to four significant digits."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if _is_number(value):
        return f"{value:.4g}"
    return MISSING if value is None else str(value)


# Metric names → kind, first match wins (names as the stages write them in metrics.json).
_KINDS = (
    (("batch_size", "img_size", "input_size", "image_size"), count),
    (("_bytes", "bytes", "size"), size),
    (("_mb",), megabytes),
    (("_ms",), milliseconds),
    (("seconds", "_s"), seconds),
    (("accuracy", "agreement", "sparsity", "f1", "precision", "recall", "fraction", "_acc", "gap", "drop"), percent),
    (("macs",), macs),
    (("params", "images", "epochs", "steps", "count", "files", "_n", "classes"), count),
)


def metric(key: str, value: Any) -> str:
    """``value`` formatted by the kind its name says (``test_accuracy`` → %, ``model_bytes`` → kB/MB,
    ``p50_ms`` → ms, ``total_seconds`` → s, ``params`` → 1,234); anything else :func:`plain`."""
    if not _is_number(value):
        return plain(value)
    name = key.lower()
    for suffixes, formatter in _KINDS:
        if any(name.endswith(s) or (not s.startswith("_") and s in name) for s in suffixes):
            if formatter is percent and not -1.0 <= value <= 1.0:
                break  # not a fraction after all (an accuracy already in %): show it plainly
            return formatter(value)
    return plain(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown pipe table (the report, check.md, benchmark.md, the bench scripts' results).

    Hand-written rather than ``tabulate``: a pipe table needs no column padding, and these four
    lines are smaller than a dependency. ``None`` cells print as ``MISSING``; a ``|`` inside a
    cell is escaped so it cannot split the cell.
    """

    def cell(value: Any) -> str:
        return MISSING if value is None else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
