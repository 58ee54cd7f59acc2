"""The README and docs/*.md render as written: fences closed, no heading swallowed by a fence, no
pasted output left outside one, every relative link and image resolves, and the Quickstart installs
exactly as CI does (.ci/run). Parsed with markdown-it-py (CommonMark + tables, as GitHub renders)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

markdown_it = pytest.importorskip("markdown_it", reason="pip install markdown-it-py (the dev extra)")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 300
# The newcomer's path through the README, in order: each must render as a level-2 heading.
README_SECTIONS = ["Quickstart", "Reading the output", "Train an agent", "Train on a universe", "Your own data",
                   "Walk-forward basics", "More documentation", "Licence"]
TORCH_LINE = re.compile(r"^pip install \"torch[^\"]*\" .*--extra-index-url https://download\.pytorch\.org/whl/cpu\b")
EDITABLE_LINE = re.compile(r"^pip install -e \"\.\[dev\]\"")


def _parse(text: str):
    return markdown_it.MarkdownIt("commonmark").enable("table").parse(text)


def _inline_text(token) -> str:
    """A heading's text as GitHub slugs it: text and code spans, markup dropped."""
    return "".join(c.content for c in (token.children or []) if c.type in ("text", "code_inline"))


def headings(text: str) -> list[tuple[int, str, int]]:
    """(level, text, 0-based source line) of every heading the parser sees."""
    tokens = _parse(text)
    return [(int(t.tag[1]), _inline_text(tokens[i + 1]), t.map[0])
            for i, t in enumerate(tokens) if t.type == "heading_open"]


def unclosed_fences(text: str) -> list[int]:
    """1-based opening lines of fences that run to the end of the file (no closing fence)."""
    lines = text.split("\n")
    bad = []
    for t in _parse(text):
        if t.type != "fence":
            continue
        first, end = t.map  # end: one past the fence's last line (the closing one, if any)
        opener = lines[first].lstrip()
        mark = re.match(r"(`{3,}|~{3,})", opener).group(1)
        last = lines[end - 1].strip() if end - 1 > first else ""
        if not (last.startswith(mark[0] * len(mark)) and set(last) <= {mark[0]}):
            bad.append(first + 1)
    return bad


def headings_inside_fences(text: str) -> list[str]:
    """Lines written as `## heading` that a fence turned into code (a stray fence swallowing a section)."""
    return [line for t in _parse(text) if t.type in ("fence", "code_block")
            for line in t.content.split("\n") if re.match(r"#{2,6} \S", line)]


def output_outside_fences(text: str) -> list[str]:
    """Paragraph lines with column-aligned runs of spaces: program output pasted outside a fence."""
    out = []
    for t in _parse(text):
        if t.type == "inline" and t.map is not None:
            out += [line for line in t.content.split("\n") if re.search(r"\S {4,}\S", line)]
    return out


def indented_code(text: str) -> list[int]:
    """1-based first lines of indented (unfenced) code blocks."""
    return [t.map[0] + 1 for t in _parse(text) if t.type == "code_block"]


def _slugs(path: Path) -> set[str]:
    """GitHub's anchors for a file's headings."""
    seen: dict[str, int] = {}
    out = set()
    for _, text, _ in headings(path.read_text(encoding="utf-8")):
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def link_targets(text: str) -> list[str]:
    """Every link href and image src of a document."""
    out = []
    for t in _parse(text):
        for c in t.children or []:
            if c.type == "link_open":
                out.append(c.attrs["href"])
            elif c.type == "image":
                out.append(c.attrs["src"])
    return out


