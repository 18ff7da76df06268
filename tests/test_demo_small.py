"""``python -m llm_magic.demo.train --small``: a weaker model that still writes words.

Notebook 08 trains it to compare with the demo; a model that answers a prompt with blank lines
(what 100 steps on two threads gave) compares with nothing.
"""

from __future__ import annotations

import itertools
import json
import re

import pytest

from llm_magic.demo.train import PROMPT, main


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    """Run the trainer's command line quietly; its JSON summary."""
    assert main([*args, "--quiet"]) == 0
    out = capsys.readouterr().out
    return json.loads(out[:out.index("\nWrote ")])


def test_small_trains_on_one_thread_unless_told(tmp_path, capsys):
    summary = _run(capsys, "--small", "--steps", "1", "--out", str(tmp_path / "a"))
    assert summary["threads"] == 1
    assert "1 CPU thread(s)" in (tmp_path / "a" / "README.md").read_text(encoding="utf-8")
    told = _run(capsys, "--small", "--steps", "1", "--threads", "2", "--out", str(tmp_path / "b"))
    assert told["threads"] == 2


def test_small_trains_reproducibly(tmp_path, capsys):
    first = _run(capsys, "--small", "--steps", "3", "--out", str(tmp_path / "a"))
    again = _run(capsys, "--small", "--steps", "3", "--out", str(tmp_path / "b"))
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == \
        (tmp_path / "b" / "model.safetensors").read_bytes()
    assert first["val_loss"] == again["val_loss"]


@pytest.mark.slow
def test_small_model_writes_words(tmp_path, capsys):
    summary = _run(capsys, "--small", "--out", str(tmp_path / "small"))
    continuation = summary["greedy"][len(PROMPT):]
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", continuation)]
    assert len(words) >= 10 and len(set(words)) >= 5, continuation  # not blank lines
    run = max(len(list(group)) for _, group in itertools.groupby(words))
    assert run <= 2, continuation  # not "the the the the ..."
