"""lm.compare of encoder–decoder models: each column's output teacher-forced as the output for
the source through every model, checked by hand on tiny T5, BART and Marian models; mixed kinds
and served models refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _models import build_seq2seq as _build
from _models import build_tokenizer

import llm_magic as lm
from llm_magic.analysis.compare import compare
from llm_magic.errors import InvalidOptionError, NotAvailableError

SOURCE = "def add(a, b): return a + b"


def _build_other_vocab(out: Path) -> Path:
    """A Marian model whose tokenizer has another vocabulary: it cuts the text elsewhere."""
    from transformers import MarianConfig, MarianMTModel

    tok = build_tokenizer(out, 300)
    eos = tok.eos_token_id
    torch.manual_seed(2)
    model = MarianMTModel(MarianConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=eos, eos_token_id=eos,
        decoder_start_token_id=eos))
    for key, value in dict(pad_token_id=eos, decoder_start_token_id=eos, forced_eos_token_id=None,
                           forced_bos_token_id=None, bad_words_ids=None,
                           suppress_tokens=[eos]).items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare-seq2seq")
    found = {arch: _build(root / arch, arch) for arch in ("t5", "bart")}
    found["marian300"] = _build_other_vocab(root / "marian300")
    return found


@pytest.fixture
def loaded(built, manager) -> dict[str, Path]:
    for name, path in built.items():
        manager.load(str(path), name=name, dtype="float32")
    return built


def _logp(manager, name: str, source: list[int], output: list[int]) -> torch.Tensor:
    """log-probabilities of the model's decoder reading [its start token] + output for source."""
    model = manager.backend(name).model
    decoder = [model.config.decoder_start_token_id, *output]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([source]),
                       decoder_input_ids=torch.tensor([decoder])).logits[0]
    return torch.log_softmax(logits.float(), -1)


def test_two_translation_models_one_tokenizer(loaded, manager):
    streamed: dict[int, list[str]] = {0: [], 1: []}
    c = compare(SOURCE, models=["t5", "bart"], max_new_tokens=6, manager=manager,
                stream=lambda column, piece: streamed[column].append(piece))
    assert [g.model for g in c] == ["t5", "bart"] and c.column_notes == ("", "")
    assert ["".join(streamed[i]) for i in (0, 1)] == [g.text for g in c]
    for column, (gen, other) in enumerate(zip(c, ["bart", "t5"], strict=True)):
        cross = c.against(column)
        assert (cross.reference, cross.by, cross.scored_by) == (other, "tokens", "both")
        output = [r.id for r in gen.tokens]
        source = list(gen.prompt_ids)
        assert len(cross.pieces) == len(output)
        own, theirs = _logp(manager, gen.model, source, output), _logp(manager, other, source,
                                                                        output)
        for k, piece in enumerate(cross.pieces):  # decoder position k predicts output[k]
            assert piece.own == pytest.approx(float(own[k, output[k]]), abs=1e-4)
            assert piece.other == pytest.approx(float(theirs[k, output[k]]), abs=1e-4)
            assert piece.own_top[0] == int(own[k].argmax())
            assert piece.other_top[0] == int(theirs[k].argmax())
        first = next((k for k in range(len(output))
                      if int(own[k].argmax()) != int(theirs[k].argmax())), None)
        assert cross.divergence == first
    view = c.widget()  # the view shows each column's pieces, one per output token
    assert [len(p) for p in view.pieces] == [len(g.tokens) for g in c]


def test_different_tokenizers_align_on_characters(loaded, manager):
    c = compare(SOURCE, models=["t5", "marian300"], max_new_tokens=6, manager=manager,
                stream=False)
    gen = c[0]
    cross = c.against(0)
    assert (cross.reference, cross.by) == ("marian300", "characters") and c.by_characters
    t5, marian = manager.backend("t5").tokenizer, manager.backend("marian300").tokenizer
    output = [r.id for r in gen.tokens]
    text = t5.decode(output, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    own = _logp(manager, "t5", list(gen.prompt_ids), output)
    their_ids = marian(text_target=text)["input_ids"]
    theirs = _logp(manager, "marian300", marian(SOURCE)["input_ids"], their_ids)

    def ends(tok, ids):
        return [len(tok.decode(ids[:k], skip_special_tokens=True,
                               clean_up_tokenization_spaces=False)) for k in range(1, len(ids) + 1)]

    own_ends, their_ends = ends(t5, output), ends(marian, their_ids)
    assert cross.pieces and "".join(p.text for p in cross.pieces) == text[:len(
        "".join(p.text for p in cross.pieces))]
    for p in cross.pieces:  # each piece: the tokens of each side that end inside it, summed
        lo, hi = p.offset, p.offset + len(p.text)
        mine = [k for k, e in enumerate(own_ends) if lo < e <= hi]
        their = [k for k, e in enumerate(their_ends) if lo < e <= hi]
        assert p.own == pytest.approx(sum(float(own[k, output[k]]) for k in mine), abs=1e-4)
        assert p.other == pytest.approx(sum(float(theirs[k, their_ids[k]]) for k in their),
                                        abs=1e-4)


def test_one_translation_model_several_settings(loaded, manager):
    c = compare(SOURCE, settings=[{"temperature": 0}, {"temperature": 1.0, "seed": 1}],
                model="bart", max_new_tokens=5, manager=manager, stream=False)
    for column, gen in enumerate(c):
        cross = c.against(column)
        assert (cross.reference, cross.scored_by) == ("greedy", "own")
        output = [r.id for r in gen.tokens]
        logp = _logp(manager, "bart", list(gen.prompt_ids), output)
        assert len(cross.pieces) == len(output)
        for k, (piece, delta) in enumerate(zip(cross.pieces, cross.deltas, strict=True)):
            assert piece.own == pytest.approx(float(logp[k, output[k]]), abs=1e-4)
            assert delta == pytest.approx(float(logp[k, output[k]] - logp[k].max()), abs=1e-4)


def test_a_causal_model_beside_an_encoder_decoder_is_refused_before_anything_runs(
        loaded, manager, tiny_gpt2):
    manager.load(str(tiny_gpt2), name="causal", dtype="float32")
    pieces: list[str] = []
    with pytest.raises(InvalidOptionError, match=r"^compare cannot cross-score encoder–decoder "
                                                 r"models \('bart'\) against other kinds: "
                                                 r"'causal' is a causal LM"):
        compare(SOURCE, models=["bart", "causal"], max_new_tokens=3, manager=manager,
                stream=lambda _column, piece: pieces.append(piece))
    assert pieces == []
    # the models still compare with their own kind
    assert len(compare(SOURCE, models=["t5", "bart"], max_new_tokens=2, manager=manager,
                       stream=False)) == 2


def test_a_served_model_where_an_encoder_decoder_is_needed_says_so(loaded, manager,
                                                                   served_demo):
    manager.load(served_demo.url, name="served", model=served_demo.model)
    with pytest.raises(InvalidOptionError, match="'served' runs on a server"):
        compare(SOURCE, models=["t5", "served"], max_new_tokens=3, manager=manager,
                stream=False)
    with pytest.raises(NotAvailableError, match="backend has no logit lens"):
        lm.logit_lens(SOURCE, target="return a", model="served", manager=manager)
    with pytest.raises(NotAvailableError, match="cannot score a given text"):
        lm.score(SOURCE, target="return a", model="served", manager=manager)
