"""The bundled translator: synthetic dates, tokenizer, translations, cross-attention, training."""

from __future__ import annotations

import datetime
import functools
import json
import random

import pytest

from llm_magic.demo import TRANSLATOR_DIR, _dates
from llm_magic.demo import train_translator as tt

SHIPPED = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
           "tokenizer_config.json", "README.md")
MAX_WEIGHT_BYTES = 4_000_000
#: Hand-written held-out dates (``_dates.held_out_date`` is true for each), several layouts.
WRITTEN = {
    "the thirteenth of March, 2021": "2021-03-13",
    "March 13th 21": "2021-03-13",
    "9/3/2021": "2021-03-09",
    "2021 March 13": "2021-03-13",
    "Saturday, 13 March 2021": "2021-03-13",
    "Sunday, the seventh of July, 1963": "1963-07-07",
}


def _strptime_pattern(f: _dates.Format) -> str | None:
    """The :func:`time.strptime` pattern of format ``f``, or None when it has word days."""
    if f.day not in ("num", "pad"):
        return None
    month = {"name": "%B", "abbr": "%b", "num": "%m", "pad": "%m"}[f.month]
    year = {"yyyy": "%Y", "yy": "%y", "apostrophe": "'%y"}[f.year]
    pattern = _dates.LAYOUTS[f.layout].format(d="%d", m=month, y=year)
    return {"": "", "full": "%A, ", "abbr": "%a "}[f.weekday] + pattern


@pytest.fixture(scope="module")
def translator(request: pytest.FixtureRequest):
    """The shipped translator and its tokenizer, loaded offline by transformers' Auto classes."""
    mp = pytest.MonkeyPatch()
    request.addfinalizer(mp.undo)
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    # One thread: on a busy shared machine two spin-waiting threads made this module 20 times
    # slower, and nothing here needs more than one.
    request.addfinalizer(functools.partial(torch.set_num_threads, torch.get_num_threads()))
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(TRANSLATOR_DIR)
    model = AutoModelForSeq2SeqLM.from_pretrained(TRANSLATOR_DIR, attn_implementation="eager")
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------- the data


def test_rendered_dates_parse_back_with_strptime():
    rng = random.Random(0)
    checked = 0
    for f in _dates.all_formats():
        pattern = _strptime_pattern(f)
        if pattern is None:
            continue
        short = f.year != "yyyy"
        for _ in range(5):
            date = _dates._random_date(rng, short_year=short)
            text = _dates.render(date, f)
            assert datetime.datetime.strptime(text, pattern).date() == date, (text, pattern)
            checked += 1
    assert checked > 500


def test_word_and_suffix_days():
    march = [datetime.date(2021, 3, d) for d in range(1, 32)]
    words = [_dates.render(d, _dates.Format("the_d_of_m_y", "word", "name", "yyyy", ""))
             for d in march]
    suffixes = [_dates.render(d, _dates.Format("m_d_y", "suffix", "abbr", "yy", "abbr"))
                for d in march]
    assert words[0] == "the first of March, 2021"
    assert words[19] == "the twentieth of March, 2021"
    assert words[20] == "the twenty-first of March, 2021"
    assert words[29] == "the thirtieth of March, 2021"
    assert [s.split()[2] for s in suffixes[:4]] == ["1st", "2nd", "3rd", "4th"]
    assert [s.split()[2] for s in suffixes[10:13]] == ["11th", "12th", "13th"]
    assert [s.split()[2] for s in suffixes[20:23]] == ["21st", "22nd", "23rd"]
    assert suffixes[2] == "Wed Mar 3rd 21"
    assert len(set(words)) == 31


