"""The README and docs/ work for someone who cloned only this repository.

Every relative link and image in README.md and docs/*.md names a file or folder inside the repository (nothing
outside it, such as ../shared), every #anchor into a markdown file of the repository names one of its headings
(GitHub's slugs), and the README stays a front page of at most 200 lines. No network: web links are skipped.
"""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)[^`].*?\1", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
WEB = ("http://", "https://", "mailto:")


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans: links and headings inside them are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lowercase, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor GitHub makes for the headings of a markdown file (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        seen[base] = seen.get(base, -1) + 1
        seen.setdefault(f"{base}-{seen[base]}" if seen[base] else base, 0)
    return set(seen)


def links(page: Path) -> list[str]:
    """The targets of a page's markdown links and images, web links left out."""
    return [t for t in LINK.findall(_prose(page.read_text(encoding="utf-8"))) if not t.startswith(WEB)]


def problem(page: Path, target: str, root: Path = ROOT) -> str | None:
    """Why a link of `page` does not resolve inside the repository `root`, or None when it does."""
    path, _, anchor = target.partition("#")
    resolved = (page.parent / unquote(path)).resolve() if path else page
    if not resolved.is_relative_to(root):
        return f"{target}: points outside the repository ({resolved})"
    if not resolved.exists():
        return f"{target}: no such file or folder ({resolved.relative_to(root)})"
    if anchor and resolved.suffix == ".md" and unquote(anchor).lower() not in anchors(resolved):
        return f"{target}: {resolved.relative_to(root)} has no heading with the anchor #{anchor}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_inside_the_repository(page):
    problems = [p for t in links(page) if (p := problem(page, t))]
    assert not problems, f"{page.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_readme_is_a_front_page():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (at most {README_MAX_LINES})"


def test_the_checks_catch_what_they_should(tmp_path):
    assert slug("5. macOS and MPS settings that matter") == "5-macos-and-mps-settings-that-matter"
    assert slug("1. Measure: `python -m helpers bench`") == "1-measure-python--m-helpers-bench"
    assert slug("Past 95%: linear probes, layer-decay fine-tuning") == "past-95-linear-probes-layer-decay-fine-tuning"
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "plan.md").write_text("# Plan\n", encoding="utf-8")
    page = repo / "docs" / "page.md"
    page.write_text(
        "# Title\n\n## Title\n\n```\n# not a heading [x](nowhere.md)\n```\n`[y](nowhere.md)` "
        "[z](https://example.com) [w](#title-1) ![v](../README.md)\n",
        encoding="utf-8",
    )
    (repo / "README.md").write_text("[page](docs/page.md#title)\n", encoding="utf-8")
    assert anchors(page) == {"title", "title-1"}
    assert links(page) == ["#title-1", "../README.md"]
    assert [problem(page, t, repo) for t in links(page)] == [None, None]
    assert problem(repo / "README.md", "docs/page.md#title", repo) is None
    assert "outside the repository" in problem(page, "../../shared/plan.md", repo)  # it exists, but not in a clone
    assert "no such file" in problem(page, "missing.md", repo)
    assert "no heading" in problem(page, "#title-2", repo)
    assert "no heading" in problem(repo / "README.md", "docs/page.md#nowhere", repo)
