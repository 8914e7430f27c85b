"""Every ```python block of README.md and docs/**/*.md runs as written.

Each block is executed on its own, in a fresh namespace and a temporary working directory (so that nothing is
written into the repository), with ``RuntimeWarning`` turned into an error: an example whose inner loop
diverges, whose CG stops early or whose Neumann series does not decay fails here. A block is skipped only when
the line right before its fence (blank lines aside) is a marker with a reason::

    <!-- snippet: skip (reason: trains for 20 minutes) -->
"""
from __future__ import annotations

import re
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: the info strings of a fence that mark Python code
PYTHON_INFO = ("python", "py", "python3")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,}|~{3,})[ \t]*(?P<info>[^`]*?)[ \t]*$")
_MARKER = re.compile(r"^<!--\s*snippet:(?P<body>.*?)-->$")
_SKIP = re.compile(r"^\s*skip\s*(?:\(\s*reason:\s*(?P<reason>[^)]*?)\s*\))?\s*$")


@dataclass(frozen=True)
class Snippet:
    """One fenced Python block: its file, the line of its opening fence, its code and its marker (if any)."""

    path: Path
    line: int
    code: str
    marker: Optional[str]

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:L{self.line}"


def doc_files() -> List[Path]:
    """README.md and every Markdown file under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def parse_snippets(text: str, path: Path) -> List[Snippet]:
    """The Python blocks of one Markdown text (fences of other languages are skipped whole).

    Raises
    ------
    ValueError
        A fence that is never closed.
    """
    lines = text.splitlines()
    out: List[Snippet] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        ticks, info = m.group("ticks"), m.group("info").split()
        j = i + 1
        while j < len(lines):
            close = _FENCE.match(lines[j])
            if close and close.group("ticks")[0] == ticks[0] and len(close.group("ticks")) >= len(ticks) \
                    and not close.group("info"):
                break
            j += 1
        if j == len(lines):
            raise ValueError(f"{path}:{i + 1}: the code fence is never closed")
        if info and info[0].lower() in PYTHON_INFO:
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            prev = lines[k].strip() if k >= 0 else ""
            marker = _MARKER.match(prev)
            code = textwrap.dedent("\n".join(lines[i + 1:j])) + "\n"
            out.append(Snippet(path, i + 1, code, marker.group("body").strip() if marker else None))
        i = j + 1
    return out


def skip_reason(snippet: Snippet) -> Optional[str]:
    """The reason of a ``snippet: skip (reason: ...)`` marker; None without a marker.

    Raises
    ------
    ValueError
        A marker that is not ``skip``, or a skip without a (non-empty) reason.
    """
    if snippet.marker is None:
        return None
    m = _SKIP.match(snippet.marker)
    if not m:
        raise ValueError(f"{snippet.id}: unknown snippet marker {snippet.marker!r}; the only one is "
                         "'<!-- snippet: skip (reason: ...) -->'")
    if not m.group("reason"):
        raise ValueError(f"{snippet.id}: a skipped snippet needs a reason: '<!-- snippet: skip (reason: ...) -->'")
    return m.group("reason")


def all_snippets() -> List[Snippet]:
    return [s for path in doc_files() for s in parse_snippets(path.read_text(encoding="utf-8"), path)]


SNIPPETS = all_snippets()


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_snippet_runs(snippet, tmp_path, monkeypatch):
    reason = skip_reason(snippet)  # a bad marker fails the test
    if reason is not None:
        pytest.skip(f"marked in the docs: {reason}")
    import torch

    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__doc_snippet__"}
    code = compile(snippet.code, snippet.id, "exec")
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        try:
            exec(code, namespace)
        finally:  # what a block may change for the rest of the session (e.g. a run's `threads`)
            torch.set_num_threads(threads)
            torch.set_default_dtype(dtype)
            if "matplotlib.pyplot" in sys.modules:  # figures a block left open
                sys.modules["matplotlib.pyplot"].close("all")


def test_the_docs_have_python_snippets():
    assert len(SNIPPETS) >= 20
    assert any(s.path.name == "README.md" and s.path.parent == ROOT for s in SNIPPETS)
    skipped = [s.id for s in SNIPPETS if s.marker is not None]
    assert len(skipped) <= 3, f"keep skips to the few deliberately long blocks: {skipped}"


# -------------------------------------------------------------------------------- the parser itself
_DOC = """\
Text.

```python
a = 1
```

```sh
echo no
```

  ```python
  b = 2
  ```

<!-- snippet: skip (reason: takes an hour) -->

```python
slow()
```

<!-- snippet: skip -->
```py
nothing()
```

````markdown
```python
inside_another_fence()
```
````

<!-- snippet: run it -->
```python
c = 3
```
"""


def test_parser_finds_blocks_markers_and_reasons():
    snips = parse_snippets(_DOC, ROOT / "x.md")
    assert [s.line for s in snips] == [3, 11, 17, 22, 33]
    assert snips[0].code == "a = 1\n" and snips[1].code == "b = 2\n"
    assert [s.marker for s in snips] == [None, None, "skip (reason: takes an hour)", "skip", "run it"]
    assert skip_reason(snips[0]) is None
    assert skip_reason(snips[2]) == "takes an hour"
    with pytest.raises(ValueError, match="needs a reason"):
        skip_reason(snips[3])
    with pytest.raises(ValueError, match="unknown snippet marker"):
        skip_reason(snips[4])
    assert snips[0].id == "x.md:L3"


def test_parser_rejects_an_unclosed_fence():
    with pytest.raises(ValueError, match="never closed"):
        parse_snippets("```python\nx = 1\n", ROOT / "x.md")


def test_a_failing_block_fails(tmp_path, monkeypatch):
    snip = parse_snippets("```python\nraise KeyError('boom')\n```\n", ROOT / "x.md")[0]
    with pytest.raises(KeyError, match="boom"):
        test_snippet_runs(snip, tmp_path, monkeypatch)


def test_a_runtime_warning_fails(tmp_path, monkeypatch):
    snip = parse_snippets("```python\nimport warnings\nwarnings.warn('the inner loop diverges', RuntimeWarning)\n"
                          "```\n", ROOT / "x.md")[0]
    with pytest.raises(RuntimeWarning, match="diverges"):
        test_snippet_runs(snip, tmp_path, monkeypatch)
