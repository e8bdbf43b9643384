"""The README's example runs as written, and the README and the documentation quote no dated
runs, commit hashes or issue numbers.

The README is the front page: what jaxjac is, the two commands, a short tour and links into the
documentation site (docs/), whose own examples tests/test_docs.py runs. Its Python blocks run,
in order, in one fresh interpreter with JAX's default settings (as a user runs them).
"""

import re
from pathlib import Path

import pytest

from tests.helpers import run_code_blocks

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOC_PAGES = sorted((ROOT / "docs").rglob("*.md"))


_MONTH = r"January|February|March|April|May|June|July|August|September|October|November|December"
# What a reference page must not quote: performance history lives in benchmarks/README.md.
FORBIDDEN = {
    "date": rf"\b\d{{4}}-\d\d-\d\d\b|\b\d{{1,2}} (?:{_MONTH})\b|\b(?:{_MONTH}) \d{{4}}\b",
    "commit hash": r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b",
    "issue number": r"(?i)\b(?:issue|PR|pull request) ?#?\d+|(?<![\w&])#\d+\b",
    "session diary": r"(?i)\bthis (?:session|machine)\b",
}


def forbidden_quotes(text: str) -> dict[str, list[str]]:
    """Every date, commit hash, issue number or session diary phrase in ``text``, by kind."""
    return {kind: found for kind, p in FORBIDDEN.items() if (found := re.findall(p, text))}


def code_blocks(text: str, kind: str) -> list[str]:
    """The fenced ``kind`` blocks of a Markdown text, in order."""
    return re.findall(rf"```{kind}\n(.*?)```", text, flags=re.S)


def test_python_blocks_run(tmp_path):
    blocks = code_blocks(README.read_text(), "python")
    assert len(blocks) >= 1
    run_code_blocks([(f"README block {i}", b) for i, b in enumerate(blocks)], tmp_path)


def test_readme_links_resolve():
    """Every relative link of the README names a file of the repository."""
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text()):
        if "://" not in target:
            assert (ROOT / target).is_file(), target
    assert "(benchmarks/README.md)" in README.read_text()


@pytest.mark.parametrize("page", [README, *DOC_PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_quotes_no_dates_hashes_or_issues(page):
    """Dated runs, commit hashes and issue numbers stay out of the README and the documentation
    (the failure lists them); performance history lives in benchmarks/README.md."""
    found = forbidden_quotes(page.read_text())
    assert not found, found
