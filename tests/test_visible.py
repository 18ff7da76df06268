"""A token's text as every view shows it: one rule in Python and in the page's JavaScript.

``llm_magic.common.visible.visible`` (static snapshots, labels made in the
kernel) and ``visible`` in ``widgets/static/_shared.js`` (the live views) must
write the same string for every text; the JavaScript runs here under node.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from llm_magic.common.visible import visible
from llm_magic.widgets._common import SHARED_ESM, STATIC

#: The characters that reorder the text around them: embeddings and overrides, isolates, marks.
BIDI = ([chr(c) for c in range(0x202A, 0x202F)] + [chr(c) for c in range(0x2066, 0x206A)]
        + ["\u200e", "\u200f", "\u061c"])
SAMPLES = [
    "", " plain", "a\tb\r\nc", "\x00\x17\x1b[31m\x7f", "x\ny\n",
    "abc\u202edef", "\u2067\u05e9\u05dc\u05d5\u05dd\u2069 ok", "\u200f!\u200e", "\u061c\u0627",
    "".join(BIDI), "caf\u00e9 \u4e2d\u6587 \U0001f600 \u00a0", "\u200b\u200d",
    "\\u202e is text already", "\u0085\u00ad",
]


@pytest.mark.parametrize("ch", BIDI)
def test_bidi_controls_are_written_out(ch):
    assert visible(f"a{ch}b") == f"a\\u{ord(ch):04x}b"


def test_what_was_shown_already_stays():
    assert visible(" a\tb\r\n") == " a\u21e5b\u240d\u21b5"
    assert visible("x\ny", breaks=True) == "x\u21b5\ny"
    assert visible("\x17\x7f") == "\\x17\\x7f"
    assert visible("caf\u00e9 \u05e9\u05dc\u05d5\u05dd \U0001f600") == \
        "caf\u00e9 \u05e9\u05dc\u05d5\u05dd \U0001f600"  # right-to-left letters are text
    assert not any(ch in visible("".join(BIDI)) for ch in BIDI)


@pytest.mark.skipif(shutil.which("node") is None, reason="no node on this machine")
@pytest.mark.parametrize("breaks", [False, True])
def test_python_and_javascript_write_the_same(breaks, tmp_path):
    script = tmp_path / "visible.js"
    script.write_text((STATIC / SHARED_ESM).read_text() + """
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(input.texts.map((t) => visible(t, input.breaks))));
""")
    run = subprocess.run(["node", str(script)], input=json.dumps({"texts": SAMPLES,
                                                                   "breaks": breaks}),
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got == [visible(t, breaks=breaks) for t in SAMPLES]
