"""One self-contained HTML page: figures embedded as base64 PNG, captions, findings."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: PNG resolution (dots per inch) of every figure in a report or comparison page
DPI = 110

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #1d1d1f; background: #fafafa; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 2em; }
h3 { margin-bottom: 0.3em; }
.meta { color: #555; font-size: 0.92em; }
.meta td { padding: 1px 12px 1px 0; vertical-align: top; }
.demo { background: #fff4d6; border: 1px solid #e8c66a; padding: 8px 12px; border-radius: 4px; }
figure { margin: 18px 0 30px; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.92em; color: #333; margin-top: 6px; line-height: 1.4; }
figcaption code, li code { background: #f2f2f2; padding: 0 3px; border-radius: 3px; }
.findings li { margin: 4px 0; }
.skipped { font-size: 0.85em; color: #7a2a2a; }
"""


@dataclass
class RenderedFigure:
    section: str
    slug: str
    title: str
    caption: str
    png: Path
    pdf: Path | None = None


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render_page(*, title: str, meta_rows: Sequence[tuple[str, str]], banner: str | None,
                findings: Sequence[str], sections: Sequence[tuple[str, str]],
                figures: Sequence[RenderedFigure], skipped: Sequence[tuple[str, str]],
                notes: Sequence[str], explorer: str = "") -> str:
    """Assemble the page. ``sections`` is (key, heading) in order; captions may hold HTML."""
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body><main>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if banner:
        parts.append(f'<p class="demo">{html.escape(banner)}</p>')
    parts.append('<table class="meta">')
    parts += [f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(str(v))}</td></tr>"
              for k, v in meta_rows]
    parts.append("</table>")
    if findings:
        parts.append("<h2>Main findings</h2><p class='meta'>Computed from the saved numbers "
                     "each time the report is drawn.</p><ul class='findings'>")
        parts += [f"<li>{html.escape(f)}</li>" for f in findings]
        parts.append("</ul>")
    for key, heading in sections:
        in_section = [f for f in figures if f.section == key]
        if not in_section:
            continue
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for fig in in_section:
            parts.append(f'<figure id="{fig.slug}"><h3>{html.escape(fig.title)}</h3>')
            parts.append(_img_tag(fig.png, fig.title))
            parts.append(f"<figcaption>{fig.caption}</figcaption></figure>")
    if notes:
        parts.append("<h2>Notes</h2><ul>")
        parts += [f"<li>{n}</li>" for n in notes]
        parts.append("</ul>")
    if skipped:
        parts.append(f"<h2>Skipped images ({len(skipped)})</h2><ul class='skipped'>")
        parts += [f"<li><code>{html.escape(p)}</code>: {html.escape(r)}</li>"
                  for p, r in skipped[:200]]
        if len(skipped) > 200:
            parts.append(f"<li>... {len(skipped) - 200} more in manifest.json</li>")
        parts.append("</ul>")
    if explorer:  # the interactive explorer (vitprobe.report.explorer), after the figures
        parts.append(explorer)
    parts.append("</main></body></html>")
    return "\n".join(parts)
