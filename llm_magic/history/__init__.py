"""History: every generation recorded in SQLite, read back, and run again.

- :mod:`.recorder`: listens to every manager's events and writes a row per generation;
  ``lm.history``;
- :mod:`.replay`: ``lm.rerun``, a prompt, a branch or a conversation's turn run again;
- :mod:`.conversations`: ``lm.chat(resume=ID)``, a conversation rebuilt from a turn's row
  (imported on first use);
- :mod:`.db`: the database file, its schema and migrations;
- :mod:`.read`: what a row holds and how it reads (tables, token records, reruns).

Importing :mod:`llm_magic` imports this package: history listens from then on.
"""

from __future__ import annotations

from .read import HistoryRow, HistoryTable, RerunResult
from .recorder import ENV, HistorySettings, configure, history, settings
from .replay import rerun

__all__ = ["ENV", "HistoryRow", "HistorySettings", "HistoryTable", "RerunResult", "configure",
           "history", "rerun", "settings"]
