"""Every ```python block of the user docs runs as written: README.md, docs/*.md and styleda_fast/**/README.md.

A block runs in a fresh namespace, in a fresh temporary working directory. HTML comments right above a block (only
blank lines between) adjust it without showing anything to a reader of the rendered page:

* ``<!-- setup: CODE -->`` runs CODE first, in the block's namespace: the made-up inputs a block refers to
  (``from snippet_inputs import ...``: ``tests/docs/snippet_inputs.py`` builds them);
* ``<!-- sub: OLD => NEW -->`` replaces the text OLD of the block by NEW before it runs (a download of pretrained
  weights by random weights, 100 optimization steps by one); OLD must occur in the block;
* ``<!-- skip: REASON -->`` skips the block with that reason (it needs a GPU or the network);
* ``<!-- slow -->`` marks the block's test ``slow`` (left out of ``pytest -m "not slow"``).
"""

from __future__ import annotations

import dataclasses
import linecache
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # snippet_inputs, for the setup lines

_FENCE = re.compile(r"^```(\w*)\s*$")
_DIRECTIVE = re.compile(r"<!--\s*(setup|sub|skip|slow)\b:?(.*?)-->", re.DOTALL)


@dataclasses.dataclass
class Snippet:
    """One ```python block: where it is, its code, and the directives written above it."""

    path: str
    line: int
    code: str
    setup: list[str] = dataclasses.field(default_factory=list)
    subs: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    skip: str | None = None
    slow: bool = False

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    def program(self) -> str:
        """The block with its substitutions made (the setup lines run before it, apart)."""
        code = self.code
        for old, new in self.subs:
            if old not in code:
                raise ValueError(f"{self.id}: <!-- sub: {old} => ... --> does not occur in the block")
            code = code.replace(old, new)
        return code


def extract(text: str, path: str) -> list[Snippet]:
    """The ```python blocks of a markdown ``text``, each with the directives of the comments right above it."""
    lines = text.splitlines()
    snippets, k = [], 0
    while k < len(lines):
        fence = _FENCE.match(lines[k])
        if not fence:
            k += 1
            continue
        end = k + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        if fence.group(1) == "python":
            snippet = Snippet(path, k + 1, "\n".join(lines[k + 1 : end]))
            _read_directives(_comments_above(lines, k), snippet)
            snippets.append(snippet)
        k = end + 1
    return snippets


def _comments_above(lines: list[str], k: int) -> str:
    """The HTML comments (possibly several, possibly multi-line) between the previous text and line ``k``."""
    start = k
    while start > 0:
        above = lines[start - 1].strip()
        if not above:
            start -= 1
        elif above.endswith("-->"):
            begin = start - 1
            while begin >= 0 and "<!--" not in lines[begin]:
                begin -= 1
            if begin < 0 or not lines[begin].lstrip().startswith("<!--"):
                break
            start = begin
        else:
            break
    return "\n".join(lines[start:k])


def _read_directives(comments: str, snippet: Snippet) -> None:
    for kind, body in _DIRECTIVE.findall(comments):
        body = body.strip()
        if kind == "setup":
            snippet.setup.append(body)
        elif kind == "sub":
            old, sep, new = body.partition("=>")
            if not sep:
                raise ValueError(f"{snippet.id}: <!-- sub: OLD => NEW --> needs '=>', got {body!r}")
            snippet.subs.append((old.strip(), new.strip()))
        elif kind == "skip":
            snippet.skip = body or "marked skip"
        else:
            snippet.slow = True


def doc_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return files + sorted((ROOT / "styleda_fast").rglob("README.md"))


def all_snippets() -> list[Snippet]:
    return [s for f in doc_files() for s in extract(f.read_text(), str(f.relative_to(ROOT)))]


def _params():
    params = []
    for s in all_snippets():
        marks = [pytest.mark.skip(reason=s.skip)] if s.skip else []
        marks += [pytest.mark.slow] if s.slow else []
        params.append(pytest.param(s, id=s.id, marks=marks))
    return params


def run_snippet(snippet: Snippet, workdir: Path) -> dict:
    """Run ``snippet`` (after its setup lines) in ``workdir``; returns its namespace. A failure's traceback names
    the markdown file and the line of the block where it happened."""
    namespace = {"__name__": "__snippet__"}
    code = "\n" * snippet.line + snippet.program()  # line numbers of the markdown file
    linecache.cache[snippet.path] = (len(code), None, code.splitlines(keepends=True), snippet.path)
    here = os.getcwd()
    os.chdir(workdir)
    try:
        for setup in snippet.setup:
            exec(compile(setup, f"{snippet.id} (setup)", "exec"), namespace)
        exec(compile(code, snippet.path, "exec"), namespace)
    finally:
        os.chdir(here)
    return namespace


@pytest.mark.parametrize("snippet", _params())
def test_snippet_runs(snippet: Snippet, tmp_path):
    run_snippet(snippet, tmp_path)


def test_snippets_found_in_every_user_doc():
    """The extraction sees the blocks (a test over zero blocks would pass whatever the docs say)."""
    by_file = {}
    for s in all_snippets():
        by_file[s.path] = by_file.get(s.path, 0) + 1
    for path in ("README.md", "docs/jobs.md", "docs/MIGRATION.md"):
        assert by_file.get(path, 0) >= 1, f"no ```python block found in {path}"


def test_broken_snippet_fails(tmp_path):
    """A block using a name it never defines fails with NameError (the README's first snippet once did)."""
    text = "Intro.\n\n```python\ny = torch.zeros(3)\n```\n"
    (snippet,) = extract(text, "doc.md")
    with pytest.raises(NameError, match="torch"):
        run_snippet(snippet, tmp_path)


def test_directives_are_read(tmp_path):
    text = (
        "<!-- setup: import math -->\n"
        "<!-- sub: 100 => 1 -->\n\n"
        "```python\nsteps = 100\nroot = math.sqrt(steps)\n```\n\n"
        "Text in between.\n\n"
        "<!-- skip: needs a GPU -->\n"
        "```python\nimport torch\ntorch.zeros(1, device='cuda')\n```\n"
        "<!-- slow -->\n"
        "```python\nx = 1\n```\n"
        "```bash\nnot python\n```\n"
    )
    first, second, third = extract(text, "doc.md")
    assert run_snippet(first, tmp_path)["root"] == 1.0
    assert (first.skip, second.skip, third.skip) == (None, "needs a GPU", None)
    assert (first.slow, second.slow, third.slow) == (False, False, True)
    assert second.setup == [] and second.subs == []


def test_sub_that_does_not_occur_is_an_error(tmp_path):
    (snippet,) = extract("<!-- sub: pretrained='openai' => pretrained=None -->\n```python\nx = 1\n```\n", "d.md")
    with pytest.raises(ValueError, match="does not occur"):
        run_snippet(snippet, tmp_path)


def test_relative_links_resolve():
    """Every relative link of the docs (and of benchmarks/RESULTS.md) names a file or folder of the repository."""
    files = [*doc_files(), ROOT / "CONTRIBUTING.md", ROOT / "benchmarks" / "RESULTS.md"]
    broken = []
    for f in files:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", f.read_text()):
            if "://" not in target and not (f.parent / target).exists():
                broken.append(f"{f.relative_to(ROOT)}: {target}")
    assert not broken, broken
