"""Strict CSV reading by column name, with file:line in every error.

The GenTD26 and DiffServe CSVs are small (at most a few hundred thousand rows), so the stdlib csv
reader is fast enough and, unlike bulk readers, knows the line of every row.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from pathlib import Path

from trace_replay.table import SkipReport, TraceFormatError


def rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row) pairs; the header must hold every required column (order is free)."""
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: DiffServe CSVs carry a BOM
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise TraceFormatError(str(path), 1, "empty file, expected a CSV header") from None
        missing = [c for c in required if c not in header]
        if missing:
            raise TraceFormatError(str(path), 1, f"missing column(s) {missing}; header is {header}")
        index = {name: i for i, name in enumerate(header)}
        for values in reader:
            line = reader.line_num
            if not values:
                continue
            if len(values) != len(header):
                yield line, {"__error__": f"expected {len(header)} fields, got {len(values)}"}
                continue
            yield line, {name: values[i] for name, i in index.items()}


def number(text: str, name: str, *, integral: bool = False, minimum: float | None = 0.0) -> float:
    """Parse one numeric field; '' means unknown (NaN). Raises ValueError naming the column."""
    if text == "" or text == "NULL":
        return math.nan
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"column {name!r}: {text!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"column {name!r}: {text!r} is not finite")
    if integral and v != int(v):
        raise ValueError(f"column {name!r}: {text!r} is not a whole number")
    if minimum is not None and v < minimum:
        raise ValueError(f"column {name!r}: {text!r} is below {minimum}")
    return v


def parse_all(
    path: Path, required: tuple[str, ...], parse: Callable[[dict[str, str]], tuple],
    lenient: bool, skipped: SkipReport,
) -> list[tuple]:
    """Apply ``parse`` to every row; a ValueError becomes an error or a counted skip."""
    out: list[tuple] = []
    for line, row in rows(path, required):
        try:
            if "__error__" in row:
                raise ValueError(row["__error__"])
            out.append(parse(row))
        except ValueError as exc:
            skipped.raise_or_skip(lenient, str(path), line, str(exc))
    return out
