"""Citations in the repository point at things a user of the repository has.

Every tracked text file (outside ``benchmarks/results/``, the dated historical reports) must cite the project's own
documents (``docs/design.md`` and the other pages under ``docs/``) or the official sources, never a guidance file kept
outside the repository or an issue number of a tracker users cannot see. Every ``docs/<name>.md`` named anywhere, and
every relative link of a markdown file, must exist.
"""

from __future__ import annotations

import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

#: dated historical reports: they are left as they were written
EXCLUDED = ("benchmarks/results/",)

# Built from pieces so that this file does not match its own patterns.
_OUTSIDE_GUIDE = re.compile(re.escape("DESIGN" + ".md"))
_OUTSIDE_DIR = re.compile(re.escape(".." + "/shared"))
_ISSUE_NUMBER = re.compile(r"\bissues?\s+#?\d", re.IGNORECASE)
_DOCS_PAGE = re.compile(r"(?<![\w/.-])docs/([\w.-]+\.md)\b")
_MD_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@lru_cache(maxsize=1)
def _root_and_files() -> tuple[Path, tuple[str, ...]]:
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=HERE, capture_output=True, text=True,
                             check=True).stdout.strip()
        out = subprocess.run(["git", "ls-files", "-z"], cwd=top, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (git ls-files unavailable)")
    root = Path(top)
    files = tuple(f for f in out.decode().split("\0") if f and not f.startswith(EXCLUDED))
    return root, files


@lru_cache(maxsize=1)
def _texts() -> dict[str, str]:
    """Tracked text files (path relative to the repository root → content); binary and missing files skipped."""
    root, files = _root_and_files()
    out: dict[str, str] = {}
    for rel in files:
        p = root / rel
        if not p.is_file():  # deleted in the work tree, or a submodule
            continue
        data = p.read_bytes()
        if b"\0" in data[:8192]:
            continue
        try:
            out[rel] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return out


def _hits(pattern: re.Pattern[str]) -> list[str]:
    hits = []
    for rel, text in sorted(_texts().items()):
        for n, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{rel}:{n}: {line.strip()[:120]}")
    return hits


def test_there_are_files_to_check():
    texts = _texts()
    assert "README.md" in texts and "docs/design.md" in texts


def test_no_citation_of_the_outside_guide():
    assert _hits(_OUTSIDE_GUIDE) == []


def test_no_path_outside_the_repository():
    assert _hits(_OUTSIDE_DIR) == []


def test_no_issue_numbers():
    """"issue N" means nothing to a reader of the repository: cite docs/design.md or the official source instead."""
    assert _hits(_ISSUE_NUMBER) == []


def test_cited_docs_pages_exist():
    root, _ = _root_and_files()
    missing = []
    for rel, text in sorted(_texts().items()):
        for n, line in enumerate(text.splitlines(), 1):
            for name in _DOCS_PAGE.findall(line):
                if not (root / "docs" / name).is_file():
                    missing.append(f"{rel}:{n}: docs/{name}")
    assert missing == []


def test_relative_markdown_links_exist():
    root, _ = _root_and_files()
    missing = []
    for rel, text in sorted(_texts().items()):
        if not rel.endswith(".md"):
            continue
        base = (root / rel).parent
        for n, line in enumerate(text.splitlines(), 1):
            for target in _MD_LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
                    continue  # a URL (http:, mailto:, ...) or an anchor in the same page
                path = target.split("#", 1)[0]
                if path and not (base / path).exists():
                    missing.append(f"{rel}:{n}: {target}")
    assert missing == []


@pytest.mark.parametrize("word, rest, bad", [
    ("issue", " 12, item 3", True),
    ("Issue", " 9 item 8: one optimizer step", True),
    ("issues", " 14 and 15", True),
    ("issue", " #35", True),
    ("pytorch/vision", "#9085", False),
    ("an issue", " of timing", False),
])
def test_issue_pattern(word, rest, bad):
    """The checker itself: what counts as an issue number (the lines are joined here so that this file passes)."""
    assert bool(_ISSUE_NUMBER.search(word + rest)) == bad
