"""Causes of a translation in JupyterLab and Notebook 7, driven in Chromium.

The demo translator writes a date; the token view's "why?" on the month's digit
shades the source tokens and the decoder's input with the numbers the kernel's
``lm.attribute(g, positions=[i])`` gives, and the attribution table, the
cross-attention patching grid and the ablation table show in the output area
within 1,280 and 900 px. Screenshots go to ``$LLM_MAGIC_SHOTS`` (default
``/tmp/shots``).
"""

from __future__ import annotations

import pytest
from test_tokens_why_lab import FITS, SHADED, SHOTS, VIEW, check_row, printed, wait_why

SETUP = ("import json\nimport llm_magic as lm\nfrom llm_magic.analysis.tokens import view\n"
         "lm.load('demo-translator');\n"
         "def rows(a):\n"
         "    print(json.dumps({'scores': a.scores[0].tolist(), 'inputs': list(a.input_tokens),"
         " 'prompt': a.prompt_tokens, 'source': a.source_tokens, 'f': float(a.value[0])}))")

# The static outputs: how wide each is against the output area it sits in.
WIDE = """el => {
  const area = el.closest('.jp-OutputArea-output');
  return [el.getBoundingClientRect().right, area.getBoundingClientRect().right,
          el.scrollWidth, el.clientWidth];
}"""


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_why_of_a_translated_token_and_the_causes_tables(open_notebook, app):
    nb = open_notebook([
        SETUP,
        "g = lm.generate('Sunday, the seventh of July, 1963', model='demo-translator',"
        " logprobs=5)\nv = view(g)\nv",
        "rows(lm.attribute(g, positions=[6]))",
        "lm.attribute(g, method='occlusion')",
        "lm.patch('3 March 2021', '3 March 2022', model='demo-translator', target='202',\n"
        "         answers=('1', '2'), part='cross', over='heads')",
        "lm.ablate('the third of March, 2021', model='demo-translator', target='2021-03-0',\n"
        "          part='cross', layers=[1])",
    ], app=app)
    nb.run_and_wait(0, timeout=180)
    nb.run_and_wait(1)
    root = nb.cell(1).locator(VIEW)
    spans = root.locator(".llm-tokens-text .llm-tokens-token")
    spans.first.wait_for()
    (row,) = printed(nb, 2)
    assert row["inputs"][row["source"]] == "<s>" and row["prompt"] == row["source"] + 1

    # "why?" of the month's 7: the source and the decoder's start token lead, then the output.
    spans.nth(6).click()
    root.locator(".llm-tokens-why").click()
    wait_why(nb, root, 6, "(token 6), by input \u00d7 gradient")
    check_row(root.evaluate(SHADED), row, 6)
    for width in (1280, 900):
        nb.page.set_viewport_size({"width": width, "height": 900})
        fit = root.evaluate(FITS)
        assert fit["root"][0] <= fit["root"][1] + 1 and fit["outside"] == [], fit
        SHOTS.mkdir(parents=True, exist_ok=True)
        nb.cell(1).screenshot(path=str(SHOTS / f"why_translation_{app}_{width}.png"))

    # The static tables: each fits its output area, scrolling inside itself.
    for index, name, selector in ((3, "attribution", ".llm-magic-attribution"),
                                  (4, "patching", ".jp-OutputArea-output"),
                                  (5, "ablation", ".jp-OutputArea-output")):
        outputs = nb.run_and_wait(index)
        text = "\n".join(outputs)
        if name == "attribution":
            assert "11 output tokens x 24 input tokens" in text
        elif name == "patching":
            assert "cross" in text
        else:
            assert "cross" in text
        shown = nb.cell(index).locator(selector).first
        for width in (1280, 900):
            nb.page.set_viewport_size({"width": width, "height": 900})
            right, edge, scroll, client = shown.evaluate(WIDE)
            assert right <= edge + 1, (name, width, right, edge)
            nb.cell(index).screenshot(path=str(SHOTS / f"{name}_translation_{app}_{width}.png"))
        nb.page.set_viewport_size({"width": 1280, "height": 900})
    assert nb.outside_requests() == []
