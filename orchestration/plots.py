"""Tiny text plots for asset metadata (rendered as Markdown in the Dagster UI)."""

from __future__ import annotations


def bar_chart(rows: list[tuple[str, float]], title: str, width: int = 30) -> str:
    """A Markdown table with unicode bars: readable in the UI without an image pipeline."""
    top = max((v for _, v in rows), default=0) or 1
    lines = [f"**{title}**", "", "| bucket | count | |", "| --- | ---: | --- |"]
    for label, value in rows:
        lines.append(f"| {label} | {value:,.0f} | {'█' * max(1, round(width * value / top)) if value else ''} |")
    return "\n".join(lines)


LENGTH_EDGES = (3, 5, 10, 20, 50, 100, 200, 500)  # sequence-length buckets: [3, 5), [5, 10), ..., [500, inf)


def histogram(values, edges=LENGTH_EDGES) -> list[tuple[str, float]]:
    """(bucket label, count) rows for bar_chart; values below edges[0] get their own first bucket."""
    counts = [0] * (len(edges) + 1)
    for v in values:
        counts[sum(v >= e for e in edges)] += 1
    labels = [f"< {edges[0]}"] + [f"{a}–{b - 1}" for a, b in zip(edges, edges[1:])] + [f"≥ {edges[-1]}"]
    return [(label, n) for label, n in zip(labels, counts) if n]
