"""Every relative link in README.md and docs/*.md leads somewhere: the file exists, and a
`#anchor` names a heading of the target markdown file (by GitHub's rule for heading anchors).
Links with a scheme (https:, http:, mailto:) are not followed."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s{0,3}(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target), an optional "title" after the target; text may hold [brackets].
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(path: Path):
    """(line number, text) of the lines outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lowercase, punctuation other than '-'
    and '_' dropped, each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = CODE_SPAN.sub(lambda m: m.group(2).strip(), text)
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a markdown file offers: its headings' slugs (a repeated slug gets -1, -2, ...,
    as on GitHub) and explicit <a name=...> / <a id=...>."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(path):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path):
    """(line number, target) of every link in the prose of a markdown file (code is not prose)."""
    for number, line in prose_lines(path):
        text = CODE_SPAN.sub(lambda m: "code", line)
        for target in INLINE_LINK.findall(text):
            yield number, target
        definition = REFERENCE_DEF.match(text)
        if definition:
            yield number, definition.group(1)


def broken_links(page: Path) -> list[str]:
    problems = []
    where = page.relative_to(ROOT)
    for number, target in links(page):
        if not target:
            problems.append(f"{where}:{number}: empty link target")
            continue
        if SCHEME.match(target):
            continue
        file_part, _, fragment = target.partition("#")
        dest = page if not file_part else (page.parent / unquote(file_part)).resolve()
        if dest != page and ROOT not in dest.parents:
            problems.append(f"{where}:{number}: {target} leads outside the repository")
            continue
        if not dest.exists():
            problems.append(f"{where}:{number}: {target}: {dest.relative_to(ROOT)} does not exist")
            continue
        if fragment and dest.suffix == ".md":
            if dest.is_dir() or unquote(fragment) not in anchors(dest):
                problems.append(f"{where}:{number}: {target}: no heading with anchor "
                                f"#{fragment} in {dest.relative_to(ROOT)}")
    return problems


def test_slugs_follow_github():
    assert slug("CIFAR-10, short budget (real data): 1 and 2 workers, one experiment") == \
        "cifar-10-short-budget-real-data-1-and-2-workers-one-experiment"
    assert slug("Data parallelism: workers make it faster, not different") == \
        "data-parallelism-workers-make-it-faster-not-different"
    assert slug("The `tune_spaces/demo.yaml` sweep") == "the-tune_spacesdemoyaml-sweep"
    assert slug("[Results](results.md) on **real** data") == "results-on-real-data"


def test_every_relative_link_in_readme_and_docs_resolves():
    assert (ROOT / "docs").is_dir() and len(PAGES) > 1, "docs/*.md pages are missing"
    problems = [problem for page in PAGES for problem in broken_links(page)]
    assert not problems, f"{len(problems)} broken link(s) in README.md and docs/:\n" + "\n".join(problems)
