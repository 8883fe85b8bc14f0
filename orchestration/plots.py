"""Tiny text plots for asset metadata (rendered as Markdown in the Dagster UI)."""

from __future__ import annotations


def bar_chart(rows: list[tuple[str, float]], title: str, width: int = 30) -> str:
    """A Markdown table with unicode bars: readable in the UI without an image pipeline."""
    top = max((v for _, v in rows), default=0) or 1
    lines = [f"**{title}**", "", "| bucket | count | |", "| --- | ---: | --- |"]
    for label, value in rows:
        lines.append(f"| {label} | {value:,.0f} | {'█' * max(1, round(width * value / top)) if value else ''} |")
    return "\n".join(lines)
