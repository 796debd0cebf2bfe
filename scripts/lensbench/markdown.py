"""Markdown for the reports: tables and millisecond figures."""

from __future__ import annotations


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def fmt_ms(v) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 10 else f"{v:.1f}"


def provenance(meta: dict) -> dict[str, str]:
    """The report header's fields (templates' $date, $commit, $dirty, $cpu, $cores, $mem_gb) from machine.describe()."""
    return {
        "date": meta["date"],
        "commit": meta["git"]["commit"],
        "dirty": " + uncommitted src/ changes" if meta["git"]["dirty"] else "",
        "cpu": meta["cpu"],
        "cores": str(meta["cores"]),
        "mem_gb": str(meta["mem_gb"]),
    }
