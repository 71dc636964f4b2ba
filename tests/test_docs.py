"""The documentation stays current: a short README, every error code and link accounted for."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from models.errors import ErrorCode

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def test_readme_is_a_front_page_not_a_manual():
    assert len((REPO / "README.md").read_text().splitlines()) <= 300


def test_every_error_code_is_documented():
    page = (REPO / "docs" / "errors.md").read_text()
    assert [c.value for c in ErrorCode if f"`{c.value}`" not in page] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page: Path):
    targets = [m.group(1) for m in LINK.finditer(page.read_text()) if "://" not in m.group(1)]
    assert [t for t in targets if not (page.parent / t).exists()] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_anchors_name_a_heading(page: Path):
    """`page.md#anchor` links point at a heading that exists (GitHub's anchor rules)."""

    def anchors(path: Path) -> set[str]:
        heads = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.MULTILINE)
        return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}

    bad = []
    for m in LINK.finditer(page.read_text()):
        target, anchor = m.group(1), m.group(2)
        linked = page.parent / target
        if (
            anchor
            and "://" not in target
            and target.endswith(".md")
            and linked.exists()
            and anchor[1:] not in anchors(linked)
        ):
            bad.append(target + anchor)
    assert bad == []


def test_regenerated_reports_keep_their_recorded_sections(tmp_path: Path):
    from orchestration.reports import RECORDED_MARKER, write_report

    report = tmp_path / "EVAL.md"
    report.write_text(f"# old run\n\n{RECORDED_MARKER}\n\n## Recorded\n\nby hand\n")
    write_report(report, "# new run\n")
    assert report.read_text() == f"# new run\n\n{RECORDED_MARKER}\n\n## Recorded\n\nby hand\n"
    write_report(tmp_path / "fresh.md", "# first run\n")
    assert (tmp_path / "fresh.md").read_text() == "# first run\n"
