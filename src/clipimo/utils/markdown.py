"""Markdown tables, shared by the report, the run tables and the CLI printouts."""
from __future__ import annotations

from typing import Any, Sequence


def cell_text(v: Any) -> str:
    """A value made safe for one Markdown table cell."""
    return str(v).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; ``align`` items are 'l' or 'r' (default: first left, rest right)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    lines = ["| " + " | ".join(cell_text(h) for h in header) + " |",
             "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(cell_text(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def quote_warning(text: str) -> str:
    """A bold warning block quote."""
    return f"> **⚠ {text}**"
