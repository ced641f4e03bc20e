"""Markdown tables, as every benchmark's report prints them: a header with its rule, rows of cells, and the
"median (min-max)" cell."""

from __future__ import annotations


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def header(columns: list[str]) -> list[str]:
    """The header row and the rule under it."""
    return [row(columns), "|" + "---|" * len(columns)]


def spread_cell(median: float | None, low: float | None, high: float | None, spec: str = ".2f") -> str:
    """``median (low-high)``; — when there is no median, the median alone when there is no range."""
    if median is None:
        return "—"
    if low is None or high is None:
        return format(median, spec)
    return f"{median:{spec}} ({low:{spec}}-{high:{spec}})"
