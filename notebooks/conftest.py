"""The notebooks run by nbval record their generations in a temporary history, not the user's."""

from __future__ import annotations

import os
import tempfile

# Kernels started by nbval inherit this; no notebook run touches the real history.
os.environ["LLM_MAGIC_HISTORY"] = os.path.join(
    tempfile.mkdtemp(prefix="llm_magic_nb_history_"), "history.sqlite"
)
