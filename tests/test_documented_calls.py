"""Every documented call works as the first call in a fresh process.

A call that only works after some other module happened to be imported (a handle's
``generate`` once needed ``llm_magic.generation`` imported first) passes every test that
imports the whole API up front. Here each public name of ``llm_magic.__all__`` and each
public method and property of the result types is called the way the README shows, in a
process where llm_magic was never imported (``tests/_fresh.py`` forks it from a server
that imported only torch, transformers and the notebook libraries).

The tables must name every public name and method: one added without a call here fails
``test_every_public_name_and_method_has_a_first_call``.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import llm_magic as lm

SERVER = Path(__file__).with_name("_fresh.py")
PROMPT = "The import statement"

LOAD = "lm.load('demo')\n"


def _raises(call: str, error: str, text: str) -> str:
    """A program that fails unless ``call`` raises ``lm.<error>`` saying ``text``."""
    return (f"try:\n    {call}\nexcept lm.{error} as e:\n    assert {text!r} in str(e), e\n"
            f"else:\n    raise AssertionError('no {error}')")


_S2S = ("g = lm.load('demo-translator').generate('3/3/2021', max_new_tokens=12, logprobs=1)\n"
        "a = lm.attention(g)\n")

#: One program per public name of llm_magic; each starts in a process without llm_magic.
NAMES: dict[str, str] = {
    "AttentionMap": f"amap = lm.attention({PROMPT!r}, model='demo')\n"
                    "assert isinstance(amap, lm.AttentionMap)",
    "Budget": "assert isinstance(lm.budget(), lm.Budget)",
    "BudgetExceededError": "assert issubclass(lm.BudgetExceededError, lm.LLMMagicError)",
    "Comparison": f"c = lm.compare({PROMPT!r}, settings=[{{}}, {{'temperature': 1, 'seed': 1}}],"
                  " model='demo', max_new_tokens=4, stream=False)\n"
                  "assert isinstance(c, lm.Comparison)",
    "Conversation": LOAD + "c = lm.chat(max_new_tokens=3)\nassert isinstance(c, lm.Conversation)",
    "ConversationBusyError": "assert issubclass(lm.ConversationBusyError, lm.LLMMagicError)",
    "ConversationTable": LOAD + "lm.chat(name='c1')\n"
                         "t = lm.conversations()\nassert isinstance(t, lm.ConversationTable)",
    "chat": LOAD + f"c = lm.chat(max_new_tokens=3)\nassert c.say({PROMPT!r}).turn == 0\n"
                   "assert lm.chat(resume=c.last.id).messages == c.messages",
    "conversations": LOAD + "lm.chat(name='c1')\nassert 'c1' in str(lm.conversations())",
    "Ablation": "assert isinstance(lm.ablate('def f(x): return x', model='demo', "
                "heads=[(0, 1)]), lm.Ablation)",
    "Patching": "assert isinstance(lm.patch('def f(x): return x', 'def g(y): return x', "
                "model='demo', answers=(' +', ')')), lm.Patching)",
    "ablate": "assert lm.ablate('def f(x): return x', model='demo', mlp=[0]).delta.shape[0] > 0",
    "patch": "assert lm.patch('def f(x): return x', 'def g(y): return x', model='demo', "
             "answers=(' +', ')')).grid.shape[0] == 4",
    "Attribution": f"a = lm.attribute({PROMPT!r}, model='demo')\n"
                   "assert isinstance(a, lm.Attribution)",
    "attribute": f"a = lm.attribute({PROMPT!r}, model='demo', method='integrated_gradients')\n"
                 "assert a.scores.shape[0] == 1 and a.completeness[0] < 0.01",
    "Seq2SeqAttention": _S2S + "assert isinstance(a, lm.Seq2SeqAttention)",
    "Estimate": "assert isinstance(lm.estimate('demo'), lm.Estimate)",
    "Generation": LOAD + f"g = lm.generate({PROMPT!r}, max_new_tokens=3)\n"
                         "assert isinstance(g, lm.Generation)",
    "GenerationStats": LOAD + f"g = lm.generate({PROMPT!r}, max_new_tokens=3)\n"
                       "assert isinstance(g.stats, lm.GenerationStats) and str(g.stats)",
    "HistoryRow": LOAD + f"g = lm.generate({PROMPT!r}, max_new_tokens=3)\n"
                  "assert isinstance(lm.history(1)[0], lm.HistoryRow)",
    "HistoryTable": "assert isinstance(lm.history(), lm.HistoryTable)",
    "InvalidOptionError": _raises("lm.generate('x', max_new_tokens=0)", "InvalidOptionError",
                                  "max_new_tokens"),
    "LLMMagicError": "assert issubclass(lm.ModelNotLoadedError, lm.LLMMagicError)",
    "LLMMagicWarning": "assert issubclass(lm.LLMMagicWarning, Warning)",
    "LensMap": f"assert isinstance(lm.logit_lens({PROMPT!r}, model='demo'), lm.LensMap)",
    "MissingDependencyError": "assert issubclass(lm.MissingDependencyError, lm.LLMMagicError)",
    "ModelConflictError": "lm.load('demo')\n" + _raises("lm.load('demo', dtype='bfloat16')",
                                                         "ModelConflictError", "already loaded"),
    "ModelHandle": "assert isinstance(lm.load('demo'), lm.ModelHandle)",
    "ModelInfo": "assert isinstance(lm.load('demo').info, lm.ModelInfo)",
    "ModelNotFoundError": _raises("lm.load('/nowhere/at/all')", "ModelNotFoundError", "nowhere"),
    "ModelNotLoadedError": _raises("lm.generate('x', model='absent')", "ModelNotLoadedError",
                                   "absent"),
    "ModelTable": "assert isinstance(lm.models(), lm.ModelTable)",
    "NotAvailableError": "assert issubclass(lm.NotAvailableError, lm.LLMMagicError)",
    "PromptTooLongError": "lm.load('demo')\n" + _raises(
        "lm.generate('word ' * 5000, max_new_tokens=2)", "PromptTooLongError", "tokens"),
    "QualityReport": "lm.load('demo', quantize='int8')\n"
                     f"r = lm.quality('demo-int8', against='demo', text={PROMPT!r})\n"
                     "assert isinstance(r, lm.QualityReport)",
    "RerunResult": LOAD + f"g = lm.generate({PROMPT!r}, max_new_tokens=3)\n"
                   "assert isinstance(lm.rerun(g.id), lm.RerunResult)",
    "Scores": f"assert isinstance(lm.score({PROMPT!r}, model='demo'), lm.Scores)",
    "ServerError": "assert issubclass(lm.ServerError, lm.LLMMagicError)",
    "TokenRecord": LOAD + f"g = lm.generate({PROMPT!r}, max_new_tokens=3, logprobs=2)\n"
                   "assert isinstance(g.tokens[0], lm.TokenRecord)",
    "UnloadReport": "lm.load('demo')\nassert isinstance(lm.unload('demo'), lm.UnloadReport)",
    "__version__": "assert lm.__version__",
    "attention": f"assert lm.attention({PROMPT!r}, model='demo').shape[0] > 0",
    "attention_max_tokens": "assert lm.attention_max_tokens() >= 1",
    "budget": "assert 'cpu' in str(lm.budget())",
    "compare": "lm.load('demo')\nlm.load('demo', name='demo16', dtype='bfloat16')\n"
               f"c = lm.compare({PROMPT!r}, models=['demo', 'demo16'], max_new_tokens=3, "
               "stream=False)\nassert len(c) == 2",
    "estimate": "assert lm.estimate('demo').memory > 0",
    "generate": LOAD + f"assert lm.generate({PROMPT!r}, model='demo', max_new_tokens=3).text",
    "generate_batch": "lm.load('demo')\n"
                      "assert len(lm.generate_batch(['A list', 'A dict'], max_new_tokens=3)) == 2",
    "get_manager": "assert lm.get_manager() is lm.get_manager()",
    "history": LOAD + f"lm.generate({PROMPT!r}, max_new_tokens=3)\nassert len(lm.history(5)) >= 1",
    "last": LOAD + f"g = lm.generate({PROMPT!r}, max_new_tokens=3)\nassert lm.last() is g",
    "load": "h = lm.load('demo')\nassert h.name == 'demo' and h.loaded",
    "load_ipython_extension": "from IPython.core.interactiveshell import InteractiveShell\n"
                              "ip = InteractiveShell.instance()\nlm.load_ipython_extension(ip)\n"
                              f"r = ip.run_cell('%%llm demo -n 3 --no-stream\\n{PROMPT}')\n"
                              "assert r.error_in_exec is None and r.error_before_exec is None",
    "logit_lens": f"assert lm.logit_lens({PROMPT!r}, model='demo').shape[1] > 0",
    "models": "lm.load('demo')\nassert 'demo' in str(lm.models())",
    "monitor": "m = lm.monitor()\nm.close()",
    "panel": "p = lm.panel()\np.close()",
    "pin": "lm.load('demo')\nassert lm.pin('demo').pinned",
    "quality": "lm.load('demo', quantize='int4')\n"
               f"r = lm.quality('demo-int4', against='demo', text={PROMPT!r})\n"
               "assert r.predicted > 0 and 0 <= r.agreement <= 1 and r.mean_kl >= 0",
    "rerun": LOAD + f"g = lm.generate({PROMPT!r}, max_new_tokens=3)\nassert lm.rerun(g.id).matches",
    "score": f"assert lm.score({PROMPT!r}, model='demo').perplexity > 1",
    "set_threads": "assert lm.set_threads(1) == 1 and lm.threads() == 1",
    "threads": "assert lm.threads() >= 1",
    "unload": "lm.load('demo')\nassert lm.unload('demo').freed",
    "unload_ipython_extension": "from IPython.core.interactiveshell import InteractiveShell\n"
                                "ip = InteractiveShell.instance()\n"
                                "lm.load_ipython_extension(ip)\nlm.unload_ipython_extension(ip)",
    "use": "lm.load('demo')\nassert lm.use('demo').name == 'demo'",
}

_HANDLE = "h = lm.load('demo')\n"
_GEN = f"g = lm.load('demo').generate({PROMPT!r}, max_new_tokens=4, logprobs=3)\n"
_LENS = f"lens = lm.logit_lens({PROMPT!r}, model='demo')\n"
_CMP = (f"c = lm.compare({PROMPT!r}, settings=[{{}}, {{'temperature': 1, 'seed': 1}}], "
        "model='demo', max_new_tokens=4, stream=False)\n")
_SCORES = f"s = lm.score({PROMPT!r}, model='demo')\n"
_AMAP = f"amap = lm.attention({PROMPT!r}, model='demo')\n"
_ATTR = f"a = lm.attribute({PROMPT!r}, model='demo')\n"
_CONV = LOAD + f"c = lm.chat(max_new_tokens=3)\nc.say({PROMPT!r})\n"
_ABL = "a = lm.ablate('def f(x): return x', model='demo', heads=[(0, 1)])\n"
_PATCH = ("p = lm.patch('def f(x): return x', 'def g(y): return x', model='demo', "
          "answers=(' +', ')'))\n")

#: One program per public method or property of the result types, first used fresh.
METHODS: dict[tuple[str, str], str] = {
    ("ModelHandle", "generate"): _HANDLE + f"assert h.generate({PROMPT!r}, max_new_tokens=3).text",
    ("ModelHandle", "info"): _HANDLE + "assert h.info.name == 'demo'",
    ("ModelHandle", "loaded"): _HANDLE + "assert h.loaded",
    ("ModelHandle", "model"): _HANDLE + "assert h.model is not None",
    ("ModelHandle", "tokenizer"): _HANDLE + "assert h.tokenizer is not None",
    ("ModelHandle", "unload"): _HANDLE + "assert h.unload().freed and not h.loaded",
    ("Generation", "branch"): _GEN + "b = g.branch(1, g.tokens[1].top[1][0])\n"
                                     "assert b.parent == g.id and b.branch_at == 1",
    ("Generation", "interrupted"): _GEN + "assert g.interrupted is False",
    ("Generation", "logprobs_mode"): _GEN + "assert g.logprobs_mode == 'raw'",
    ("LensMap", "correct"): _LENS + "assert len(lens.correct) == lens.shape[1]",
    ("LensMap", "from_capture"): _LENS + "assert callable(lm.LensMap.from_capture)",
    ("LensMap", "nbytes"): _LENS + "assert lens.nbytes > 0",
    ("LensMap", "next_ids"): _LENS + "assert len(lens.next_ids) == lens.shape[1]",
    ("LensMap", "predicted"): _LENS + "assert len(lens.predicted) == lens.shape[1]",
    ("LensMap", "row_names"): _LENS + "assert lens.row_names[0] == 'embeddings'",
    ("LensMap", "rows_shown"): _LENS + "assert lens.rows_shown(1)",
    ("LensMap", "scale"): _LENS + "assert 'nats' in lens.scale('kl').caption",
    ("LensMap", "shade"): _LENS + "assert lens.shade('probability').shape[:2] == lens.shape[:2]",
    ("LensMap", "shape"): _LENS + "assert len(lens.shape) == 3",
    ("LensMap", "summary"): _LENS + "assert 'demo' in lens.summary()",
    ("LensMap", "text"): _LENS + "assert isinstance(lens.text(lens.predicted[0]), str)",
    ("LensMap", "to_html"): _LENS + "assert '<' in lens.to_html()",
    ("LensMap", "to_png"): _LENS + "assert lens.to_png()[:4] == b'\\x89PNG'",
    ("LensMap", "top"): _LENS + "assert len(lens.top(0, 0)) >= 1",
    ("LensMap", "widget"): _LENS + "w = lens.widget()\nw.close()",
    ("Comparison", "against"): _CMP + "assert c.against(1) is not None",
    ("Comparison", "by_characters"): _CMP + "assert c.by_characters is False",
    ("Comparison", "divergence"): _CMP + "c.divergence(1)",
    ("Comparison", "widget"): _CMP + "w = c.widget()\nw.close()",
    ("Scores", "logprob"): _SCORES + "assert s.logprob < 0",
    ("Scores", "perplexity"): _SCORES + "assert s.perplexity > 1",
    ("Scores", "widget"): _SCORES + "w = s.widget()\nw.close()",
    ("AttentionMap", "from_capture"): _AMAP + "assert callable(lm.AttentionMap.from_capture)",
    ("AttentionMap", "head"): _AMAP + "assert amap.head(0, 0).shape[0] == amap.shape[2]",
    ("AttentionMap", "mean"): _AMAP + "assert amap.mean(0).shape[0] == amap.shape[2]",
    ("AttentionMap", "nbytes"): _AMAP + "assert amap.nbytes > 0",
    ("AttentionMap", "shape"): _AMAP + "assert len(amap.shape) == 4",
    ("AttentionMap", "summary"): _AMAP + "assert 'demo' in amap.summary()",
    ("AttentionMap", "thumbnails"): _AMAP + "assert amap.thumbnails().ndim == 4",
    ("AttentionMap", "to_html"): _AMAP + "assert 'layer 0, head 0' in amap.to_html(0, 0)",
    ("AttentionMap", "to_png"): _AMAP + "assert amap.to_png(layer=0, head=0)[:4] == b'\\x89PNG'",
    ("AttentionMap", "widget"): _AMAP + "w = amap.widget()\nw.close()",
    ("AttentionMap", "columns"): _AMAP + "assert amap.columns == amap.labels",
    ("AttentionMap", "described"): _AMAP + "assert amap.described == 'causal'",
    ("Seq2SeqAttention", "best_head"): _S2S + "assert len(a.best_head()) == 3",
    ("Seq2SeqAttention", "from_capture"): _S2S + "assert callable(type(a).from_capture)",
    ("Seq2SeqAttention", "kinds"): _S2S + "assert a.kinds == ('encoder', 'decoder', 'cross')",
    ("Seq2SeqAttention", "nbytes"): _S2S + "assert a.nbytes > 0",
    ("Seq2SeqAttention", "summary"): _S2S + "assert 'demo-translator' in a.summary()",
    ("Seq2SeqAttention", "to_html"): _S2S + "assert 'cross-attention' in a.to_html()",
    ("Seq2SeqAttention", "to_png"): _S2S + "assert a.to_png()[:4] == b'\\x89PNG'",
    ("Seq2SeqAttention", "widget"): _S2S + "w = a.widget()\nw.close()",
    ("Conversation", "branch"): LOAD + "c = lm.chat(max_new_tokens=3, logprobs=2)\n"
                                       f"g = c.say({PROMPT!r})\n"
                                       "b = c.branch(g, 1, g.tokens[1].top[1][0])\n"
                                       "assert b.conversation != c.id and b.turn == 0",
    ("Conversation", "busy"): _CONV + "assert c.busy is False",
    ("Conversation", "cache_bytes"): _CONV + "assert c.cache_bytes > 0",
    ("Conversation", "fork"): _CONV + "f = c.fork()\nassert f.messages == c.messages",
    ("Conversation", "forget"): _CONV + "assert c.forget() > 0",
    ("Conversation", "messages"): _CONV + "assert c.messages[0]['role'] == 'user'",
    ("Conversation", "say"): _CONV + "assert c.say('And then?').turn == 1",
    ("Conversation", "stats"): _CONV + "assert c.stats[0].prompt_tokens > 0",
    ("Conversation", "undo"): _CONV + "c.undo()\nassert c.messages == []",
    ("GenerationStats", "reuse"): _CONV + "assert 'reused' in c.say('More').stats.reuse",
    ("GenerationStats", "stopped"): _GEN + "assert g.stats.stopped",
    ("Attribution", "summary"): _ATTR + "assert 'demo' in a.summary()",
    ("Attribution", "to_html"): _ATTR + "assert 'nats' in a.to_html()",
    ("Attribution", "top"): _ATTR + "assert len(a.top(0, 2)) == 2",
    ("Attribution", "unit"): _ATTR + "assert 'nats' in a.unit",
    ("Ablation", "summary"): _ABL + "assert 'nats' in a.summary()",
    ("Ablation", "text"): _ABL + "assert isinstance(a.text(int(a.top_ids[0, 0])), str)",
    ("Ablation", "to_html"): _ABL + "assert 'llm-magic-ablation' in a.to_html()",
    ("Ablation", "top"): _ABL + "assert len(a.top(-1)) == 5",
    ("Patching", "summary"): _PATCH + "assert 'over resid' in p.summary()",
    ("Patching", "to_html"): _PATCH + "assert 'llm-magic-colourbar' in p.to_html()",
    ("Patching", "to_png"): _PATCH + "assert p.to_png()[:4] == b'\\x89PNG'",
}

CLASSES = ("ModelHandle", "Generation", "GenerationStats", "LensMap", "Comparison", "Scores",
           "AttentionMap", "Conversation", "Ablation", "Patching", "Attribution",
           "Seq2SeqAttention")


def _public_members(cls: type) -> set[str]:
    """Methods and properties a user calls: public, defined in llm_magic (not list's or
    object's), not dataclass fields (plain data, read not called)."""
    fields = set(getattr(cls, "__dataclass_fields__", {}))
    names = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("llm_magic"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in fields:
                continue
            if isinstance(value, (property, classmethod, staticmethod)) or inspect.isfunction(
                    value):
                names.add(name)
    return names


def test_every_public_name_and_method_has_a_first_call():
    assert sorted(set(lm.__all__) - set(NAMES)) == []
    assert sorted(set(NAMES) - set(lm.__all__)) == []
    wanted = {(c, m) for c in CLASSES for m in _public_members(getattr(lm, c))}
    assert sorted(wanted - set(METHODS)) == []
    assert sorted(set(METHODS) - wanted) == []


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """Run a program in a process where llm_magic was never imported."""
    home = tmp_path_factory.mktemp("fresh")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLM_MAGIC_WARM_UP": "0",
           "LLM_MAGIC_HISTORY": str(home / "history.sqlite"), "HOME": str(home),
           "IPYTHONDIR": str(home / ".ipython"), "MPLBACKEND": "Agg"}
    server = subprocess.Popen([sys.executable, str(SERVER)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env, cwd=home)
    assert server.stdin is not None and server.stdout is not None
    assert json.loads(server.stdout.readline()) == {"ready": True}

    def run(body: str, *, import_lm: bool = True) -> dict:
        code = ("import llm_magic as lm\n" if import_lm else "") + body + "\n"
        server.stdin.write(json.dumps({"code": code}) + "\n")
        server.stdin.flush()
        return json.loads(server.stdout.readline())

    yield run
    server.stdin.close()
    server.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NAMES))
def test_each_public_name_works_first(fresh, name):
    done = fresh(NAMES[name])
    assert done["status"] == 0, f"lm.{name}, first in a fresh process:\n" + textwrap.indent(
        done["output"], "  ")


@pytest.mark.slow
@pytest.mark.parametrize(("cls", "method"), sorted(METHODS))
def test_each_public_method_works_first(fresh, cls, method):
    done = fresh(METHODS[(cls, method)])
    assert done["status"] == 0, f"{cls}.{method}, first in a fresh process:\n" + textwrap.indent(
        done["output"], "  ")


def test_the_server_forks_processes_without_llm_magic(fresh):
    """What makes the calls above first calls: a child starts with no llm_magic module."""
    done = fresh("import sys\nassert not [m for m in sys.modules if m.startswith('llm_magic')]",
                 import_lm=False)
    assert done["status"] == 0, done["output"]
