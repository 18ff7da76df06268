"""%%llm in a real kernel against raw transformers, side by side in one run.

Prints one table:
- tokens/s of a ``%%llm`` cell streaming into a display handle over a cell that runs raw
  ``model.generate`` (greedy, same model, prompt and ``torch.set_num_threads``), both timed
  by the client from execute request to reply; the ratio is the median of the ratios
  within each round of cells run back to back; target >= 0.95;
- the same without streaming, and how many display messages a streamed cell sends;
- ``%%llm --batch`` of 8 prompts against 8 ``%%llm`` cells one after another: the speed-up.

The demo model is used when it ships, else a small GPT-2 built into a temp dir.

Usage: ``python benchmarks/magic_throughput.py [--tokens 200] [--batch-tokens 100]
[--repeat 9] [--threads 1]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import model_dir, table  # noqa: E402

PROMPT = "The import statement"
PROMPTS = ["The import statement", "The for statement", "The while statement",
           "The try statement", "A list comprehension", "The class definition",
           "The with statement", "A dict literal"]


class Kernel:
    """A kernel of this interpreter, driven like a front end would drive it."""

    def __init__(self) -> None:
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=dict(os.environ))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    def run(self, code: str) -> tuple[float, list[dict[str, Any]]]:
        """Execute ``code``; return the seconds to its reply and its iopub messages."""
        t0 = time.perf_counter()
        msg_id = self.kc.execute(code)
        msgs = []
        while True:
            msg = self.kc.get_iopub_msg(timeout=600)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            msgs.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        while True:
            reply = self.kc.get_shell_msg(timeout=600)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        seconds = time.perf_counter() - t0
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"{code!r} failed: {reply['content'].get('evalue')}")
        return seconds, msgs

    def value(self, expression: str) -> str:
        _, msgs = self.run(f"print({expression})")
        return "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream").strip()

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200, help="new tokens per generation")
    parser.add_argument("--batch-tokens", type=int, default=100, help="new tokens per prompt "
                        "in the batch comparison")
    parser.add_argument("--repeat", type=int, default=9, help="runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both")
    args = parser.parse_args()

    kind, path = model_dir()
    source = "demo" if kind == "demo" else path
    kernel = Kernel()
    try:
        kernel.run(f"import torch; torch.set_num_threads({args.threads})\n"
                   "%load_ext llm_magic\n"
                   f"%llm load {source} --as bench")
        kernel.run(
            "import llm_magic as lm\n"
            "_h = lm.get_manager().backend('bench')\n"
            f"_inputs = _h.tokenizer({PROMPT!r}, return_tensors='pt')\n"
            "def raw_generate():\n"
            "    with torch.inference_mode():\n"
            f"        out = _h.model.generate(**_inputs, max_new_tokens={args.tokens},\n"
            "                                do_sample=False, pad_token_id=_h.pad_id)\n"
            "    return int(out.shape[1] - _inputs['input_ids'].shape[1])\n"
        )
        params = int(kernel.value("lm.get_manager().info('bench').parameters"))
        raw_cell = "raw_n = raw_generate()"
        streamed = f"%%llm bench -n {args.tokens} --no-chat\n{PROMPT}"
        plain = f"%%llm bench -n {args.tokens} --no-chat --no-stream\n{PROMPT}"
        for code in (raw_cell, streamed, plain):  # warm up
            kernel.run(code)
        n_raw = int(kernel.value("raw_n"))
        n_cell = int(kernel.value("_llm.stats.new_tokens"))
        times: dict[str, list[float]] = {raw_cell: [], streamed: [], plain: []}
        messages = []
        # Interleaved, so that drift in the machine's load hits all three alike, and
        # in a rotating order, so that no cell always follows the same one.
        order = list(times)
        for round_ in range(args.repeat):
            for code in order[round_ % 3 :] + order[: round_ % 3]:
                seconds, msgs = kernel.run(code)
                times[code].append(seconds)
                if code == streamed:
                    messages.append(sum(m["msg_type"] in ("display_data", "update_display_data")
                                        for m in msgs))
        t_raw, t_stream, t_plain = times[raw_cell], times[streamed], times[plain]
        raw_tps = n_raw / statistics.median(t_raw)
        stream_tps = n_cell / statistics.median(t_stream)
        plain_tps = n_cell / statistics.median(t_plain)
        # Ratios are taken within each round (cells run back to back) and their median
        # reported: the machine's speed drifts between rounds more than between cells.
        stream_ratio = statistics.median((n_cell / s) / (n_raw / r)
                                         for r, s in zip(t_raw, t_stream, strict=True))
        plain_ratio = statistics.median((n_cell / p) / (n_raw / r)
                                        for r, p in zip(t_raw, t_plain, strict=True))

        batch_body = "\n---\n".join(PROMPTS)
        batch = f"%%llm bench --batch -n {args.batch_tokens} --no-chat\n{batch_body}"
        singles = [f"%%llm bench -n {args.batch_tokens} --no-chat\n{p}" for p in PROMPTS]
        kernel.run(batch)
        t_batch, t_seq = [], []
        for _ in range(max(1, args.repeat // 2)):
            t_batch.append(kernel.run(batch)[0])
            t_seq.append(sum(kernel.run(code)[0] for code in singles))
        batch_s, seq_s = statistics.median(t_batch), statistics.median(t_seq)
    finally:
        kernel.close()

    rows = [
        ("model", f"{kind} ({params / 1e6:.1f}M params, {args.threads} thread)", "", ""),
        (f"raw model.generate cell, tokens/s ({n_raw} tokens)", f"{raw_tps:.1f}", "1.000", ""),
        (f"%%llm cell streamed, tokens/s ({n_cell} tokens)", f"{stream_tps:.1f}",
         f"{stream_ratio:.3f}", ">= 0.95"),
        ("%%llm cell --no-stream, tokens/s", f"{plain_tps:.1f}", f"{plain_ratio:.3f}",
         ""),
        ("display messages per streamed cell", f"{statistics.median(messages):.0f}", "", ""),
        (f"8 %%llm cells one by one ({args.batch_tokens} tokens each)", f"{seq_s:.2f} s", "1",
         ""),
        ("%%llm --batch of the same 8 prompts", f"{batch_s:.2f} s",
         f"{seq_s / batch_s:.1f}x faster", "report"),
    ]
    print(table(rows, ("measure", "value", "ratio", "target")))


if __name__ == "__main__":
    main()
