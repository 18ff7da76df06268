"""The bundled demo model: a small GPT-2 trained on Python's own documentation.

``lm.load("demo")`` loads the weights shipped in :data:`MODEL_DIR`. They were made by
``python -m llm_magic.demo.train`` (seeded and reproducible, CPU only, a quarter of an hour)
from text that every Python installation carries: the language-reference topics of
:mod:`pydoc_data.topics` and the docstrings of standard-library modules. The model card is
``MODEL_DIR / "README.md"``.

Importing this package is cheap: it imports neither torch nor transformers.

Examples
--------
>>> from llm_magic.demo import MODEL_DIR
>>> (MODEL_DIR / "config.json").is_file()
True
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MODEL_DIR", "TRANSLATOR_DIR"]

#: The directory holding the shipped weights, tokenizer and model card.
MODEL_DIR: Path = Path(__file__).resolve().parent / "model"
#: The bundled encoder–decoder (a tiny BART that rewrites dates as ``YYYY-MM-DD``), made by
#: ``python -m llm_magic.demo.train_translator``; its model card is ``README.md`` there.
TRANSLATOR_DIR: Path = Path(__file__).resolve().parent / "translator"
