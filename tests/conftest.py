"""Shared fixtures: tiny random transformers models built offline into a temp dir."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

# No test touches the real home directory or the network.
_HOME = tempfile.mkdtemp(prefix="llm_magic_test_home_")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = os.path.join(_HOME, "hf")
os.environ["IPYTHONDIR"] = os.path.join(_HOME, "ipython")
os.environ["JUPYTER_CONFIG_DIR"] = os.path.join(_HOME, "jupyter")
# Every generation of every test (and of the kernels they start) is recorded here.
os.environ["LLM_MAGIC_HISTORY"] = os.path.join(_HOME, "history.sqlite")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Test code beside the loaded extension is not a notebook cell: it would import
# transformers at the same time as the warm-up thread of %load_ext, which cells
# never do. tests/test_warmup.py turns the warm-up on where it tests it.
os.environ.setdefault("LLM_MAGIC_WARM_UP", "0")

# The interrupt tests need Python's own SIGINT handler. A suite started in the
# background by a shell without job control (`nohup make test &`, some CI
# runners) inherits SIGINT ignored, and then interrupt_main() does nothing.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from _models import build_tiny_model  # noqa: E402

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 (no chat template)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), arch="gpt2")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a chat template."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama",
                            chat_template=CHAT_TEMPLATE)


@pytest.fixture
def store(tmp_path: Path):
    """History in a fresh file of this test; back to the session's file after."""
    from llm_magic.history import configure

    path = tmp_path / "history.sqlite"
    configure(path=path, flush_interval=0.1, enabled=True)
    yield path
    configure(reset=True)


@pytest.fixture
def manager():
    """A fresh manager for one test; everything it loaded is unloaded after."""
    from llm_magic.manager import ModelManager

    m = ModelManager()
    yield m
    for name in m.names():
        m.unload(name)


# -- browser tests (tests/_browser.py) ------------------------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item, so fixtures know at teardown whether it failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory: pytest.TempPathFactory):
    """One JupyterLab server on 127.0.0.1 for the session (``.url``, ``.token``, ``.root``)."""
    from _browser import start_server

    with start_server(tmp_path_factory.mktemp("jupyter")) as server:
        yield server


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium through Playwright, for the session."""
    from _browser import launch_browser
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = launch_browser(p)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_notebook(browser, lab_server, request: pytest.FixtureRequest):
    """``open_notebook(cells, name=None, app="lab", server=None)``: a notebook open and ready.

    ``server`` is the session's ``lab_server`` unless the test passes another.

    On a failure of the test, each notebook's screenshot, text and the server log
    are saved in the test's artifact folder, which is printed.
    """
    from _browser import Notebook, artifact_dir

    opened: list = []
    folder = artifact_dir(request.node.nodeid)

    def open_(cells, name=None, app="lab", server=None):
        name = name or f"{request.node.name}-{len(opened)}.ipynb"
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        nb = Notebook(browser, server or lab_server, list(cells), name, app=app,
                      artifacts=folder)
        opened.append(nb)
        return nb.open()

    yield open_
    failed = any(getattr(getattr(request.node, f"report_{when}", None), "failed", False)
                 for when in ("setup", "call"))
    for nb in opened:
        if failed:
            print(f"browser test failed: screenshot, notebook text and server log in "
                  f"{nb.record_failure()}")
        nb.close()


@pytest.fixture(scope="session")
def served_demo(tmp_path_factory: pytest.TempPathFactory):
    """The demo model behind a real `transformers serve` on 127.0.0.1, once per session."""
    import _serve

    from llm_magic.demo import MODEL_DIR

    served = _serve.start(MODEL_DIR, tmp_path_factory.mktemp("serve") / "serve.log", threads=1)
    yield served
    served.stop()


# -- order: the longest files first --------------------------------------------------------

#: Files that take longest (browser tests, fresh kernels), first among the rest. make test
#: gives each pytest-xdist worker a file at a time in this order (--no-loadscope-reorder),
#: so the run does not end on one worker still busy with a long file.
_LONG_FIRST = ("test_widgets_lab", "test_tokens_lab", "test_playground_lab", "test_warmup",
               "test_history", "test_lab", "test_compare_lab", "test_lens_lab",
               "test_tokens_why_lab", "test_attention_seq2seq_lab", "test_causes_seq2seq_lab",
               "test_seq2seq_families", "test_patching_seq2seq", "test_widgets",
               "test_attention_lab", "test_subshells", "test_unload_memory", "test_make_lab",
               "test_wheel", "test_kernel", "test_history_conversations", "test_openai_backend",
               "test_seq2seq", "test_tokens_why", "test_lens_seq2seq", "test_conversation",
               "test_documented_calls")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the long files first (a stable sort: tests keep their order within a file)."""
    rank = {name: i for i, name in enumerate(_LONG_FIRST)}

    def key(item: pytest.Item) -> int:
        path = Path(str(item.fspath))
        if path.suffix == ".ipynb":  # the notebooks (nbval) after the long test files
            return len(rank)
        return rank.get(path.stem, len(rank) + 1)

    items.sort(key=key)
