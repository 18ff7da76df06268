"""A separate Python process that generates with history on, for tests of the history store.

``python _history_child.py ROLE DATABASE MODEL_DIR [ARGS]`` where ROLE is:

- ``kill``: three short generations (one JSON line each: id, text), then ``LONG``
  and a long streamed generation, each piece a JSON line, until it is killed;
- ``exit``: a long generation in a daemon thread, and the interpreter exits
  once its partial output is in the file;
- ``writer NAME COUNT GO``: print ``ready``, wait for the file GO, then COUNT
  short generations on a model named NAME, one id per line;
- ``full LONG_MODEL_DIR``: one generation, then fill the disk the database is
  on, two more, free it, one more (a JSON line: ids, warnings); then a long
  generation during which the disk fills, then one more once it is freed
  (a JSON line: ids, warnings, rows);
- ``readonly``: two generations on a database that cannot be written; prints
  one JSON line with the ids, texts and warnings.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import warnings
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the disk is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == 28, exc  # ENOSPC: the disk is full
    finally:
        os.close(fd)


def written(database: str) -> bool:
    """Whether the running generation's partial output is in the file (read as another program)."""
    import sqlite3

    if not Path(database).exists():
        return False
    con = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return bool(con.execute("SELECT 1 FROM generations WHERE status = 'running' "
                                "AND output != ''").fetchall())
    except sqlite3.OperationalError:  # not made yet
        return False
    finally:
        con.close()


def main() -> None:
    role, database, model_dir, *rest = sys.argv[1:]
    import llm_magic as lm
    from llm_magic.errors import LLMMagicWarning
    from llm_magic.history import configure

    configure(path=database, flush_interval=0.1)

    def recorded(fn: object) -> tuple[list[object], list[str]]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fn()  # type: ignore[operator]
        mine = [str(w.message) for w in caught if issubclass(w.category, LLMMagicWarning)]
        return out, mine

    if role == "kill":
        lm.load(model_dir, name="long")
        for i in range(3):
            g = lm.generate(f"Prompt number {i}", max_new_tokens=8)
            emit({"id": g.id, "text": g.text})
        emit("LONG")
        lm.generate("The long one", max_new_tokens=8000, stream=emit)
    elif role == "exit":
        lm.load(model_dir, name="long")
        out: list[str] = []
        threading.Thread(target=lambda: lm.generate("Cut by the exit", max_new_tokens=15000,
                                                    stream=out.append), daemon=True).start()
        while not written(database):
            time.sleep(0.05)
        time.sleep(0.3)
        emit("exiting")
        sys.exit(0)  # the generation's thread is a daemon: the interpreter does not wait
    elif role == "writer":
        name, count, go = rest
        lm.load(model_dir, name=name)
        emit("ready")
        while not Path(go).exists():
            time.sleep(0.01)
        for i in range(int(count)):
            emit(lm.generate(f"{name} generation {i}", max_new_tokens=3).id)
    elif role == "full":
        lm.load(model_dir, name="tiny")
        first = lm.generate("Before the disk is full", max_new_tokens=4)
        lm.history()  # its end is written before the disk fills
        filler = Path(database).parent / "filler"
        fill(filler)
        gens, caught = recorded(lambda: [
            lm.generate("While the disk is full", max_new_tokens=4, stream=lambda s: None),
            lm.generate("Still full", max_new_tokens=4),
        ])
        os.remove(filler)
        after, later = recorded(lambda: lm.generate("After freeing space", max_new_tokens=4))
        emit({"ids": [first.id, *(g.id for g in gens), after.id],
              "tokens": [g.stats.new_tokens for g in gens], "warnings": caught + later,
              "rows": [(r.id, r.prompt, r.status) for r in lm.history()]})
        # The disk fills while a generation runs: its partial output stays as last written.
        lm.load(rest[0], name="long")
        stop = threading.Event()

        def sink(text: str) -> None:
            if stop.is_set() or not written(database):
                return
            fill(filler)
            time.sleep(0.5)  # the writer thread meets the full disk
            stop.set()

        def phase() -> tuple[lm.Generation, lm.Generation]:
            long = lm.generate("Fills the disk", model="long", max_new_tokens=15000,
                               stream=sink, stop_event=stop)
            lm.history()  # the writer has met the full disk with the end of "Fills the disk"
            os.remove(filler)
            return long, lm.generate("Space again", model="tiny", max_new_tokens=4)

        (long, last), caught = recorded(phase)
        emit({"ids": [long.id, last.id], "text": long.text, "warnings": caught,
              "rows": [(r.id, r.prompt, r.status, r.output) for r in lm.history()]})
    elif role == "readonly":
        lm.load(model_dir, name="tiny")
        gens, caught = recorded(lambda: [lm.generate(f"Read-only {i}", max_new_tokens=4)
                                         for i in range(2)])
        emit({"ids": [g.id for g in gens], "tokens": [g.stats.new_tokens for g in gens],
              "warnings": caught})
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
