"""A report as a list of blocks (headings, paragraphs, warnings, tables, images), rendered to Markdown
and to one self-contained HTML page (figures inlined as base64 PNG)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: the header line, the rule, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


class Document:
    """Report blocks rendered to Markdown and to self-contained HTML (figures as base64 PNG)."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("heading", (level, text)))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def warning(self, text: str) -> None:
        self.blocks.append(("warning", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def image(self, name: str, caption: str) -> None:
        self.blocks.append(("image", (name, caption)))

    def markdown(self) -> str:
        parts = []
        for kind, value in self.blocks:
            if kind == "heading":
                parts.append("#" * value[0] + " " + value[1])
            elif kind == "paragraph":
                parts.append(value)
            elif kind == "warning":
                parts.append(f"> **{value}**")
            elif kind == "table":
                parts.append(markdown_table(*value))
            else:
                parts.append(f"![{value[1]}]({value[0]})\n\n*{value[1]}*")
        return "\n\n".join(parts) + "\n"

    def html(self, folder: Path, title: str) -> str:
        body = []
        for kind, value in self.blocks:
            if kind == "heading":
                body.append(f"<h{value[0]}>{_inline(value[1])}</h{value[0]}>")
            elif kind == "paragraph":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "warning":
                body.append(f'<p class="warning"><strong>{_inline(value)}</strong></p>')
            elif kind == "table":
                header, rows = value
                head = "".join(f"<th>{_inline(h)}</th>" for h in header)
                cells = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
            else:
                data = base64.b64encode((folder / value[0]).read_bytes()).decode("ascii")
                body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(value[1])}">'
                            f"<figcaption>{_inline(value[1])}</figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.2em .5em;"
                 "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
                 ".warning{background:#fee;border:2px solid #c00;padding:.5em}")
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    """Escape HTML, then render the Markdown **bold** and `code` spans the report uses."""
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)
