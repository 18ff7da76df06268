"""`%%llm --attribute` and `%llm attribute`, through a real InteractiveShell on a tiny model.

The Attribution the magic shows is checked against input x gradient computed
here with plain torch autograd on the same model and the generation's ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from IPython.core.displaypub import DisplayPublisher
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import llm_magic as lm
from llm_magic.analysis.attribution import Attribution
from llm_magic.generation import Generation
from llm_magic.magics import _commands
from llm_magic.magics._magics import LLMMagics

PROMPT = "The import statement"


class Recorder(DisplayPublisher):
    """What a front end would receive."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def publish(self, data: Any, metadata: Any = None, source: Any = None, *,
                transient: Any = None, update: bool = False, **kwargs: Any) -> None:
        self.calls.append(data)


@pytest.fixture(scope="module")
def shell() -> InteractiveShell:
    return InteractiveShell.instance()


@pytest.fixture
def ip(shell: InteractiveShell, tiny_gpt2: Path, monkeypatch: pytest.MonkeyPatch):
    shell.run_line_magic("load_ext", "llm_magic")
    shell.run_line_magic("llm", f"load {tiny_gpt2} --as tiny")
    recorder = Recorder()
    monkeypatch.setattr(shell, "display_pub", recorder)
    shell.recorder = recorder
    yield shell
    manager = lm.get_manager()
    if manager.is_loaded("tiny"):
        manager.unload("tiny")
    manager.last_generation = None
    shell.run_line_magic("unload_ext", "llm_magic")
    for name in ("_llm", "_llm_attribution"):
        shell.user_ns.pop(name, None)


def magics(ip: InteractiveShell) -> LLMMagics:
    return ip.magics_manager.registry["LLMMagics"]


def usage_error(call: Any, *args: Any) -> str:
    with pytest.raises(UsageError) as info:
        call(*args)
    assert type(info.value) is UsageError
    message = str(info.value)
    assert message and "\n" not in message
    return message


def by_hand(ids: list[int], target: int) -> np.ndarray:
    """Input x gradient of log p(target) after ``ids`` on the tiny model, with autograd."""
    model = lm.get_manager().backend("tiny").model
    x = model.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
    lp = torch.log_softmax(model(inputs_embeds=x).logits[0, -1].float(), dim=-1)
    (grad,) = torch.autograd.grad(lp[target], x)
    return (x[0] * grad[0]).sum(-1).detach().numpy()


def test_attribute_cell_keeps_the_generation_with_its_ids(ip):
    ip.run_cell_magic("llm", "tiny -n 5 --attribute", PROMPT)
    g = ip.user_ns["_llm"]
    assert isinstance(g, Generation) and magics(ip).attributed is g
    assert g.tokens is not None and len(g.tokens) == 5 and g.params["logprobs"] == 5
    assert all(r.id is not None for r in g.tokens) and g.prompt_ids
    ip.run_cell_magic("llm", "tiny -n 3 --attribute --logprobs 2", PROMPT)
    assert magics(ip).attributed.params["logprobs"] == 2


def test_attribute_shows_the_rows_of_the_last_attribute_cell(ip):
    ip.run_cell_magic("llm", "tiny -n 4 --attribute", PROMPT)
    g = magics(ip).attributed
    ip.run_cell_magic("llm", "tiny -n 2", "Something else")  # `_llm` moves on, the kept one not
    ip.recorder.calls.clear()
    ip.run_line_magic("llm", "attribute --position 2")
    a = ip.user_ns["_llm_attribution"]
    assert isinstance(a, Attribution) and a.method == "input_x_gradient" and a.positions
    ids = [*g.prompt_ids, *(r.id for r in g.tokens[:2])]
    np.testing.assert_allclose(a.scores[0, :len(ids)], by_hand(ids, g.tokens[2].id),
                               atol=2e-6, rtol=1e-4)
    (shown,) = ip.recorder.calls
    assert shown["text/html"] == a.to_html()
    # Every output token, by another method.
    ip.run_line_magic("llm", "attribute --method saliency")
    a = ip.user_ns["_llm_attribution"]
    assert a.method == "saliency" and a.scores.shape[0] == 4
    assert (np.nan_to_num(a.scores) >= 0).all()


def test_attribute_falls_back_to_the_last_generation(ip):
    ip.run_cell_magic("llm", "tiny -n 3", PROMPT)
    assert magics(ip).attributed is None
    ip.run_line_magic("llm", "attribute --position -1")
    a = ip.user_ns["_llm_attribution"]
    assert a.scores.shape[0] == 1
    # No ids recorded: the output was tokenized again, and the notes say so.
    assert any("tokenized again" in note for note in a.notes)


@pytest.mark.parametrize("options, message", [
    ("--method magic", "method must be one of"),
    ("--method '<b>x</b>'", "method must be one of"),
    ("--position 99", "positions picks output tokens 0 to 3"),
    ("--position x", "invalid int value"),
    ("--position", "expected one argument"),
    ("--steps 3", "unrecognized arguments"),
])
def test_bad_options_are_one_line(ip, options, message):
    ip.run_cell_magic("llm", "tiny -n 4 --attribute", PROMPT)
    kept = magics(ip).attributed
    assert message in usage_error(ip.run_line_magic, "llm", f"attribute {options}")
    assert magics(ip).attributed is kept and "_llm_attribution" not in ip.user_ns


def test_nothing_to_attribute_says_what_to_run(ip):
    ip.user_ns.pop("_llm", None)
    message = usage_error(ip.run_line_magic, "llm", "attribute")
    assert "%%llm --attribute" in message
    ip.user_ns["_llm"] = "not a generation"
    assert "%%llm --attribute" in usage_error(ip.run_line_magic, "llm", "attribute")


@pytest.mark.parametrize("line, body", [
    ("tiny --attribute --batch", "A\n---\nB"),
    ("tiny --attribute --score", PROMPT),
])
def test_attribute_cells_refuse_what_they_cannot_keep(ip, line, body):
    assert "--attribute" in usage_error(ip.run_cell_magic, "llm", line, body)
    assert "_llm" not in ip.user_ns and magics(ip).attributed is None


def test_attribute_and_compare_are_refused(ip):
    message = usage_error(ip.run_cell_magic, "llm", "tiny tiny --compare --attribute", PROMPT)
    assert "--attribute" in message


def test_the_subcommand_is_listed_with_its_options(ip, capsys):
    assert _commands.find("attribute").usage == "%llm attribute [--method M] [--position N]"
    ip.run_line_magic("llm", "help")
    out = capsys.readouterr().out
    assert "%llm attribute [--method M] [--position N]" in out
    assert "output of the latest `%%llm --attribute` cell" in " ".join(out.split())
