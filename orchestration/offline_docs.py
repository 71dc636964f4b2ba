"""Quality results that read offline (issue 19).

GX Data Docs load Bootstrap, jQuery, Font Awesome and Vega from CDNs and the GX logo from a
remote bucket (with the data context id in its URL), so offline the site is unstyled and the
validation list, which bootstrap-table draws in the browser, stays empty. Two answers here:

* `render_quality_html`: one self-contained HTML page (inline CSS, no scripts, no external
  reference) with every validation's expectations, observed values and verdicts;
* `strip_remote_references`: rewrites a built GX site in place so no page references an outside
  host (remote stylesheets, scripts and images removed, outside links turned into plain text);
  its own local CSS/JS stay. The self-contained page is the readable one; the stripped site is
  kept for people who know GX's layout.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REMOTE = re.compile(r"""https?://[^\s"'<>)]+""", re.IGNORECASE)
_REMOTE_TAG = re.compile(
    r"""<(?:link|script|img|iframe|source)\b[^>]*?(?:href|src)\s*=\s*["'](?:https?:)?//[^"']*["'][^>]*>(?:\s*</script>)?""",
    re.IGNORECASE,
)
_REMOTE_ANCHOR = re.compile(
    r"""<a\b[^>]*?href\s*=\s*["'](?:https?:)?//[^"']*["'][^>]*>(.*?)</a>""", re.IGNORECASE | re.DOTALL
)
_CSS_IMPORT = re.compile(r"""@import\s+(?:url\()?["']?(?:https?:)?//[^;]*;""", re.IGNORECASE)

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;
vertical-align:top}th{background:#f2f2f2}.pass{color:#176117}.fail{color:#a00;font-weight:bold}
.warn{color:#8a5a00;font-weight:bold}code{font-size:.95em}details{margin:.3em 0}
"""


def remote_references(text: str) -> list[str]:
    """Every `http(s)://…` reference in a page (SVG/XML namespace URIs included: a test wants
    the list empty)."""
    return REMOTE.findall(text)


def strip_remote_references(site: Path) -> int:
    """Remove references to outside hosts from every HTML/CSS/JS file of a built site; returns
    how many files changed."""
    changed = 0
    for path in sorted(site.rglob("*")):
        if path.suffix.lower() not in {".html", ".htm", ".css", ".js"} or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        new = _REMOTE_TAG.sub("", text)
        new = _REMOTE_ANCHOR.sub(r"\1", new)
        new = _CSS_IMPORT.sub("", new)
        new = REMOTE.sub("#", new)  # whatever is left (inline URLs in scripts, namespace strings)
        if new != text:
            path.write_text(new)
            changed += 1
    return changed


def _cell(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _verdict(doc: Mapping[str, Any]) -> str:
    if doc.get("passed"):
        return '<span class="pass">passed</span>' + (
            ' <span class="warn">(WARN)</span>' if doc.get("severity") else ""
        )
    return f'<span class="fail">failed ({_cell(doc.get("severity"))})</span>'


def _results_table(results: Iterable[Mapping[str, Any]]) -> str:
    rows = [
        "<tr><th></th><th>severity</th><th>expectation</th><th>column</th><th>observed</th><th>expected</th></tr>"
    ]
    for r in results:
        mark = '<span class="pass">pass</span>' if r.get("success") else '<span class="fail">FAIL</span>'
        rows.append(
            f"<tr><td>{mark}</td><td>{_cell(r.get('severity'))}</td><td><code>{_cell(r.get('name'))}</code></td>"
            f"<td>{_cell(r.get('column'))}</td><td>{_cell(r.get('observed'))}</td><td>{_cell(r.get('expected'))}</td></tr>"
        )
    return "<table>" + "".join(rows) + "</table>"


def render_quality_html(
    docs: list[dict], aggregate: Mapping[str, Any], title: str = "avatarpipe quality report"
) -> str:
    """One self-contained page: pass rates per check, then each upload's latest validations.
    Upload ids are shown (opaque); subject ids are not."""
    parts = [(f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_cell(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{_cell(title)}</h1>")]  # fmt: skip
    parts.append(
        f"<p>{aggregate.get('uploads', 0)} uploads, {aggregate.get('check_runs', 0)} check runs.</p>"
    )
    rows = [
        "<tr><th>check</th><th>validated</th><th>passed</th><th>ERROR</th><th>WARN</th><th>pass rate</th></tr>"
    ]
    for name, c in (aggregate.get("checks") or {}).items():
        rows.append(f"<tr><td>{_cell(name)}</td><td>{c['validated']}</td><td>{c['passed']}</td><td>{c['failed_error']}</td>"
                    f"<td>{c['failed_warn']}</td><td>{c['pass_rate']:.0%}</td></tr>")  # fmt: skip
    parts.append("<h2>Checks</h2><table>" + "".join(rows) + "</table>")
    parts.append("<h2>Validations (newest per upload and check)</h2>")
    for doc in sorted(docs, key=lambda d: (d["upload_id"], d["check_name"])):
        stats = doc.get("statistics") or {}
        parts.append(
            f"<details><summary><code>{_cell(doc['upload_id'])}</code> {_cell(doc['check_name'])}: {_verdict(doc)} "
            f"({stats.get('successful', '?')}/{stats.get('evaluated', '?')}), suite {_cell(doc.get('suite_name'))} "
            f"<code>{_cell((doc.get('suite_sha') or '')[:12])}</code>, {_cell(doc.get('created_at'))}</summary>"
            f"{_results_table(doc.get('results') or [])}</details>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)