def test_held_out_split_is_disjoint_and_made_of_known_parts():
    held, kept = set(_dates.held_out_formats()), set(_dates.training_formats())
    assert held and kept and not held & kept
    assert held | kept == set(_dates.all_formats())
    for position in range(len(_dates.Format._fields)):
        assert {f[position] for f in held} <= {f[position] for f in kept}
    train = list(_dates.examples(300, held_out=False, seed=3))
    test = list(_dates.examples(300, held_out=True, seed=3))
    assert not any(_dates.held_out_date(datetime.date.fromisoformat(iso)) for _, iso in train)
    assert all(_dates.held_out_date(datetime.date.fromisoformat(iso)) for _, iso in test)
    assert list(_dates.examples(5, held_out=True, seed=3)) == test[:5]
    # The weekday is no give-away: held-out dates fall on every day of the week.
    assert len({datetime.date.fromisoformat(iso).weekday() for _, iso in test}) == 7


def test_written_examples_are_held_out_dates():
    for text, iso in WRITTEN.items():
        assert _dates.held_out_date(datetime.date.fromisoformat(iso)), text


# --------------------------------------------------------------------------- shipped files


def test_shipped_files_are_small():
    for name in SHIPPED:
        assert (TRANSLATOR_DIR / name).is_file(), name
    assert (TRANSLATOR_DIR / "model.safetensors").stat().st_size <= MAX_WEIGHT_BYTES
    config = json.loads((TRANSLATOR_DIR / "config.json").read_text(encoding="utf-8"))
    assert config["is_encoder_decoder"] is True
    card = (TRANSLATOR_DIR / "README.md").read_text(encoding="utf-8")
    for needle in ("python -m llm_magic.demo.train_translator", "Held-out exact match",
                   "day first"):
        assert needle in card, needle


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_lines_up_digits_and_keeps_specials(translator):
    model, tokenizer = translator
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("Wed 3 March 2021")["input_ids"])
    assert tokens == ["wed", "▁", "3", "▁march", "▁", "2", "0", "2", "1", "</s>"]
    target = tokenizer(text_target="2021-03-03")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(target) == [*"2021-03-03", "</s>"]
    assert tokenizer.decode(target, skip_special_tokens=True) == "2021-03-03"
    assert tokenizer.decode(tokenizer("the third of March, 2021")["input_ids"],
                            skip_special_tokens=True) == "the third of march, 2021"
    assert tokenizer.convert_ids_to_tokens(tokenizer("3 Brumaire")["input_ids"])[-2] == "<unk>"
    config = model.config
    assert config.pad_token_id == tokenizer.pad_token_id
    assert config.eos_token_id == tokenizer.eos_token_id
    assert config.decoder_start_token_id == tokenizer.convert_tokens_to_ids("<s>")
    assert len({config.pad_token_id, config.eos_token_id, config.decoder_start_token_id}) == 3


# --------------------------------------------------------------------------- translation


