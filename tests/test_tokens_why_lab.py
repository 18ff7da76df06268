"""The token view's "why?" in JupyterLab and Notebook 7, driven in Chromium.

A notebook makes a generation with ``logprobs=5`` and computes, in the kernel,
``lm.attribute(g, positions=[i])`` (and the contrast of "why not?") itself;
the page must show exactly those numbers on hover, shade the prompt tokens and
the earlier output, mark the token attributed and the ones after it, carry a
labelled diverging scale, show integrated gradients' completeness, go back to
the probability shading, answer while another cell runs, and fit 1280 and
900 px. Screenshots of each app at each width go to ``$LLM_MAGIC_SHOTS``
(default ``/tmp/shots``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from llm_magic.common.visible import visible

VIEW = ".llm-tokens"
SHOTS = Path(os.environ.get("LLM_MAGIC_SHOTS", "/tmp/shots"))

SETUP = ("import json, time\nimport llm_magic as lm\nfrom llm_magic.analysis.tokens import view\n"
         "lm.load('demo');\n"
         "def rows(a):\n"
         "    print(json.dumps({'scores': a.scores[0].tolist(), 'inputs': list(a.input_tokens),"
         " 'prompt': a.prompt_tokens, 'f': float(a.value[0]),"
         " 'c': None if a.completeness is None else float(a.completeness[0])}))")

# Each shaded part as the page shows it: its text, score, hover and the contrast of its ink.
SHADED = """root => Array.from(root.querySelectorAll(
    '.llm-tokens-whylead .llm-tokens-input, .llm-tokens-text .llm-tokens-token')).map(s => {
  const rgbOf = (v) => v.match(/\\d+/g).slice(0, 3).map(Number);
  const lum = (c) => {
    const l = c.map(v => v / 255).map(v => v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
    return 0.2126 * l[0] + 0.7152 * l[1] + 0.0722 * l[2];
  };
  const st = getComputedStyle(s);
  const [a, b] = [lum(rgbOf(st.color)), lum(rgbOf(st.backgroundColor))];
  const score = s.dataset.score === undefined ? null : Number(s.dataset.score);
  return {text: s.textContent, score,
          title: s.title, cls: s.className, bg: st.backgroundColor,
          contrast: (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)};
})"""

FITS = """root => {
  const area = root.closest('.jp-OutputArea-output') || root.parentElement;
  const a = area.getBoundingClientRect();
  const parts = Array.from(root.querySelectorAll('.llm-tokens-text, .llm-tokens-panel, '
      + '.llm-tokens-whyhead, .llm-tokens-legend, .llm-tokens-whyline'));
  return {root: [root.scrollWidth, root.clientWidth],
          outside: parts.filter(p => p.getBoundingClientRect().right > a.right + 1)
                        .map(p => p.className)};
}"""


def printed(nb: Any, index: int, timeout: float = 120) -> Any:
    outputs = nb.run_and_wait(index, timeout=timeout)
    return [json.loads(line) for out in outputs for line in out.splitlines() if line.strip()]


def wait_why(nb: Any, root: Any, position: int, text: str) -> None:
    nb.page.wait_for_function(
        "([r, p, t]) => r.dataset.why === String(p) && r.dataset.whyState === 'idle'"
        " && r.querySelector('.llm-tokens-whywhat').textContent.includes(t)",
        arg=[root.element_handle(), position, text])


def check_row(shaded: list[dict[str, Any]], row: dict[str, Any], position: int) -> None:
    """The prompt tokens and the output before ``position`` carry the kernel's scores."""
    prompt = row["prompt"]
    inputs = shaded[:prompt]
    outputs = shaded[prompt:]
    assert [s["text"] for s in inputs] == [visible(t) for t in row["inputs"][:prompt]]
    for j, s in enumerate(inputs + outputs[:position]):
        want = row["scores"][j]
        assert s["score"] is not None and abs(s["score"] - want) <= 1e-6 * max(1, abs(want)), (j, s)
        assert s["title"].endswith(" nats") and s["title"].split(": ")[1][0] in "+\u2212"
    assert outputs[position]["score"] is None and "llm-tokens-whytarget" in outputs[position]["cls"]
    assert all("llm-tokens-after" in s["cls"] and s["score"] is None
               for s in outputs[position + 1:])
    positive = [s for s in shaded if s["score"] is not None and s["score"] > 0]
    negative = [s for s in shaded if s["score"] is not None and s["score"] < 0]
    assert positive and negative  # a real row has both
    # Red above 0, blue below: the red channel leads on one side, the blue on the other.
    rgb = lambda s: [int(v) for v in s["bg"][4:-1].split(",")]  # noqa: E731
    assert all(rgb(s)[0] >= rgb(s)[2] for s in positive)
    assert all(rgb(s)[2] >= rgb(s)[0] for s in negative)
    assert min(s["contrast"] for s in shaded) >= 4.5


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_why_and_why_not_shade_the_inputs_with_the_kernels_numbers(open_notebook, app):
    nb = open_notebook([
        SETUP,
        "g = lm.generate('The import statement', model='demo', max_new_tokens=12, logprobs=5)\n"
        "v = view(g)\nv",
        "rows(lm.attribute(g, positions=[6]))",
        "r = g.tokens[6]\nrows(lm.attribute(g, positions=[6], contrast=(r.id, r.top[1][0])))",
        "rows(lm.attribute(g, positions=[6], method='integrated_gradients',\n"
        "                  contrast=(r.id, r.top[1][0])))",
        "time.sleep(25)",
    ], app=app)
    nb.run_and_wait(0, timeout=180)
    nb.run_and_wait(1)
    root = nb.cell(1).locator(VIEW)
    spans = root.locator(".llm-tokens-text .llm-tokens-token")
    spans.first.wait_for()
    (row,) = printed(nb, 2)
    (contrast,) = printed(nb, 3)
    (ig,) = printed(nb, 4)

    # Select token 6, then "why?": the kernel's row, on the prompt's tokens and the output.
    spans.nth(6).click()
    root.locator(".llm-tokens-why").click()
    wait_why(nb, root, 6, "(token 6), by input \u00d7 gradient")
    check_row(root.evaluate(SHADED), row, 6)
    assert root.locator(".llm-tokens-lead").first.is_hidden()
    legend = root.locator(".llm-tokens-whylegend").inner_text()
    assert "log-probability attributed, nats" in legend and "red raised" in legend
    assert root.locator(".llm-tokens-legend").is_hidden()
    assert root.locator(".llm-tokens-why").get_attribute("aria-pressed") == "true"
    assert root.locator(".llm-tokens-whyramp").count() == 1
    facts = root.locator(".llm-tokens-whyfacts").inner_text()
    assert f"{abs(row['f']):.3f} nats" in facts or f"{abs(row['f']):.2g}" in facts
    assert root.locator(".llm-tokens-whycheck").is_hidden()
    for width in (1280, 900):
        nb.page.set_viewport_size({"width": width, "height": 900})
        fit = root.evaluate(FITS)
        assert fit["root"][0] <= fit["root"][1] + 1 and fit["outside"] == [], fit
        SHOTS.mkdir(parents=True, exist_ok=True)
        nb.cell(1).screenshot(path=str(SHOTS / f"why_{app}_{width}.png"))
    nb.page.set_viewport_size({"width": 1280, "height": 900})

    # "why not?" on the second alternative: log p(chosen) - log p(alternative).
    # (A click in Lab, the keyboard in Notebook 7: focus, then Enter.)
    why_not = root.locator(".llm-tokens-panel tr.llm-tokens-alt[data-rank='2'] .llm-tokens-whynot")
    assert why_not.get_attribute("role") == "button"
    if app == "lab":
        why_not.click()
    else:
        why_not.focus()
        nb.page.keyboard.press("Enter")
    wait_why(nb, root, 6, "and not")
    check_row(root.evaluate(SHADED), contrast, 6)
    assert "log-probability difference attributed, nats" in \
        root.locator(".llm-tokens-whylegend").inner_text()
    asked = root.locator(".llm-tokens-panel tr.llm-tokens-whyrow")
    assert asked.get_attribute("data-rank") == "2" and asked.count() == 1
    assert root.locator(".llm-tokens-why").get_attribute("aria-pressed") == "false"
    assert "\u2212 log p(" in root.locator(".llm-tokens-whyfacts").inner_text()
    nb.cell(1).screenshot(path=str(SHOTS / f"why_not_{app}_1280.png"))

    # The selector: integrated gradients, its completeness shown, no warning under 1 %.
    root.locator(".llm-tokens-method").select_option("integrated_gradients")
    wait_why(nb, root, 6, "by integrated gradients")
    assert "and not" in root.locator(".llm-tokens-whywhat").inner_text()  # the same question
    check_row(root.evaluate(SHADED), ig, 6)
    check = root.locator(".llm-tokens-whycheck").inner_text()
    assert check.startswith("completeness error ") and " %" in check
    assert root.locator(".llm-tokens-whywarn").is_hidden()
    nb.cell(1).screenshot(path=str(SHOTS / f"why_ig_{app}_1280.png"))

    # While another cell runs (a subshell answers): why? of token 3, by integrated gradients.
    nb.run(5)
    spans.nth(3).click()
    root.locator(".llm-tokens-why").click()
    wait_why(nb, root, 3, "(token 3), by integrated gradients")
    assert nb.prompt(5) == "[*]:", "the attribution waited for the running cell"
    shaded = root.evaluate(SHADED)
    assert [s["score"] is not None for s in shaded].count(True) == ig["prompt"] + 3

    # Back to the probability shading.
    root.locator(".llm-tokens-whyback").click()
    nb.page.wait_for_function("r => r.dataset.why === undefined", arg=root.element_handle())
    assert root.locator(".llm-tokens-whyhead").is_hidden()
    assert root.locator(".llm-tokens-lead").first.is_visible()
    assert spans.evaluate_all("ss => ss.every(s => s.dataset.shade !== undefined && !s.title)")
    assert "less likely" in root.locator(".llm-tokens-legend").inner_text()
    assert root.locator(".llm-tokens-error").inner_text() == ""
    nb.wait_done(5, timeout=60)
    assert nb.outside_requests() == []
    assert page_errors(nb) == [], nb.errors


# Notebook 7 raises these on its own page, with or without any view of llm_magic.
NOTEBOOK7_OWN = ("Cannot read properties of undefined (reading 'schema')",
                 "Command 'filebrowser:open-path' not registered.")


def page_errors(nb: Any) -> list[str]:
    return [e for e in nb.errors if not (nb.app == "notebook" and e in NOTEBOOK7_OWN)]
