"""Screenshots of each view for the README, taken in a real JupyterLab.

Every view gets a small notebook of its own, run from the keyboard in Chromium
through the browser tests' helper (``tests/_browser.py``), so a picture shows what
a user's JupyterLab shows. Each picture is cropped to the view (an element
screenshot at a modest viewport) and stored in ``docs/images/NAME.png``. A view
whose module is not in the package yet is skipped with a note, so the command can
simply be run again once it lands.

Offline: the server's kernels get ``HF_HUB_OFFLINE=1``, and a temporary history and
IPython profile. Usage: ``python tools/screenshots.py [NAME ...]`` (default: every
view), or ``make screenshots``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "docs" / "images"
sys.path.insert(0, str(REPO / "tests"))

from _browser import Notebook, launch_browser, start_server  # noqa: E402

# Wide enough for a view's tables without the side bars; tall enough that the tallest view
# (the attention heatmap with its thumbnails) fits on screen, since the notebook, not the
# page, scrolls. The pictures are cropped to the view, so the height costs nothing.
VIEWPORT = {"width": 1000, "height": 1600}
LOAD = "%load_ext llm_magic\nimport llm_magic as lm\nlm.load('demo');"


@dataclass
class View:
    """One picture: the cells that show the view, its root element, and what to do first."""

    name: str
    needs: str  # the module the view lives in
    cells: list[str]
    selector: str  # the view's root element, in the last cell's output
    ready: str  # an element inside the view that is there once it has drawn
    before: Callable[[Notebook, Any], None] = field(default=lambda nb, view: None)


def _playground(nb: Notebook, view: Any) -> None:
    playground = view.locator(".llm-magic-playground")
    playground.locator("textarea").fill("The import statement")
    playground.locator("button", has_text="Generate").click()
    playground.locator("[data-field='stats']").filter(has_text="new tokens").wait_for()
    view.locator(".llm-magic-models tr[data-model='demo']").filter(
        has_not_text="generating").wait_for()


def _monitor(nb: Notebook, view: Any) -> None:
    view.locator("[data-field='cpu']").filter(has_text="%").wait_for()
    nb.page.wait_for_timeout(15_000)  # some samples, so the sparklines have a line


def _hover_token(nb: Notebook, view: Any) -> None:
    view.locator(".llm-tokens-text .llm-tokens-token").nth(5).click()  # pins it
    view.locator(".llm-tokens-panel tr.llm-tokens-alt").first.wait_for()
    nb.page.mouse.move(1, 1)


def _hover_heatmap(nb: Notebook, view: Any) -> None:
    box = view.locator("canvas.llm-attn-heatmap").bounding_box()
    nb.page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.8)
    nb.page.wait_for_function(
        "s => !!document.querySelector(s).dataset.value", arg=".llm-attn .llm-attn-hover")


VIEWS = [
    View("monitor", "llm_magic.widgets.monitor", [LOAD, "lm.monitor()"],
         ".llm-magic-monitor", "[data-field='cpu']", _monitor),
    View("panel", "llm_magic.widgets.panel",
         [LOAD, "p = lm.panel()\np.playground.max_new_tokens.value = 40\np"],
         ".llm-magic-panel", ".llm-magic-models tr[data-model='demo']", _playground),
    View("attention", "llm_magic.widgets.attention",
         [LOAD, "%%llm demo -n 16 --attention\nThe import statement"],
         ".llm-attn", "canvas.llm-attn-heatmap", _hover_heatmap),
    View("tokens", "llm_magic.widgets.tokens",
         [LOAD, "lm.generate('The import statement', model='demo', max_new_tokens=24, "
                "logprobs=5)"],
         ".llm-tokens", ".llm-tokens-token", _hover_token),
    View("lens", "llm_magic.widgets.lens",
         [LOAD, "lm.logit_lens('The import statement binds the module to a name', model='demo')"],
         ".llm-lens", "canvas.llm-lens-grid"),
    View("compare", "llm_magic.widgets.compare",
         [LOAD, "lm.compare('The import statement', model='demo', max_new_tokens=30, settings=["
                "{'temperature': 0}, {'temperature': 0.7, 'seed': 1}])"],
         ".llm-cmp", ".llm-cmp-piece"),
]


def available(view: View) -> bool:
    return importlib.util.find_spec(view.needs) is not None


def shoot(browser: Any, server: Any, view: View) -> Path:
    """Run the view's notebook, wait until the view has drawn, and save its picture."""
    nb = Notebook(browser, server, view.cells, f"{view.name}.ipynb")
    nb.page.set_viewport_size(VIEWPORT)
    try:
        nb.open()
        nb.page.evaluate("() => { window.jupyterapp.shell.collapseLeft(); "
                         "window.jupyterapp.shell.collapseRight(); }")
        for index in range(len(view.cells)):
            nb.run_and_wait(index, timeout=300)
        root = nb.cell(len(view.cells) - 1).locator(view.selector).first
        root.locator(view.ready).first.wait_for()
        root.scroll_into_view_if_needed()
        nb.page.mouse.move(1, 1)  # no stray hover over the view
        view.before(nb, root)
        nb.page.wait_for_timeout(500)  # let a last frame paint
        IMAGES.mkdir(parents=True, exist_ok=True)
        path = IMAGES / f"{view.name}.png"
        root.screenshot(path=str(path), animations="disabled", caret="hide")
        return path
    except Exception:
        print(f"{view.name}: failed; screenshot, notebook text and server log in "
              f"{nb.record_failure()}", file=sys.stderr)
        raise
    finally:
        nb.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("views", nargs="*", help=f"views to take (default: all): "
                        f"{', '.join(v.name for v in VIEWS)}")
    args = parser.parse_args(argv)
    unknown = set(args.views) - {v.name for v in VIEWS}
    if unknown:
        parser.error(f"no such view: {', '.join(sorted(unknown))}")
    chosen = [v for v in VIEWS if not args.views or v.name in args.views]
    todo = []
    for view in chosen:
        if available(view):
            todo.append(view)
        else:
            print(f"{view.name}: skipped, {view.needs} is not in the package yet")
    if not todo:
        return 0
    from playwright.sync_api import sync_playwright

    home = Path(tempfile.mkdtemp(prefix="llm_magic_screenshots_"))
    os.environ.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                       "LLM_MAGIC_HISTORY": str(home / "history.sqlite"),
                       "IPYTHONDIR": str(home / "ipython")})
    failed = []
    with start_server(home / "jupyter") as server, sync_playwright() as p:
        browser = launch_browser(p)
        try:
            for view in todo:
                try:
                    path = shoot(browser, server, view)
                except Exception as exc:
                    failed.append(view.name)
                    print(f"{view.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    continue
                print(f"{view.name}: {path.relative_to(REPO)}, {path.stat().st_size / 1000:.0f} KB",
                      flush=True)
        finally:
            browser.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
