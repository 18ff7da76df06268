"""The bundled translator's tokenizer: word level, built from the date task's own words.

Month and weekday names, ordinal words and suffixes are single tokens (with a leading ``▁`` for
a preceding space, as in SentencePiece models); every digit and punctuation mark is a token of
its own, so a year's four digits line up with the four digits of ``YYYY-MM-DD``. Input is
lower-cased. ``<pad>``, ``</s>`` (appended to every sequence), ``<s>`` (the decoder start)
and ``<unk>`` are the special tokens.

Nothing heavy is imported until :func:`build_tokenizer` runs.
"""

from __future__ import annotations

import datetime

from . import _dates

__all__ = ["BOS", "EOS", "PAD", "UNK", "build_tokenizer"]

#: Special tokens, in id order.
PAD, EOS, BOS, UNK = "<pad>", "</s>", "<s>", "<unk>"


def _pre_tokenizer():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
    ])


def _vocabulary() -> list[str]:
    """Every piece the task writes, in a fixed order: specials, digits, then sorted pieces."""
    from tokenizers import normalizers

    normalizer = normalizers.Lowercase()
    pre = _pre_tokenizer()
    pieces: set[str] = set()
    # January has every day number and weekday; the first of each month adds every month.
    dates = [datetime.date(2021, 1, d) for d in range(1, 32)]
    dates += [datetime.date(2021, m, 1) for m in range(2, 13)]
    for f in _dates.all_formats():
        for date in dates:
            text = normalizer.normalize_str(_dates.render(date, f))
            pieces.update(piece for piece, _ in pre.pre_tokenize_str(text))
    digits = [str(i) for i in range(10)]
    return [PAD, EOS, BOS, UNK, *digits, "-", *sorted(pieces - set(digits) - {"-"})]


def build_tokenizer(max_length: int = 64):
    """The translator's word-level tokenizer, wrapped for transformers.

    Parameters
    ----------
    max_length : int
        Recorded as ``model_max_length`` (the model's position limit).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        Lower-cases its input; appends ``</s>`` to every sequence; decodes ``▁`` back to
        spaces, so ``decode`` of ``2021-03-03``'s tokens is ``"2021-03-03"``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {piece: i for i, piece in enumerate(_vocabulary())}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, vocab[EOS])])
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, bos_token=BOS,
        unk_token=UNK, model_max_length=max_length)