def _greedy_by_hand(model, tokenizer, text: str, steps: int = 16) -> str:
    """Greedy decoding written out: argmax of the logits, one decoder token at a time."""
    import torch

    inputs = tokenizer(text, return_tensors="pt")
    decoder = torch.tensor([[model.config.decoder_start_token_id]])
    with torch.no_grad():
        encoded = model.get_encoder()(**inputs)
        for _ in range(steps):
            logits = model(encoder_outputs=encoded, attention_mask=inputs["attention_mask"],
                           decoder_input_ids=decoder).logits
            token = int(logits[0, -1].argmax())
            if token == model.config.eos_token_id:
                break
            decoder = torch.cat([decoder, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(decoder[0, 1:])


def test_translates_held_out_dates_exactly(translator):
    import torch

    model, tokenizer = translator
    pairs = [*WRITTEN.items(), *_dates.examples(24, held_out=True, seed=2024)]
    sources = [s for s, _ in pairs]
    inputs = tokenizer(sources, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=16)
    got = tokenizer.batch_decode(out, skip_special_tokens=True)
    assert got == [iso for _, iso in pairs]
    for text, iso in WRITTEN.items():
        assert _greedy_by_hand(model, tokenizer, text) == iso


#: Sources with their expected tokens, each marked with the field it belongs to (d, m, y),
#: and the field each output step writes (``_`` where none: the dashes, ``</s>``, and the
#: century that a two-digit year does not write).
FIELDS = {
    "the thirteenth of March, 2021": (
        "the ▁thirteenth:d ▁of ▁march:m , ▁ 2:y 0:y 2:y 1:y </s>", "yyyy_mm_dd_"),
    "9/3/2021": ("9:d / 3:m / 2:y 0:y 2:y 1:y </s>", "yyyy_mm_dd_"),
    "Saturday, 13 March 2021": (
        "saturday , ▁ 1:d 3:d ▁march:m ▁ 2:y 0:y 2:y 1:y </s>", "yyyy_mm_dd_"),
    "2021 March 13": ("2:y 0:y 2:y 1:y ▁march:m ▁ 1:d 3:d </s>", "yyyy_mm_dd_"),
    "March 13th 21": ("march:m ▁ 1:d 3:d th ▁ 2:y 1:y </s>", "__yy_mm_dd_"),
    "Sunday, the seventh of July, 1963": (
        "sunday , ▁the ▁seventh:d ▁of ▁july:m , ▁ 1:y 9:y 6:y 3:y </s>", "yyyy_mm_dd_"),
}


def _cross_attention(model, tokenizer, text: str, iso: str, marked: str):
    """Teacher-forced cross-attention ``[layer, head, output step, source token]`` of ``text``
    translated as ``iso``, and the field (``y``, ``m``, ``d`` or ``""``) of each source token."""
    import torch

    inputs = tokenizer(text, return_tensors="pt")
    labels = tokenizer(text_target=iso, return_tensors="pt")["input_ids"]
    tokens = [m.rsplit(":", 1)[0] if ":" in m[1:] else m for m in marked.split()]
    fields = [m.rsplit(":", 1)[1] if ":" in m[1:] else "" for m in marked.split()]
    assert tokenizer.convert_ids_to_tokens(inputs["input_ids"][0]) == tokens
    with torch.no_grad():
        out = model(**inputs, labels=labels, output_attentions=True)
    # Decoder position t reads labels[:t] and predicts labels[t]: the model's own translation.
    assert out.logits[0].argmax(-1).tolist() == labels[0].tolist()
    attention = torch.stack([a[0] for a in out.cross_attentions])
    assert attention.shape[-2:] == (labels.shape[1], inputs["input_ids"].shape[1])
    torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:-1]))
    return attention, fields


def _field_heads(attention, fields: list[str], writes: str) -> set[tuple[int, int]]:
    """The (layer, head) pairs in which the steps that write each field (year, month, day),
    taken together, attend more to that field's source tokens than to any other field's and
    than to all the other tokens (separators, ``▁``, ``</s>``, words) together."""
    heads = set()
    for layer in range(attention.shape[0]):
        for head in range(attention.shape[1]):
            aligned = True
            for field in "ymd":
                steps = [t for t, w in enumerate(writes) if w == field]
                mean = attention[layer, head, steps].mean(0)
                mass = {g: float(sum(mean[i] for i, f in enumerate(fields) if f == g))
                        for g in ("y", "m", "d", "")}
                aligned &= max(mass, key=mass.__getitem__) == field
            if aligned:
                heads.add((layer, head))
    return heads


def _copy_heads(attention, fields: list[str], writes: str) -> set[tuple[int, int]]:
    """The (layer, head) pairs whose attention, while writing the decade and the unit of the
    year, peaks on exactly those two digits of the source year."""
    steps = [t for t, w in enumerate(writes) if w == "y"][-2:]
    source = [i for i, f in enumerate(fields) if f == "y"][-2:]
    peaks = attention[:, :, steps].argmax(-1)
    return {(layer, head) for layer in range(attention.shape[0])
            for head in range(attention.shape[1]) if peaks[layer, head].tolist() == source}


