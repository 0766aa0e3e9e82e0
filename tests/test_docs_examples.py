"""Every ```python example of README.md and docs/**/*.md runs against the current API.

The fenced ``python`` blocks of one file run in order in one namespace (a page reads like a
script: later blocks use what earlier ones defined), in a temporary working directory (examples
may write files). A block preceded by the line ``<!-- docs-test: skip -->`` is shown, not run
(a sketch needing GPUs, several processes or data not shipped); other fences (```bash, ```text)
are never run. A page whose examples import torchvision, timm or transformers is skipped when
they are not installed; they are imported through :mod:`thirdparty` first, so that they load on
the CPU torch build. Torch runs on one thread here (tiny models: a thread pool only contends
for the cores).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP_MARK = "<!-- docs-test: skip -->"
FENCE = re.compile(
    r"^(?P<indent> *)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
THIRD_PARTY = ("torchvision", "timm", "transformers")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, source) of every ```python block not marked to skip."""
    blocks = []
    for m in FENCE.finditer(text):
        if m.group("info").strip().split(" ")[0] != "python":
            continue
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        if before == SKIP_MARK:
            continue
        indent = len(m.group("indent"))
        body = "".join(line[indent:] for line in m.group("body").splitlines(keepends=True))
        blocks.append((text.count("\n", 0, m.start()) + 2, body))
    return blocks


def test_fences_are_found() -> None:
    text = "a\n```python\nx = 1\n```\n" + SKIP_MARK + "\n```python\nraise SystemExit\n```\n"
    text += "```bash\nexit 1\n```\n  ```python\n  y = x + 1\n  ```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (13, "y = x + 1\n")]


PAGES = [p for p in pages() if python_blocks(p.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
@pytest.mark.usefixtures("one_torch_thread")
def test_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    source = "\n".join(code for _, code in blocks)
    for name in THIRD_PARTY:
        if re.search(rf"^\s*(from|import) {name}\b", source, re.MULTILINE):
            if importlib.util.find_spec(name) is None:
                pytest.skip(f"the examples need {name} (the test extra)")
            import thirdparty

            getattr(thirdparty, f"import_{name}")()
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs_example__"}
    for line, code in blocks:
        where = f"{page.relative_to(ROOT)}:{line}"
        try:
            exec(compile(code, where, "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"the example at {where} fails: {exc!r}") from exc
