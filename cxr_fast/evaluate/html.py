"""Tiny HTML builders for the self-contained report pages; every piece of text goes through html.escape."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}img{max-width:100%}
.note{color:#8a5a00}.err{color:#a00}.lead{font-size:1.1em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.6em}h3{margin-top:1.2em}details>summary{cursor:pointer;color:#225;margin:.5em 0}
@media (max-width:900px){td.num{white-space:normal}td,th{padding:3px 4px}}"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


def fmt_ci(ci: Sequence[float] | None, digits: int = 3) -> str:
    return "-" if not ci else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def para(text: str, cls: str = "") -> str:
    return f'<p class="{esc(cls)}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def note(text: str) -> str:
    """A sentence saying what is missing and why."""
    return para(text, "note")


_NUMERIC = re.compile(r"^[\[\]\d.,+\-\s%]*$|^-$")


def _td(c) -> str:
    """A cell: numbers (and intervals like [0.1, 0.2]) right-aligned, text left-aligned."""
    text = fmt(c)
    num = c is None or isinstance(c, (int, float)) or bool(_NUMERIC.match(text))
    return f'<td class="num">{esc(text)}</td>' if num else f"<td>{esc(text)}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence], groups: Sequence[tuple[str, int]] = ()) -> str:
    """A table; `groups` adds a header row above `headers` of (title, number of columns spanned)."""
    top = "".join(f'<th colspan="{n}">{esc(t)}</th>' if n > 1 else f"<th>{esc(t)}</th>" for t, n in groups)
    head = (f"<tr>{top}</tr>" if groups else "") + "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>"
    body = "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def details(summary: str, body: str) -> str:
    """A folded block: `summary` shown, `body` on a click (configuration, long lists)."""
    return f"<details><summary>{esc(summary)}</summary>\n{body}\n</details>"


def image(b64_png: str, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{b64_png}">'


def section(title: str, body: str, level: int = 2) -> str:
    """A titled block: level 2 for the page's sections, 3 for the parts of one."""
    return f"<section><h{level}>{esc(title)}</h{level}>\n{body}\n</section>"


def page(title: str, parts: Sequence[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n<h1>{esc(title)}</h1>\n" + "\n".join(parts) + "\n</body></html>\n")
