"""Plain helpers and the small data types that several layers share.

Nothing here imports any other part of llm_magic but :mod:`llm_magic.errors`:

- :mod:`.sizes`: bytes and counts as people read them, plain-text tables;
- :mod:`.visible`: one rule for showing a token's whitespace and control characters;
- :mod:`.text`: :func:`~.text.check_text`, the one check of text a user hands in
  (type, empty, characters UTF-8 cannot encode);
- :mod:`.registry`: a name -> ``"module:attr"`` table imported on first use;
- :mod:`.views`: the notebook views of API objects, found by kind through that table;
- :mod:`.heatmap`: block means and PNG encoding for heatmaps (NumPy only);
- :mod:`.attention_map`: :class:`AttentionMap`, what a generation and
  ``lm.attention`` both return.
"""
