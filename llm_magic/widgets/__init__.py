"""The widget panels of llm_magic (the notebook face beside the magics).

Each view lives in its own module and imports anywidget and ipywidgets there,
so importing this package costs nothing:

- :mod:`llm_magic.widgets.monitor`: live resource gauges (``lm.monitor()``);
- :mod:`llm_magic.widgets.cells`: per-cell figures (``%llm monitor --cell``);
- :mod:`llm_magic.widgets.models`: the model manager panel;
- :mod:`llm_magic.widgets.playground`: prompt, sliders, streaming output;
- :mod:`llm_magic.widgets.panel`: both of those together (``lm.panel()``);
- :mod:`llm_magic.widgets.attention`: attention heatmaps (``AttentionMap.widget()``).

The front-end code of the custom views is in ``static/*.js`` (anywidget ES
modules shipped with the package; nothing comes from a CDN). The helpers they
share are in ``static/_shared.js``, which ``_common.esm`` puts in front of each
view's own file.
"""

from __future__ import annotations

__all__: list[str] = []