def test_cross_attention_aligns_each_output_field_with_its_source_field(translator):
    model, tokenizer = translator
    # The year moves from last in the source to first in the output, the day from first to
    # last; a two-digit year still writes four digits from its two.
    fields, copies = {}, {}
    for text, (marked, writes) in FIELDS.items():
        attention, source_fields = _cross_attention(model, tokenizer, text, WRITTEN[text], marked)
        fields[text] = _field_heads(attention, source_fields, writes)
        copies[text] = _copy_heads(attention, source_fields, writes)
    # One head lines up year, month and day in every layout.
    assert set.intersection(*fields.values()), fields
    # And the year's last two digits are copied digit by digit, wherever the year stands.
    assert all(copies.values()), copies


def test_field_alignment_check_tells_day_from_month(translator):
    model, tokenizer = translator
    marked, writes = FIELDS["9/3/2021"]
    attention, fields = _cross_attention(model, tokenizer, "9/3/2021", "2021-03-09", marked)
    assert _field_heads(attention, fields, writes)
    # Read month first (as in the US), 9/3/2021 would be September 3rd: with the day and the
    # month swapped in the expectation no head lines up, since numeric dates are read day first.
    swapped = ["m" if f == "d" else "d" if f == "m" else f for f in fields]
    assert not _field_heads(attention, swapped, writes)
    # The century ("20") is not in the source: no head peaks on the decade and unit there.
    assert _copy_heads(attention, fields, writes)
    assert not _copy_heads(attention, fields, "yy__" + writes[4:])


# --------------------------------------------------------------------------- training script


def test_training_script_runs_a_few_steps(tmp_path, capsys):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    out = tmp_path / "translator"
    assert tt.main(["--out", str(out), "--steps", "3", "--held-out", "8", "--threads", "1",
                    "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Held-out exact match:" in printed and "Training time:" in printed
    for name in SHIPPED:
        assert (out / name).is_file(), name
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.d_model == tt.SHAPE["d_model"]
    assert len(tokenizer) == model.config.vocab_size
    assert "--steps 3" in (out / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--threads", "-1"], ["--held-out", "0"],
                                  ["--steps", "many"]])
def test_training_script_refuses_bad_arguments(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as excinfo:
        tt.main(["--out", str(tmp_path), *argv])
    assert excinfo.value.code == 2
    assert not any(tmp_path.iterdir())


# -- through llm_magic -------------------------------------------------------------------------


def test_lm_loads_and_translates_the_bundled_translator(manager):
    import llm_magic as lm

    info = manager.load("demo-translator").info
    assert (info.name, info.kind) == ("demo-translator", "seq2seq")
    for text, iso in list(WRITTEN.items())[:4]:
        gen = lm.generate(text, model="demo-translator", max_new_tokens=16, logprobs=2,
                          manager=manager)
        assert gen.text == iso and gen.stats.stop_reason == "eos"
    text, iso = next(iter(WRITTEN.items()))
    right = lm.score(text, target=iso, model="demo-translator", manager=manager)
    wrong = lm.score(text, target=iso[:5] + iso[8:] + iso[4:8], model="demo-translator",
                     manager=manager)
    assert right.logprob > wrong.logprob


def test_a_cell_translates_its_body():
    from IPython.core.interactiveshell import InteractiveShell

    import llm_magic as lm

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llm_magic")
    try:
        text, iso = next(iter(WRITTEN.items()))
        ip.run_cell_magic("llm", "demo-translator -n 16 --no-stream", text)
        assert ip.user_ns["_llm"].text == iso
    finally:
        lm.unload("demo-translator")
        ip.run_line_magic("unload_ext", "llm_magic")


def test_a_translation_is_recorded_rerun_and_quantized(manager, store):
    import llm_magic as lm

    manager.load("demo-translator")
    text, iso = next(iter(WRITTEN.items()))
    gen = lm.generate(text, model="demo-translator", max_new_tokens=16, manager=manager)
    again = lm.rerun(gen.id, manager=manager)
    assert again.matches and again.generation.text == iso
    small = manager.load("demo-translator", quantize="int8")
    assert small.info.quantization == "int8" and small.info.kind == "seq2seq"
    assert lm.generate(text, model=small.name, max_new_tokens=16, manager=manager).text == iso
