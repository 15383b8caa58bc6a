"""Rendering a report: its sections (Markdown text and figures) as ``report.md`` and as one
self-contained ``report.html`` (figures embedded as PNG)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Section:
    title: str
    blocks: list[Any]  # a block is Markdown text or a Figure
    folded: bool = False  # rendered inside <details>: reference material, after the answer


class Figure:
    """A PNG with its caption (Markdown)."""

    def __init__(self, path: Path, caption: str):
        self.path, self.caption = Path(path), caption


def render_markdown(title: str, sections: list[Section], run_dir: Path) -> str:
    out = [f"# edgexfer report: {title}", ""]
    for section in sections:
        if section.folded:
            out += ["<details>", f"<summary><b>{html.escape(section.title)}</b></summary>", ""]
        else:
            out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Figure):
                out += [
                    f"![{block.caption}]({block.path.relative_to(run_dir).as_posix()})",
                    "",
                    f"*{block.caption}*",
                    "",
                ]
            elif block:
                out += [block, ""]
        if section.folded:
            out += ["</details>", ""]
    return "\n".join(out)


def markdown_to_html(text: str) -> str:
    """CommonMark with tables, by markdown-it-py (rich already depends on it). Raw HTML in the
    text is escaped, not passed through: stage names and paths come from files."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def render_html(title: str, sections: list[Section]) -> str:
    body = [f"<h1>edgexfer report: {html.escape(title)}</h1>"]
    for section in sections:
        parts = []
        for block in section.blocks:
            if isinstance(block, Figure):
                data = base64.b64encode(block.path.read_bytes()).decode()
                caption = markdown_to_html(block.caption).strip().removeprefix("<p>").removesuffix("</p>")
                parts.append(
                    f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{caption}</figcaption></figure>"
                )
            elif block:
                parts.append(markdown_to_html(block))
        slug = re.sub(r"[^a-z0-9]+", "-", section.title.lower()).strip("-")
        if section.folded:
            body.append(
                f'<details id="{slug}"><summary>{html.escape(section.title)}</summary>{"".join(parts)}</details>'
            )
        else:
            body.append(f'<section id="{slug}"><h2>{html.escape(section.title)}</h2>{"".join(parts)}</section>')
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222;"
        "line-height:1.4}h1{font-size:1.4em;margin:0.3em 0}h2{font-size:1.2em;margin:1em 0 0.4em}"
        "table{border-collapse:collapse;margin:0.4em 0 1em;font-size:0.92em}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right;white-space:nowrap}"
        "td:first-child,th:first-child,td:nth-child(2),th:nth-child(2)"
        "{text-align:left;white-space:normal}th{background:#f3f3f3}p{margin:0.4em 0}img{max-width:100%}"
        "figcaption{color:#555;font-size:0.9em}code{background:#f3f3f3;padding:0 3px}"
        "details{margin:0.6em 0}summary{font-weight:bold;font-size:1.1em;cursor:pointer}"
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>edgexfer report: {html.escape(title)}</title><style>{style}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
