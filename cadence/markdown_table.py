"""A GitHub-markdown table with padded columns, for the tables the commands print."""
from __future__ import annotations

from typing import Sequence


def markdown_table(columns: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])
