"""Analyses of a generation whose output was forced into a language (``target_lang=``).

mBART, NLLB and M2M100 start the decoder from [start token, language code]; the
generation's tokens are the output after the code. The attention, the logit lens and
compare's cross-scoring read such a generation exactly as the decoder read it, the code
being its input after the start token; a rerun and a branch keep the code.

Every number is checked against transformers itself, written here: ``output_attentions``
of an eager teacher-forced forward, the decoder's logits, ``log_softmax`` of a
teacher-forced forward, greedy ``generate`` with the code forced.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _models import _corpus, build_tokenizer
from test_attention_seq2seq import _reference as _eager
from test_seq2seq_families import _build

import llm_magic as lm
from llm_magic.errors import InvalidOptionError, NotAvailableError
from llm_magic.history.read import branch_params
from llm_magic.history.recorder import get

SOURCE = "def add(a, b): return a + b"
LANG = "fr_XX"
HALF = 2.0 ** -11  # half a float16 step, for attention weights in [0, 1]


def _other_weights(path: Path, seed: int) -> Path:
    """The same tiny mBART with other random weights: a second model, same tokenizer."""
    from transformers import MBartForConditionalGeneration

    model = MBartForConditionalGeneration.from_pretrained(path)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(path)
    return path


def _other_tokenizer(path: Path) -> Path:
    """A BPE trained on other text (so other merges), with the same special tokens and
    codes at the same ids and the same size: the model reads it, and compare aligns the
    two models on characters."""
    build_tokenizer(path, 512, codes=["en_XX", "fr_XX", "de_DE"],
                    texts=[t[::-1] for t in _corpus()] + [SOURCE] * 3)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("forced-language")
    return {"mbart": _build(root / "mbart", "mbart"),
            "other": _other_weights(_build(root / "other", "mbart"), 1),
            "far": _other_tokenizer(_other_weights(_build(root / "far", "mbart"), 2)),
            "pegasus": _build(root / "pegasus", "pegasus")}


@pytest.fixture
def mbart(built, manager) -> str:
    manager.load(str(built["mbart"]), name="mbart", dtype="float32")
    return "mbart"


def _forced(manager, model: str = "mbart", **options):
    options = {"max_new_tokens": 6, "logprobs": 2, **options}
    return lm.generate(SOURCE, model=model, target_lang=LANG, manager=manager, **options)


def _prefix(backend) -> list[int]:
    """The decoder's start token and the code, as transformers' tokenizer names them."""
    code = backend.tokenizer.convert_tokens_to_ids(LANG)
    assert LANG in backend.tokenizer.get_added_vocab()
    return [backend.model.config.decoder_start_token_id, code]


def _src(backend, text: str = SOURCE) -> list[int]:
    return backend.tokenizer(text)["input_ids"]


def _logits(backend, source: list[int], decoder: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return backend.model(input_ids=torch.tensor([source]),
                             decoder_input_ids=torch.tensor([decoder])).logits[0].float()


def test_attention_of_a_forced_generation_is_the_decoder_read_after_the_code(mbart, manager):
    backend = manager.backend(mbart)
    gen = _forced(manager)
    assert gen.attention is None
    ids, source = [r.id for r in gen.tokens], _src(backend)
    decoder = [*_prefix(backend), *ids]
    kept: list[np.ndarray] = []  # every head in float32, before the capture's float16 step
    real = torch.Tensor.to

    def spy(self, *args, **kwargs):
        if args and args[0] is torch.float16:
            kept.append(self.detach().float().cpu().numpy().copy())
        return real(self, *args, **kwargs)

    torch.Tensor.to = spy
    try:
        att = lm.attention(gen, manager=manager)
    finally:
        torch.Tensor.to = real
    ref = _eager(backend, source, decoder)
    flat = ref["encoder"] + [w for pair in zip(ref["decoder"], ref["cross"], strict=True)
                             for w in pair]
    assert len(kept) == len(flat)
    for got, want in zip(kept, flat, strict=True):
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5
    for kind in ("encoder", "decoder", "cross"):
        for layer, want in enumerate(ref[kind]):
            assert np.abs(att[kind].layers[layer].astype(np.float32) - want).max() <= HALF
    # the decoder read the code: without it, its weights are others
    plain = _eager(backend, source, [decoder[0], *ids])
    assert np.abs(plain["cross"][0][:, 1:] - ref["cross"][0][:, 2:]).max() > 1e-3
    # the same as the capture made while generating (attention=True)
    captured = _forced(manager, attention=True)
    assert [r.id for r in captured.tokens] == ids
    for kind in ("encoder", "decoder", "cross"):
        for a, b in zip(att[kind].layers, captured.attention[kind].layers, strict=True):
            assert np.array_equal(a, b)
        assert att[kind].tokens == captured.attention[kind].tokens
    # the labels show the code as the decoder's input after its start token
    tokens = tuple(backend.tokenizer.convert_ids_to_tokens(decoder))
    assert att.cross.tokens == att.decoder.tokens == tokens and tokens[1] == LANG
    view = att.widget()
    assert view.tokens == list(att.cross.labels) and LANG in view.tokens[1]
    assert len(view.tokens) == len(decoder) and view.key_size == len(source)


# -- the logit lens ---------------------------------------------------------------------


def test_lens_of_a_forced_generation_equals_the_lens_by_hand(mbart, manager):
    backend = manager.backend(mbart)
    gen = _forced(manager)
    ids = [r.id for r in gen.tokens]
    prefix = _prefix(backend)
    lens = lm.logit_lens(gen, top=4, manager=manager)
    by_hand = lm.logit_lens(SOURCE, target=[prefix[1], *ids], model=mbart, top=4,
                            manager=manager)
    assert lens.input_ids == by_hand.input_ids == (*prefix, *ids)
    for field in ("ids", "probs", "final_prob", "final_rank", "entropy", "kl"):
        assert np.array_equal(getattr(lens, field), getattr(by_hand, field)), field
    assert lens.tokens == by_hand.tokens and LANG in lens.tokens[1]
    assert lens.prompt_tokens == 2 and lens.source == SOURCE
    # its self-check: the last row is the model's own output, read after the code
    assert lens.check <= 1e-4
    logits = _logits(backend, _src(backend), [*prefix, *ids])
    top = torch.softmax(logits, -1).topk(4, dim=-1)
    assert np.array_equal(lens.ids[-1], top.indices.numpy())
    np.testing.assert_allclose(lens.probs[-1], top.values.numpy(), atol=1e-5)
    # at each output position the last row's prediction is the generation's own top token
    # (the raw distribution: no_repeat_ngram_size may have chosen another)
    assert list(lens.predicted[1:-1]) == [r.top[0][0] for r in gen.tokens]
    # the view labels the code as input, the output after it as generated
    view = lens.widget()
    assert view.prompt_tokens == 2 and view.tokens == list(lens.tokens)
    assert LANG in lens.to_html()


# -- compare's cross-scoring --------------------------------------------------------------


def _teacher_forced(backend, ids: list[int], source: str = SOURCE) -> np.ndarray:
    """Log-probability of each output id after [start, code, earlier ids], in nats."""
    lp = torch.log_softmax(_logits(backend, _src(backend, source), [*_prefix(backend), *ids]), -1)
    return lp[torch.arange(1, len(ids) + 1), ids].numpy()


def test_compare_cross_scores_a_forced_column_after_each_models_code(built, manager):
    for name in ("mbart", "other"):
        manager.load(str(built[name]), name=name, dtype="float32")
    c = lm.compare(SOURCE, models=["mbart", "other"], max_new_tokens=6, target_lang=LANG,
                   stream=False, manager=manager)
    assert c.column_notes == ("", "")
    for column, (name, reference) in enumerate((("mbart", "other"), ("other", "mbart"))):
        gen = c[column]
        ids = [r.id for r in gen.tokens]
        assert gen.params["target_lang"] == LANG
        score = c.against(column)
        assert score.reference == reference and score.by == "tokens"
        own = _teacher_forced(manager.backend(name), ids)
        other = _teacher_forced(manager.backend(reference), ids)
        assert [p.start for p in score.pieces] == list(range(2, 2 + len(ids)))
        np.testing.assert_allclose([p.own for p in score.pieces], own, atol=1e-5)
        np.testing.assert_allclose([p.other for p in score.pieces], other, atol=1e-5)
        np.testing.assert_allclose(score.deltas, other - own, atol=1e-5)
        np.testing.assert_allclose(own, [r.logprob for r in gen.tokens], atol=1e-5)
        # read without the code, the reference scores differ: the code is read
        start = manager.backend(reference).model.config.decoder_start_token_id
        lp = torch.log_softmax(_logits(manager.backend(reference), _src(
            manager.backend(reference)), [start, *ids]), -1)
        assert np.abs(lp[torch.arange(len(ids)), ids].numpy() - other).max() > 1e-3


def test_compare_of_two_tokenizers_reads_each_models_own_code(built, manager):
    for name in ("mbart", "far"):
        manager.load(str(built[name]), name=name, dtype="float32")
    mine, theirs = manager.backend("mbart"), manager.backend("far")
    assert mine.tokenizer.get_vocab() != theirs.tokenizer.get_vocab()
    c = lm.compare(SOURCE, models=["mbart", "far"], max_new_tokens=6, target_lang=LANG,
                   stream=False, manager=manager)
    gen, score = c[0], c.against(0)
    assert score.by == "characters" and c.column_notes[0] == ""
    ids = [r.id for r in gen.tokens]
    text = mine.tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(p.text for p in score.pieces) == text == gen.text
    their_ids = theirs.tokenizer(text_target=text)["input_ids"]
    assert their_ids != ids
    own = _teacher_forced(mine, ids)
    other = _teacher_forced(theirs, their_ids)
    # each piece's log-probability is the sum over its tokens (the chain rule): in all
    assert abs(sum(p.own for p in score.pieces) - own.sum()) < 1e-4
    assert abs(sum(p.other for p in score.pieces) - other.sum()) < 1e-4


def test_compare_of_settings_scores_a_forced_column_against_its_greedy_choice(mbart, manager):
    c = lm.compare(SOURCE, settings=[{"temperature": 0}, {"temperature": 1.0, "seed": 3}],
                   model=mbart, max_new_tokens=6, target_lang=LANG, stream=False,
                   manager=manager)
    backend = manager.backend(mbart)
    for column, gen in enumerate(c):
        ids = [r.id for r in gen.tokens]
        lp = torch.log_softmax(_logits(backend, _src(backend), [*_prefix(backend), *ids]), -1)
        rows = lp[torch.arange(1, len(ids) + 1)]
        score = c.against(column)
        assert score.reference == "greedy" and score.scored_by == "own"
        np.testing.assert_allclose([p.own for p in score.pieces],
                                   rows[torch.arange(len(ids)), ids].numpy(), atol=1e-5)
        np.testing.assert_allclose([p.other for p in score.pieces],
                                   rows.max(-1).values.numpy(), atol=1e-5)
        greedy = rows.argmax(-1).tolist()
        assert c.divergence(column) == next(
            (k for k, (a, b) in enumerate(zip(ids, greedy, strict=True)) if a != b), None)


# -- rerun and branch ---------------------------------------------------------------------


def test_a_rerun_of_a_forced_generation_matches(store, mbart, manager):
    gen = _forced(manager)
    plain = lm.generate(SOURCE, model=mbart, max_new_tokens=6, logprobs=2, manager=manager)
    assert plain.text != gen.text  # without the code the output is another
    again = lm.rerun(gen.id, manager=manager)
    assert again.matches and again.records_match, str(again)
    assert again.generation.params["target_lang"] == LANG
    assert [r.id for r in again.generation.tokens] == [r.id for r in gen.tokens]
    assert get(gen.id).params["target_lang"] == LANG
    assert branch_params(get(gen.id))["target_lang"] == LANG
    assert "target_lang" not in branch_params(get(plain.id))
    unforced = lm.rerun(plain.id, manager=manager)
    assert unforced.matches and "target_lang" not in unforced.generation.params


def test_a_branch_of_a_forced_generation_keeps_the_code_and_reruns(store, mbart, manager):
    backend = manager.backend(mbart)
    gen = _forced(manager)
    alt = gen.tokens[2].top[1][0]
    branch = gen.branch(2, alt, manager=manager)
    chosen = [r.id for r in branch.tokens]
    assert chosen[:3] == [gen.tokens[0].id, gen.tokens[1].id, alt]
    with torch.inference_mode():  # transformers continues from [start, code, lead]
        out = backend.model.generate(input_ids=torch.tensor([_src(backend)]),
                                     decoder_input_ids=torch.tensor([[*_prefix(backend),
                                                                      *chosen[:3]]]),
                                     do_sample=False, max_new_tokens=3, min_new_tokens=3)
    assert out[0, 2:].tolist() == chosen
    again = lm.rerun(branch.id, manager=manager)
    assert again.matches and again.records_match, str(again)
    assert again.generation.params["target_lang"] == LANG
    assert [r.id for r in again.generation.tokens] == chosen
    # the rerun's analyses read the code too
    lens = lm.logit_lens(again.generation, manager=manager)
    assert lens.input_ids == (*_prefix(backend), *chosen)


# -- what is still refused ------------------------------------------------------------------


def test_a_model_without_the_code_refuses_in_one_line_naming_it(built, mbart, manager):
    manager.load(str(built["pegasus"]), name="pegasus", dtype="float32")
    gen = _forced(manager)
    with pytest.raises(InvalidOptionError, match="'fr_XX' is not a language code of "
                                                 "'pegasus'") as info:
        lm.attention(gen, model="pegasus", manager=manager)
    assert "\n" not in str(info.value)
    with pytest.raises(NotAvailableError, match="target_lang='fr_XX'.*not at hand for "
                                                "'pegasus'") as info:
        lm.logit_lens(gen, model="pegasus", manager=manager)
    assert "\n" not in str(info.value)
    with pytest.raises(InvalidOptionError, match="not a language code of 'pegasus'"):
        lm.attribute(gen, model="pegasus", manager=manager)
    # nothing was lost: the forced generation is still read by its own model
    assert lm.logit_lens(gen, manager=manager).prompt_tokens == 2


def test_a_forced_generation_without_token_ids_is_refused_in_one_line(mbart, manager):
    gen = lm.generate(SOURCE, model=mbart, max_new_tokens=3, target_lang=LANG, manager=manager)
    assert gen.tokens is None
    for call in (lambda: lm.attention(gen, manager=manager),
                 lambda: lm.logit_lens(gen, manager=manager)):
        with pytest.raises(NotAvailableError, match="logprobs=1") as info:
            call()
        assert "\n" not in str(info.value)


def test_the_backend_names_the_code_or_refuses(built, mbart, manager, tiny_gpt2):
    backend = manager.backend(mbart)
    assert backend.language_id(LANG) == _prefix(backend)[1]
    for lang in ("xx_XX", "<pad>", "<b>fr_XX</b>"):
        with pytest.raises(InvalidOptionError, match=f"not a language code of '{mbart}'"):
            backend.language_id(lang)
    manager.load(str(tiny_gpt2), name="causal")
    with pytest.raises(InvalidOptionError, match="'causal' is a causal LM"):
        manager.backend("causal").language_id(LANG)
    from llm_magic.backends.base import Backend

    with pytest.raises(NotAvailableError, match="cannot tell which token"):
        Backend.language_id(backend, LANG)


# -- in a shell ---------------------------------------------------------------------------


def test_a_forced_cell_reruns_and_is_read_in_a_shell(store, built, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "llm_magic")
    lm.load(str(built["mbart"]), name="mb", dtype="float32")
    try:
        shell.run_cell_magic("llm", "mb --target-lang fr_XX -n 6 --logprobs 2", SOURCE)
        cell = shell.user_ns["_llm"]
        assert cell.params["target_lang"] == LANG
        capsys.readouterr()
        shell.run_line_magic("llm", f"rerun {cell.id}")
        assert "the output matches" in capsys.readouterr().out
        assert lm.last().text == cell.text and lm.last().params["target_lang"] == LANG
        run = shell.run_cell("import llm_magic as lm\n"
                             "att = lm.attention(_llm); lens = lm.logit_lens(_llm)")
        assert run.error_in_exec is None
        att, lens = shell.user_ns["att"], shell.user_ns["lens"]
        assert att.cross.tokens[1] == LANG and LANG in lens.tokens[1]
        assert len(att.cross.tokens) == len(lens.input_ids) == 2 + len(cell.tokens)
    finally:
        lm.unload("mb")
        lm.get_manager().last_generation = None
        shell.run_line_magic("unload_ext", "llm_magic")
        for key in ("_llm", "att", "lens", "lm"):
            shell.user_ns.pop(key, None)
