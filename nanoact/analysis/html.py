"""report.html: the markdown report as one self-contained page (plots as data URIs, styled tables, no external
assets), so that MLflow's artifact viewer and a browser show it whole. The markdown stays the source of truth.

The converter covers the markdown that ``render`` writes: headings, paragraphs, ``-`` lists, pipe tables,
images, ``**bold**``, ``*italic*``, `` `code` ``, links, rules, and the raw ``<details>``/``<summary>``/``<br>``
tags it uses. Anything else is shown as escaped text, never interpreted.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

RAW_TAGS = re.compile(r"^</?(details|summary)>|^<details><summary>")
STYLE = """
body{font:15px/1.5 -apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1f2328}
h1,h2,h3,h4{line-height:1.25;margin:1.4em 0 .5em}h1{font-size:1.8em}
h2{border-bottom:1px solid #d1d9e0;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0;font-size:13px;display:block;overflow-x:auto}
th,td{border:1px solid #d1d9e0;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f6f8fa}
tr:nth-child(even) td{background:#fbfcfd}code{background:#f0f2f4;padding:1px 4px;border-radius:4px;font-size:90%}
img{max-width:100%;border:1px solid #e5e7ea;margin:.5em 0}details{margin:.8em 0}summary{cursor:pointer;font-weight:600}
hr{border:0;border-top:1px solid #d1d9e0;margin:2em 0}
"""


def inline(text: str, folder: Path) -> str:
    """Escape a line of markdown and apply its inline markup (images become data URIs from ``folder``).

    Code spans, images and links become placeholders first, so emphasis may span them (``*from `x`*``) and
    nothing inside a code span is read as markup.
    """
    pieces: list[str] = []

    def hold(html_text: str) -> str:
        pieces.append(html_text)
        return f"\x00{len(pieces) - 1}\x00"

    def swap(m: re.Match) -> str:
        alt, src, label, href, code = m.groups()
        if src is not None:
            return hold(f'<img alt="{html.escape(alt)}" src="{data_uri(folder / src)}">')
        if label is not None:
            safe = href if re.match(r"^(https?://|#|[\w./-]+$)", href) else "#"
            return hold(f'<a href="{html.escape(safe)}">{_emphasis(html.escape(label, quote=False))}</a>')
        if code is not None:
            return hold(f"<code>{html.escape(code, quote=False)}</code>")
        return hold("<br>")

    marked = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)|\[([^\]]+)\]\(([^)\s]+)\)|`([^`]+)`|<br>", swap,
                    text.replace("\x00", ""))
    out = _emphasis(html.escape(marked, quote=False))
    return re.sub(r"\x00(\d+)\x00", lambda m: pieces[int(m.group(1))], out)


def _emphasis(text: str) -> str:
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", text)


def data_uri(path: Path) -> str:
    if not path.is_file():
        from nanoact.errors import NanoactError

        raise NanoactError(f"report.html: the plot {path} is missing")
    kind = {"png": "image/png", "svg": "image/svg+xml", "jpg": "image/jpeg"}.get(path.suffix.lstrip("."), "")
    return f"data:{kind or 'application/octet-stream'};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _table(rows: list[str], folder: Path) -> str:
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
    head, body = cells[0], [r for r in cells[2:]]
    th = "".join(f"<th>{inline(c, folder)}</th>" for c in head)
    tb = "".join("<tr>" + "".join(f"<td>{inline(c, folder)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{tb}</tbody></table>"


def to_html(markdown: str, folder: Path, title: str) -> str:
    """The page for ``markdown`` whose images are files in ``folder``."""
    blocks, para, lines = [], [], markdown.splitlines()

    def close_para() -> None:
        if para:
            blocks.append("<p>" + "<br>".join(inline(p, folder) for p in para) + "</p>")
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|?$", lines[i + 1]):
            close_para()
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            blocks.append(_table(lines[i:j], folder))
            i = j
            continue
        if line.startswith("- "):
            close_para()
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:], folder)}</li>")
                i += 1
            blocks.append("<ul>" + "".join(items) + "</ul>")
            continue
        _block(line, folder, blocks, para, close_para)
        i += 1
    close_para()
    body = "\n".join(blocks)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def _block(line: str, folder: Path, blocks: list[str], para: list[str], close_para) -> None:
    heading = re.match(r"^(#{1,4}) (.*)$", line)
    if heading:
        close_para()
        n = len(heading.group(1))
        blocks.append(f"<h{n}>{inline(heading.group(2), folder)}</h{n}>")
    elif not line.strip():
        close_para()
    elif line.strip() == "---":
        close_para()
        blocks.append("<hr>")
    elif RAW_TAGS.match(line.strip()):
        close_para()
        blocks.append(_raw(line.strip(), folder))
    else:
        para.append(line)


def _raw(line: str, folder: Path) -> str:
    """``<details>``, ``</details>`` and ``<details><summary>text</summary>``: kept as tags, text escaped."""
    m = re.match(r"^<details><summary>(.*)</summary>(.*)$", line)
    if m:
        return f"<details><summary>{inline(m.group(1), folder)}</summary>{inline(m.group(2), folder)}"
    return {"<details>": "<details>", "</details>": "</details>", "<summary>": "<summary>",
            "</summary>": "</summary>"}.get(line, html.escape(line))


def write_html(report_md: Path) -> Path:
    """Write ``report.html`` beside ``report_md``."""
    out = report_md.with_suffix(".html")
    text = report_md.read_text(encoding="utf-8")
    title = text.splitlines()[0].lstrip("# ") if text else "nanoact report"
    out.write_text(to_html(text, report_md.parent, title), encoding="utf-8")
    return out
