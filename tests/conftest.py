"""Shared fixtures: tiny random transformers models built offline into a temp dir."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# No test touches the real home directory or the network.
_HOME = tempfile.mkdtemp(prefix="llm_magic_test_home_")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = os.path.join(_HOME, "hf")
os.environ["IPYTHONDIR"] = os.path.join(_HOME, "ipython")
os.environ["JUPYTER_CONFIG_DIR"] = os.path.join(_HOME, "jupyter")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
def manager():
    """A fresh manager for one test; everything it loaded is unloaded after."""
    from llm_magic.manager import ModelManager

    m = ModelManager()
    yield m
    for name in m.names():
        m.unload(name)


@pytest.fixture(scope="session")
def served_demo(tmp_path_factory: pytest.TempPathFactory):
    """The demo model behind a real `transformers serve` on 127.0.0.1, once per session."""
    import _serve

    from llm_magic.demo import MODEL_DIR

    served = _serve.start(MODEL_DIR, tmp_path_factory.mktemp("serve") / "serve.log", threads=1)
    yield served
    served.stop()
