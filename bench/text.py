"""Plain-text tables for the terminal: the one table formatter the CLI, the report's compare
and the harness checks share. It imports nothing of archbench."""

from __future__ import annotations


def text_table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    """Columns padded to width under a dashed rule; the columns numbered in `right` align right."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def format_table(rows: list[dict], columns: list[str]) -> str:
    """`rows` (dicts) under `columns`: integers get thousands separators and align right; None
    is blank; anything else is its str()."""

    def cell(v) -> str:
        if v is None:
            return ""
        return f"{v:,}" if isinstance(v, int) else str(v)

    numeric = {
        i for i, c in enumerate(columns) if all(isinstance(r.get(c), int | None) for r in rows)
    }
    return text_table(columns, [[cell(r.get(c)) for c in columns] for r in rows], numeric)
