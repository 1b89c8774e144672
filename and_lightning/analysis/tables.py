"""Result tables written twice: CSV (for code) and Markdown (for people), from one list of row dicts."""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from and_lightning.store.atomic import write_text


def format_cell(value: Any, digits: int = 3) -> str:
    """A table cell as text: floats with `digits` decimals, NaN/None as "n/a", everything else str()."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table of `rows` (missing keys are blank; `|` in cells is escaped)."""
    def cell(row: Mapping[str, Any], col: str) -> str:
        return format_cell(row[col], digits).replace("|", "\\|").replace("\n", " ") if col in row else ""

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV of `rows` with a header line; NaN/None are empty cells, floats keep full precision."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: v for c, v in r.items() if not (isinstance(v, float) and math.isnan(v))} for r in rows)
    return buf.getvalue()


def write_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], stem: str | os.PathLike,
                title: str = "", digits: int = 3) -> dict[str, str]:
    """Write `<stem>.csv` and `<stem>.md` (with an optional `# title` line); returns {"csv": path, "md": path}."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    write_text(csv_path, csv_text(rows, columns))
    head = f"# {title}\n\n" if title else ""
    write_text(md_path, head + markdown_table(rows, columns, digits))
    return {"csv": str(csv_path), "md": str(md_path)}