def broken_links(path: Path) -> list[str]:
    """Relative links and images of ``path`` whose file (or heading anchor) does not exist."""
    bad = []
    for target in link_targets(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{target} (no such file {dest})")
        elif anchor and dest.suffix == ".md" and anchor not in _slugs(dest):
            bad.append(f"{target} (no heading with anchor #{anchor} in {dest.name})")
    return bad


def _quickstart_block(text: str) -> list[str]:
    tokens = _parse(text)
    start = next(i for i, t in enumerate(tokens)
                 if t.type == "heading_open" and _inline_text(tokens[i + 1]) == "Quickstart")
    fence = next(t for t in tokens[start:] if t.type == "fence")
    return [line.strip() for line in fence.content.split("\n")]


def _index(lines: list[str], pattern: re.Pattern) -> int | None:
    return next((i for i, line in enumerate(lines) if pattern.match(line)), None)


# --------------------------------------------------------------------------- the files themselves

ALL_MD = [README, *DOCS]


@pytest.mark.parametrize("path", ALL_MD, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_fence_is_closed(path):
    assert unclosed_fences(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("path", ALL_MD, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_heading_is_swallowed_by_a_fence(path):
    assert headings_inside_fences(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("path", ALL_MD, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_program_output_outside_a_fence(path):
    assert output_outside_fences(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("path", ALL_MD, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_code_is_fenced_never_indented(path):
    """Commands and outputs go in ``` fences; an indented block is then a stray paste, never a listing."""
    assert indented_code(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("path", ALL_MD, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_and_images_resolve(path):
    assert broken_links(path) == []


def test_readme_sections_render_as_headings_in_order():
    found = [text for level, text, _ in headings(README.read_text(encoding="utf-8")) if level == 2]
    assert found == README_SECTIONS


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move detail into docs/ (limit {MAX_README_LINES})"


def _layout_block(text: str) -> str:
    """The first fenced block that starts with ``datafeeds/``: the repository's layout."""
    return re.search(r"```\n(datafeeds/.*?)```", text, re.S).group(1)


def test_the_layout_block_is_the_architecture_docs_and_names_real_folders():
    block = _layout_block(README.read_text(encoding="utf-8"))
    assert block == _layout_block((ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8"))
    parent = None
    for line in block.splitlines():
        m = re.match(r"( {0,2})(\w+/|\w+\.py)\s", line)  # an entry, not a continuation line (indented further)
        if not m:
            continue
        name = m.group(2)
        path = ROOT / name if not m.group(1) else ROOT / parent / name
        assert path.exists(), f"the layout names {name!r}, which is not at {path}"
        if not m.group(1):
            parent = name


def test_readme_links_every_doc_and_shows_its_picture():
    targets = {t.partition("#")[0] for t in link_targets(README.read_text(encoding="utf-8"))}
    missing = [p.relative_to(ROOT).as_posix() for p in DOCS if p.relative_to(ROOT).as_posix() not in targets]
    assert missing == [], f"docs not linked from the README: {missing}"
    assert "docs/img/agent1_sp500.png" in targets


def test_quickstart_installs_cpu_torch_before_the_project_exactly_as_ci():
    block = _quickstart_block(README.read_text(encoding="utf-8"))
    torch_at, editable_at = _index(block, TORCH_LINE), _index(block, EDITABLE_LINE)
    assert torch_at is not None, "the Quickstart block has no CPU torch line"
    assert editable_at is not None, "the Quickstart block has no pip install -e line"
    assert torch_at < editable_at, "the torch line must come before pip install -e"

    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").split("\n")]
    ci_torch, ci_editable = _index(ci, TORCH_LINE), _index(ci, EDITABLE_LINE)
    assert ci_torch is not None and ci_editable is not None and ci_torch < ci_editable
    assert ci[ci_torch] == block[torch_at], "the torch line of .ci/run differs from the Quickstart's"
    assert ci[ci_editable] == block[editable_at]


# --------------------------------------------------------------------------- the checks catch what they claim to

def test_checks_catch_broken_markdown(tmp_path):
    swallowed = "# T\n\n```\nout\n## Backtest a universe\n\ntext\n"
    assert unclosed_fences(swallowed) == [3]
    assert headings_inside_fences(swallowed) == ["## Backtest a universe"]
    assert [t for _, t, _ in headings(swallowed)] == ["T"]
    assert unclosed_fences("```\na\n```\n") == [] and unclosed_fences("````\na\n```\n") == [1]
    stale = "text\n\n            sp500            5031  1999-01-04 .. 2018-12-31\nsp500            5031  1999\n"
    assert output_outside_fences(stale) == ["sp500            5031  1999"]
    assert indented_code(stale) == [3]

    (tmp_path / "a.md").write_text("# A b\n\n[x](b.md) [y](a.md#a-b) [z](a.md#nope) ![i](img/p.png) [w](https://e.org)\n")
    assert broken_links(tmp_path / "a.md") == [
        f"b.md (no such file {tmp_path / 'b.md'})",
        "a.md#nope (no heading with anchor #nope in a.md)",
        f"img/p.png (no such file {tmp_path / 'img' / 'p.png'})",
    ]


def _fence_after(text: str, marker: str) -> list[str]:
    """The lines of the first fenced block after the line containing ``marker``."""
    tokens = [t for t in _parse(text) if t.type == "fence"]
    at = text.split("\n").index(next(line for line in text.split("\n") if marker in line))
    block = next(t for t in tokens if t.map[0] > at)
    return block.content.rstrip("\n").split("\n")


def test_the_main_commands_output_is_what_the_readme_shows(tmp_path):
    """The Quickstart's `python run_backtest.py --agent models/agent1.onnx`, run now, prints the block the
    README shows (the picture's path aside: it is written to a scratch folder here)."""
    import subprocess
    import sys

    shown = _fence_after(README.read_text(), "The main command backtests the shipped agent")
    done = subprocess.run([sys.executable, "run_backtest.py", "--agent", "models/agent1.onnx", "--plot",
                           str(tmp_path / "p.png")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.rstrip("\n").split("\n")
    assert shown[-1] == "plot: reports/agent1_sp500.png" and printed[-1] == f"plot: {tmp_path / 'p.png'}"
    assert printed[:-1] == shown[:-1]
