"""report.html: one self-contained page from report.md."""

from __future__ import annotations

import re

import pytest

from nanoact.analysis.html import to_html, write_html
from nanoact.errors import NanoactError

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def test_markdown_becomes_one_page_with_embedded_plots_and_tables(tmp_path):
    (tmp_path / "loss_curves.png").write_bytes(PNG)
    md = "\n".join([
        "# nanoact report: smoke", "", "**Headline:** relu *lowest*; see `summary.json` and [docs](../REPORT.md).",
        "", "## Runs", "", "| activation | val loss |", "|---|---|", "| relu | 2.38 |", "| <b>x</b> | 1 < 2 |", "",
        "- one", "- two", "", "![Loss curves](loss_curves.png)", "*Loss curves*", "",
        "*Generated from `sqlite:////tmp/x*y.db`; every number traces to runs.*",
        "<details><summary>Resolved config</summary>", "", "| param | value |", "|---|---|", "| `train.lr` | 0.003 |",
        "", "</details>", "", "<script>alert(1)</script>",
    ])
    page = to_html(md, tmp_path, "smoke")
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    imgs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert imgs and all(src.startswith("data:image/png;base64,") for src in imgs)
    assert "<table>" in page and "<th>activation</th>" in page and "<td>relu</td>" in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "1 &lt; 2" in page  # table text is escaped, not interpreted
    assert "<details><summary>Resolved config</summary>" in page and "</details>" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<strong>Headline:</strong>" in page and "<em>lowest</em>" in page and "<code>summary.json</code>" in page
    assert "<em>Generated from <code>sqlite:////tmp/x*y.db</code>; every number traces to runs.</em>" in page
    assert "<ul><li>one</li><li>two</li></ul>" in page and '<a href="../REPORT.md">docs</a>' in page
    assert not re.search(r'(src|href)="https?://', page)  # no external assets


def test_write_html_beside_the_markdown_and_missing_plot_is_an_error(tmp_path):
    md = tmp_path / "report.md"
    md.write_text("# r\n\n![plot](missing.png)\n")
    with pytest.raises(NanoactError, match="missing.png"):
        write_html(md)
    (tmp_path / "missing.png").write_bytes(PNG)
    assert write_html(md) == tmp_path / "report.html" and "data:image/png" in (tmp_path / "report.html").read_text()
