"""Train the bundled demo model from text that ships with every Python installation.

Run ``python -m llm_magic.demo.train`` to rebuild ``llm_magic/demo/model`` (about a quarter
of an hour on two CPU cores). The run is seeded: the same ``--seed`` and ``--threads`` give
the same weights, byte for byte, on the same Python, torch and tokenizers versions.

The corpus is the language-reference topics of :mod:`pydoc_data.topics` followed by the
docstrings (:func:`inspect.getdoc`) of a fixed, sorted list of standard-library modules, their
public classes, functions and methods. Every twentieth chunk of it is held out for validation.
A byte-level BPE tokenizer is trained on the rest with :mod:`tokenizers`, then a small GPT-2
is trained from scratch with AdamW and a warmup + cosine learning-rate schedule, saved as
safetensors with a model card (``README.md``).

Nothing heavy is imported until :func:`train` runs.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "MODULES",
    "PROMPT",
    "TrainResult",
    "build_corpus",
    "iter_documents",
    "main",
    "save_tokenizer",
    "split_corpus",
    "train",
    "train_tokenizer",
]

#: The special token that separates documents; also bos, unk and pad.
EOS = "<|endoftext|>"
#: The prompt of the samples in the model card.
PROMPT = "The import statement"
#: Where ``python -m llm_magic.demo.train`` writes by default.
DEFAULT_OUT = Path(__file__).resolve().parent / "model"
#: Optimiser steps of the shipped model (about 14 minutes on two idle cores).
DEFAULT_STEPS = 1200
#: ``--small``: a model to compare with the demo, trained in 40 to 80 s on one thread of a busy
#: two-core machine (600 steps of 16 windows of 64 tokens, no dropout): enough that its greedy
#: text is words, not blank lines. One thread, because there two threads took eight times as
#: long (5.6 minutes). It reads the shipped demo's tokenizer, so the two models line up token
#: by token.
SMALL = {"steps": 600, "threads": 1, "n_layer": 2, "n_embd": 64, "n_head": 2, "context": 64,
         "batch_size": 16, "lr": 5e-3, "dropout": 0.0, "corpus_limit": 300_000}
#: Validation gets every ``VAL_EVERY``-th chunk (5 %).
VAL_EVERY = 20
#: Documents longer than this many characters are cut at blank lines into chunks.
CHUNK_CHARS = 2000
#: Docstrings shorter than this many characters are left out ("Return self==value.").
MIN_DOC_CHARS = 40

#: Standard-library modules whose docstrings join the corpus, in this (sorted) order. A module
#: that fails to import on this platform or Python version is skipped.
MODULES: tuple[str, ...] = tuple(sorted("""
    abc aifc argparse array ast asynchat asyncio asyncio.base_events asyncio.base_futures
    asyncio.base_subprocess asyncio.base_tasks asyncio.constants asyncio.coroutines
    asyncio.events asyncio.exceptions asyncio.format_helpers asyncio.futures asyncio.locks
    asyncio.log asyncio.mixins asyncio.proactor_events asyncio.protocols asyncio.queues
    asyncio.runners asyncio.selector_events asyncio.sslproto asyncio.staggered asyncio.streams
    asyncio.subprocess asyncio.taskgroups asyncio.tasks asyncio.threads asyncio.timeouts
    asyncio.transports asyncio.trsock asyncio.unix_events asyncore atexit audioop base64 bdb
    binascii bisect builtins bz2 cProfile calendar cgi cgitb chunk cmath cmd code codecs codeop
    collections collections.abc colorsys compileall concurrent concurrent.futures
    concurrent.futures.process concurrent.futures.thread configparser contextlib contextvars
    copy copyreg crypt csv ctypes ctypes.macholib ctypes.util curses curses.ascii
    curses.has_key curses.panel curses.textpad dataclasses datetime dbm dbm.dumb decimal
    difflib dis doctest email email.base64mime email.charset email.contentmanager
    email.encoders email.errors email.feedparser email.generator email.header
    email.headerregistry email.iterators email.message email.mime email.mime.application
    email.mime.audio email.mime.base email.mime.image email.mime.message email.mime.multipart
    email.mime.nonmultipart email.mime.text email.parser email.policy email.quoprimime
    email.utils enum errno faulthandler fcntl filecmp fileinput fnmatch fractions ftplib
    functools gc genericpath getopt getpass gettext glob graphlib grp gzip hashlib heapq hmac
    html html.entities html.parser http http.client http.cookiejar http.cookies http.server
    imaplib imghdr imp importlib importlib.abc importlib.machinery importlib.metadata
    importlib.readers importlib.resources importlib.resources.abc importlib.simple
    importlib.util inspect io ipaddress itertools json json.decoder json.encoder json.scanner
    json.tool keyword linecache locale logging logging.config logging.handlers lzma mailbox
    mailcap marshal math mimetypes mmap modulefinder multiprocessing
    multiprocessing.connection multiprocessing.context multiprocessing.dummy
    multiprocessing.dummy.connection multiprocessing.forkserver multiprocessing.heap
    multiprocessing.managers multiprocessing.pool multiprocessing.popen_fork
    multiprocessing.popen_forkserver multiprocessing.popen_spawn_posix multiprocessing.process
    multiprocessing.queues multiprocessing.reduction multiprocessing.resource_sharer
    multiprocessing.resource_tracker multiprocessing.shared_memory multiprocessing.sharedctypes
    multiprocessing.spawn multiprocessing.synchronize multiprocessing.util netrc nis
    nntplib ntpath numbers opcode operator optparse os os.path ossaudiodev pathlib pickle
    pickletools pipes pkgutil platform plistlib poplib posix posixpath pprint profile pstats
    pty pwd py_compile pyclbr pydoc queue quopri random re reprlib resource runpy sched
    secrets select selectors shelve shlex shutil signal site smtpd smtplib sndhdr socket
    socketserver spwd sqlite3 sqlite3.dbapi2 sre_compile sre_constants sre_parse ssl stat
    statistics string stringprep struct subprocess sunau symtable sys sysconfig syslog
    tabnanny tarfile telnetlib tempfile termios textwrap threading time timeit token tokenize
    tomllib trace traceback tracemalloc tty types typing unicodedata unittest unittest.async_case
    unittest.case unittest.loader unittest.main unittest.mock unittest.result unittest.runner
    unittest.signals unittest.suite unittest.util urllib urllib.error urllib.parse
    urllib.request urllib.response urllib.robotparser uu uuid warnings wave weakref webbrowser
    wsgiref wsgiref.handlers wsgiref.headers wsgiref.simple_server wsgiref.types wsgiref.util
    wsgiref.validate xdrlib xml xml.dom xml.dom.NodeFilter xml.dom.domreg xml.dom.expatbuilder
    xml.dom.minicompat xml.dom.minidom xml.dom.pulldom xml.dom.xmlbuilder xml.etree
    xml.etree.ElementInclude xml.etree.ElementPath xml.etree.ElementTree xml.parsers
    xml.parsers.expat xml.sax xml.sax.expatreader xml.sax.handler xml.sax.saxutils
    xml.sax.xmlreader xmlrpc xmlrpc.client xmlrpc.server zipapp zipfile zipimport zlib zoneinfo
    _pydecimal _pyio _strptime _threading_local _weakrefset tkinter tkinter.colorchooser
    tkinter.commondialog tkinter.constants tkinter.dialog tkinter.dnd tkinter.filedialog
    tkinter.font tkinter.messagebox tkinter.scrolledtext tkinter.simpledialog tkinter.tix
    tkinter.ttk turtle
""".split()))


# --------------------------------------------------------------------------- corpus


def _own_module_names(name: str) -> tuple[str, ...]:
    """Names under which objects of module ``name`` are defined.

    A module's public objects often come from its C accelerator (``io`` from ``_io``,
    ``datetime`` from ``_datetime``), so ``_<last part>`` counts too.

    Examples
    --------
    >>> _own_module_names("xml.etree.ElementTree")
    ('xml.etree.ElementTree', '_ElementTree')
    """
    return name, "_" + name.rpartition(".")[2]


def _docstrings_of(module: ModuleType) -> Iterator[str]:
    """Yield the docstrings of ``module``, its public classes, functions and methods.

    Only objects defined in the module itself (or its C accelerator or submodules) count, so
    that a name imported from elsewhere does not depend on import order.

    Parameters
    ----------
    module : module
        An imported module.

    Yields
    ------
    str
        Docstrings in a fixed order: the module's, then each public attribute's (sorted by
        name), a class's followed by its methods' (sorted by name).
    """
    own = _own_module_names(module.__name__)
    yield inspect.getdoc(module) or ""
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        home = getattr(obj, "__module__", None)
        if not isinstance(home, str) or not (home in own or home.startswith(own[0] + ".")):
            continue  # imported from elsewhere: its own module (if listed) covers it
        yield inspect.getdoc(obj) or ""
        if inspect.isclass(obj):
            for member_name, member in sorted(vars(obj).items()):
                if member_name.startswith("_") and member_name != "__init__":
                    continue
                member_home = getattr(member, "__module__", home)
                if member_home != home:
                    continue  # patched in from elsewhere (transformers adds logger methods)
                if inspect.isroutine(member) or isinstance(member, property):
                    try:
                        yield inspect.getdoc(member) or ""
                    except Exception:  # a descriptor that misbehaves: leave it out
                        continue


def iter_documents(modules: Sequence[str] = MODULES) -> Iterator[str]:
    """Yield the raw documents of the corpus, in a deterministic order.

    First the language-reference topics of :mod:`pydoc_data.topics` (sorted by topic name),
    then the docstrings of ``modules`` in the order given. Modules that fail to import are
    skipped; warnings raised while importing (deprecations) are silenced.

    Parameters
    ----------
    modules : sequence of str
        Importable standard-library module names.

    Yields
    ------
    str
        One document (a topic or a docstring), possibly empty or repeated; see
        :func:`build_corpus` for the cleaned-up corpus.
    """
    import pydoc_data.topics

    for _, text in sorted(pydoc_data.topics.topics.items()):
        yield text
    # Import everything first: importing a submodule can rebind a name in its package
    # (``curses.has_key``), so walking while importing would depend on what was imported before.
    imported: list[ModuleType] = []
    for name in modules:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imported.append(importlib.import_module(name))
        except Exception:  # absent on this platform (curses, nis, ...) or removed
            continue
    for module in imported:
        yield from _docstrings_of(module)


def _chunks(text: str, max_chars: int = CHUNK_CHARS) -> list[str]:
    """Cut ``text`` at blank lines into pieces of at most about ``max_chars`` characters."""
    text = text.strip()
    if len(text) <= max_chars:
        return [text] if text else []
    pieces: list[str] = []
    current = ""
    for paragraph in text.split("\n\n"):
        if current and len(current) + 2 + len(paragraph) > max_chars:
            pieces.append(current)
            current = paragraph
        else:
            current = f"{current}\n\n{paragraph}" if current else paragraph
    if current.strip():
        pieces.append(current)
    return pieces


def build_corpus(limit: int | None = None, modules: Sequence[str] = MODULES) -> list[str]:
    """The corpus as a list of chunks: deduplicated documents, long ones cut at blank lines.

    Parameters
    ----------
    limit : int, optional
        Stop once the chunks hold at least this many characters (modules after that point are
        not even imported). ``None`` takes everything.
    modules : sequence of str
        The standard-library modules whose docstrings follow the reference topics.

    Returns
    -------
    list of str
        Chunks of at most about :data:`CHUNK_CHARS` characters each, in a deterministic order.
    """
    seen: set[str] = set()
    chunks: list[str] = []
    total = 0
    for document in iter_documents(modules):
        document = document.strip()
        if len(document) < MIN_DOC_CHARS or document in seen:
            continue
        seen.add(document)
        for chunk in _chunks(document):
            chunks.append(chunk)
            total += len(chunk)
        if limit is not None and total >= limit:
            break
    return chunks


def split_corpus(chunks: Sequence[str], every: int = VAL_EVERY) -> tuple[list[str], list[str]]:
    """Split chunks into training and validation: every ``every``-th chunk is validation.

    Parameters
    ----------
    chunks : sequence of str
        The corpus from :func:`build_corpus`.
    every : int
        One chunk in ``every`` is held out (20 -> 5 %).

    Returns
    -------
    (list of str, list of str)
        The training chunks and the validation chunks, each in corpus order.

    Examples
    --------
    >>> split_corpus([str(i) for i in range(6)], every=3)
    (['0', '1', '3', '4'], ['2', '5'])
    """
    train_chunks = [c for i, c in enumerate(chunks) if i % every != every - 1]
    val_chunks = [c for i, c in enumerate(chunks) if i % every == every - 1]
    return train_chunks, val_chunks


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int = 4096, context: int = 256):
    """Train a byte-level BPE tokenizer and wrap it for transformers.

    Parameters
    ----------
    texts : sequence of str
        Training text.
    vocab_size : int
        Target vocabulary size, the special token included.
    context : int
        Recorded as the tokenizer's ``model_max_length``.

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        With ``<|endoftext|>`` as bos, eos, unk and pad token, and no chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=context,
    )


# --------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """What a training run made and measured.

    Attributes
    ----------
    out_dir : str
        Where the model, tokenizer and model card were written.
    parameters : int
        Number of distinct parameters (tied embeddings counted once).
    weights_bytes : int
        Size of ``model.safetensors``.
    val_loss, val_perplexity : float
        Mean next-token cross-entropy (nats) on the held-out chunks, and its exponential.
    train_loss : float
        Mean training loss over the last steps.
    steps, threads, seed : int
        The run's settings.
    train_seconds : float
        Wall time of the optimisation loop.
    total_seconds : float
        Wall time of the whole run (corpus, tokenizer, training, evaluation, saving).
    greedy, sampled : str
        Continuations of :data:`PROMPT`, greedy and sampled (seeded).
    load_average : float
        The machine's 15-minute load average when training ended (0 where unknown): runs on a
        shared machine take longer.
    """

    out_dir: str
    parameters: int
    weights_bytes: int
    val_loss: float
    val_perplexity: float
    train_loss: float
    steps: int
    threads: int
    seed: int
    train_seconds: float
    total_seconds: float
    greedy: str
    sampled: str
    load_average: float = 0.0
    corpus: dict[str, int] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def _encode(tokenizer, chunks: Sequence[str]) -> list[int]:
    """Token ids of ``chunks``, each followed by the end-of-text token."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for encoding in tokenizer(list(chunks), add_special_tokens=False)["input_ids"]:
        ids.extend(encoding)
        ids.append(eos)
    return ids


def _evaluate(model, data, context: int, batch_size: int) -> float:
    """Mean next-token loss over ``data`` cut into consecutive windows of ``context``."""
    import torch

    n = max(1, (len(data) - 1) // context)
    span = min(context, len(data) - 1)
    starts = [i * span for i in range(n)]
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for b in range(0, n, batch_size):
            batch = starts[b:b + batch_size]
            x = torch.stack([data[s:s + span] for s in batch])
            y = torch.stack([data[s + 1:s + 1 + span] for s in batch])
            logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum"
            )
            total += float(loss)
            count += y.numel()
    model.train()
    return total / count


def _continue(model, tokenizer, seed: int | None, max_new_tokens: int = 40) -> str:
    """Continue :data:`PROMPT`: greedily when ``seed`` is None, otherwise sampled."""
    import torch

    inputs = tokenizer(PROMPT, return_tensors="pt")
    room = model.config.n_positions - inputs["input_ids"].shape[1]
    options: dict[str, object] = {"max_new_tokens": min(max_new_tokens, room), "do_sample": False}
    if seed is not None:
        torch.manual_seed(seed)
        options.update(do_sample=True, temperature=0.8, top_k=40)
    model.eval()
    with torch.no_grad():
        out = model.generate(**inputs, **options)
    return PROMPT + tokenizer.decode(out[0, inputs["input_ids"].shape[1]:],
                                     skip_special_tokens=True)


def train(
    out_dir: str | os.PathLike[str] = DEFAULT_OUT,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    threads: int = 2,
    n_layer: int = 4,
    n_embd: int = 176,
    n_head: int = 4,
    context: int = 256,
    batch_size: int = 16,
    lr: float = 2e-3,
    vocab_size: int = 4096,
    corpus_limit: int | None = None,
    dropout: float = 0.1,
    eval_every: int = 0,
    write_card: bool = True,
    verbose: bool = False,
    tokenizer_from: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Build the corpus and tokenizer, train a GPT-2 from scratch and save it in ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Directory for ``config.json``, ``generation_config.json``, ``model.safetensors``, the
        tokenizer files and ``README.md``; created if needed.
    steps : int
        Optimiser steps.
    seed : int
        Seeds initialisation, batch sampling and dropout. Same seed and threads, same weights.
    threads : int
        ``torch.set_num_threads`` for the run (restored afterwards).
    n_layer, n_embd, n_head, context : int
        GPT-2 shape: blocks, width, attention heads and context length.
    batch_size : int
        Sequences of ``context`` tokens per step.
    lr : float
        Peak learning rate of AdamW (linear warmup, cosine decay to a tenth).
    vocab_size : int
        BPE vocabulary size.
    corpus_limit : int, optional
        Use only the first ``corpus_limit`` characters (or so) of the corpus: for tests.
    dropout : float
        Dropout on embeddings, attention and residuals during training.
    eval_every : int
        Print the validation loss every this many steps (0: only at the end).
    write_card : bool
        Write the model card ``README.md``.
    verbose : bool
        Print progress.
    tokenizer_from : path, optional
        Read the tokenizer from this model directory instead of training one (``--small``
        reads the shipped demo's, so that its models compare with the demo token by token).

    Returns
    -------
    TrainResult
        Sizes, losses, timings and samples of the run.
    """
    started = time.perf_counter()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The corpus first: torch patches a few standard-library functions when imported.
    chunks = build_corpus(corpus_limit)
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    def say(message: str) -> None:
        if verbose:
            print(message, flush=True)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    previous_verbosity = hf_logging.get_verbosity()
    previous_progress = hf_logging.is_progress_bar_enabled()
    torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        train_chunks, val_chunks = split_corpus(chunks)
        if not val_chunks:  # a tiny test corpus: hold out its last chunk
            train_chunks, val_chunks = chunks[:-1], chunks[-1:]
        say(f"corpus: {len(chunks)} chunks, {sum(map(len, chunks)):,} characters "
            f"({len(val_chunks)} chunks held out)")

        if tokenizer_from is None:
            tokenizer = train_tokenizer(train_chunks, vocab_size=vocab_size, context=context)
        else:
            from transformers import PreTrainedTokenizerFast

            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_from))
        train_ids = torch.tensor(_encode(tokenizer, train_chunks), dtype=torch.long)
        val_ids = torch.tensor(_encode(tokenizer, val_chunks), dtype=torch.long)
        say(f"tokenizer: {len(tokenizer)} tokens; {len(train_ids):,} training and "
            f"{len(val_ids):,} validation tokens")
        if len(train_ids) <= context + 1:
            raise ValueError("The training corpus is shorter than one context window.")

        eos = tokenizer.eos_token_id
        torch.manual_seed(seed)
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=context,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            bos_token_id=eos,
            eos_token_id=eos,
            pad_token_id=eos,
            tie_word_embeddings=True,
        )
        model = GPT2LMHeadModel(config)
        model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos,
                                                   pad_token_id=eos)
        parameters = sum(p.numel() for p in model.parameters())
        say(f"model: GPT-2, {n_layer} layers x {n_embd} wide, {n_head} heads, context "
            f"{context}: {parameters:,} parameters")

        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr, betas=(0.9, 0.95), eps=1e-8,
        )
        warmup = max(1, min(100, steps // 10))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, steps - warmup)
            return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        generator = torch.Generator().manual_seed(seed)
        offsets = torch.arange(context + 1)
        recent: list[float] = []
        model.train()
        loop_started = time.perf_counter()
        for step in range(steps):
            starts = torch.randint(0, len(train_ids) - context - 1, (batch_size, 1),
                                   generator=generator)
            window = train_ids[starts + offsets]
            loss = _lm_loss(model, window)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            recent = (recent + [loss.item()])[-50:]
            if verbose and (step + 1) % 50 == 0:
                elapsed = time.perf_counter() - loop_started
                say(f"step {step + 1}/{steps}  loss {sum(recent) / len(recent):.3f}  "
                    f"lr {scheduler.get_last_lr()[0]:.2e}  {elapsed:.0f}s")
            if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
                say(f"  validation loss {_evaluate(model, val_ids, context, batch_size):.3f}")
        train_seconds = time.perf_counter() - loop_started
        load_average = os.getloadavg()[2] if hasattr(os, "getloadavg") else 0.0

        val_loss = _evaluate(model, val_ids, context, batch_size)
        model.eval()
        model.save_pretrained(out, safe_serialization=True)
        save_tokenizer(tokenizer, out)
        greedy = _continue(model, tokenizer, seed=None)
        sampled = _continue(model, tokenizer, seed=seed)
        weights = out / "model.safetensors"
        umask = os.umask(0)
        os.umask(umask)
        weights.chmod(0o666 & ~umask)  # safetensors writes it private (0600)
        result = TrainResult(
            out_dir=str(out),
            parameters=parameters,
            weights_bytes=weights.stat().st_size,
            val_loss=val_loss,
            val_perplexity=math.exp(val_loss),
            train_loss=sum(recent) / max(1, len(recent)),
            steps=steps,
            threads=threads,
            seed=seed,
            train_seconds=train_seconds,
            total_seconds=time.perf_counter() - started,
            greedy=greedy,
            sampled=sampled,
            load_average=load_average,
            corpus={
                "chunks": len(chunks),
                "characters": sum(map(len, chunks)),
                "train_tokens": len(train_ids),
                "val_tokens": len(val_ids),
                "vocab_size": len(tokenizer),
            },
            config={
                "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "context": context,
                "batch_size": batch_size, "lr": lr, "dropout": dropout, "vocab_size": vocab_size,
                "corpus_limit": corpus_limit,
                "tokenizer_from": None if tokenizer_from is None else str(tokenizer_from),
            },
        )
        if write_card:
            (out / "README.md").write_text(_model_card(result), encoding="utf-8")
        return result
    finally:
        torch.set_num_threads(previous_threads)
        hf_logging.set_verbosity(previous_verbosity)
        if previous_progress:
            hf_logging.enable_progress_bar()


def save_tokenizer(tokenizer, out: Path) -> None:
    """Save ``tokenizer`` so that transformers 4.x and 5.x both load it as a fast tokenizer.

    transformers 5 records its own ``TokenizersBackend`` class, which 4.x does not know; the
    generic ``PreTrainedTokenizerFast`` loads ``tokenizer.json`` unchanged in both.
    """
    tokenizer.save_pretrained(out)
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _lm_loss(model, window):
    """Next-token cross-entropy of ``window`` (batch, context + 1)."""
    import torch

    logits = model(input_ids=window[:, :-1]).logits
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), window[:, 1:].reshape(-1)
    )


# --------------------------------------------------------------------------- model card


def _command(result: TrainResult) -> str:
    """The command line (or, for a non-default shape, the Python call) that reproduces it."""
    defaults = {name: p.default for name, p in inspect.signature(train).parameters.items()}
    changed = {k: v for k, v in result.config.items() if defaults.get(k) != v}
    if not changed:
        return (f"python -m llm_magic.demo.train --steps {result.steps} "
                f"--threads {result.threads} --seed {result.seed}")
    options = ", ".join(f"{k}={v!r}" for k, v in changed.items())
    return (f"python -c 'from llm_magic.demo.train import train; train(\"out\", "
            f"steps={result.steps}, threads={result.threads}, seed={result.seed}, {options})'")


def _model_card(result: TrainResult) -> str:
    """Markdown model card for the run ``result``."""
    import tokenizers
    import torch
    import transformers

    c = result.config
    corpus = result.corpus
    minutes = result.train_seconds / 60
    return f"""# llm_magic demo model

A small GPT-2 language model trained from scratch, on a CPU, on Python's own documentation.
It is bundled with `llm_magic` so that every notebook, test and example runs offline:
`lm.load("demo")`. It writes recognisable, documentation-flavoured English and is useful only
for demonstrating the tooling; it knows nothing reliable.

## Model

- Architecture: `GPT2LMHeadModel`, {c['n_layer']} layers, width {c['n_embd']},
  {c['n_head']} attention heads, context {c['context']} tokens, tied input/output embeddings.
- Parameters: {result.parameters:,} (float32, `model.safetensors`,
  {result.weights_bytes / 1e6:.2f} MB).
- Tokenizer: byte-level BPE trained with `tokenizers` on the training split,
  {corpus.get('vocab_size', 0):,} tokens; `<|endoftext|>` is the bos, eos, unk and pad token.
  No chat template.

## Data

Only text present in every Python installation (Python {platform.python_version()} here):

- the language-reference topics of `pydoc_data.topics`;
- the docstrings (`inspect.getdoc`) of a fixed, sorted list of standard-library modules and
  of their public classes, functions and methods (see `MODULES` in `llm_magic/demo/train.py`).

Documents are deduplicated and cut at blank lines into chunks of at most
{CHUNK_CHARS:,} characters: {corpus.get('chunks', 0):,} chunks,
{corpus.get('characters', 0):,} characters. Every {VAL_EVERY}th chunk is held out for
validation: {corpus.get('train_tokens', 0):,} training and
{corpus.get('val_tokens', 0):,} validation tokens.

## Training

AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), peak learning rate {c['lr']:g}, linear
warmup then cosine decay to a tenth, gradient clipping at 1.0, dropout {c['dropout']:g},
{result.steps:,} steps of {c['batch_size']} random windows of {c['context']} tokens
({result.steps * c['batch_size'] * c['context']:,} tokens), seed {result.seed},
{result.threads} CPU thread(s). Optimisation took {minutes:.1f} minutes
(the whole run {result.total_seconds / 60:.1f} minutes; 15-minute load average
{result.load_average:.1f} on {os.cpu_count()} CPUs at the end) with torch {torch.__version__},
transformers {transformers.__version__}, tokenizers {tokenizers.__version__}.

Final training loss {result.train_loss:.3f}; **validation loss {result.val_loss:.3f} nats per
token (perplexity {result.val_perplexity:.1f})**.

## Samples

Prompt `{PROMPT}`, 40 new tokens.

Greedy:

```text
{result.greedy}
```

Sampled (temperature 0.8, top-k 40, `torch.manual_seed({result.seed})`):

```text
{result.sampled}
```

## Reproduce

```bash
{_command(result)}
```

The same seed and thread count give the same weights on the same versions of Python, torch
and tokenizers and the same kind of CPU (the corpus is whatever docstrings the running Python
has; matrix kernels differ between instruction sets). This run: {platform.machine()},
{platform.system()}.

## Licence

The training text is Python's own documentation and docstrings, Copyright © 2001 Python
Software Foundation; All Rights Reserved, distributed under the PSF License Agreement for
Python (PSF-2.0, https://docs.python.org/3/license.html). These weights are derived from that
text and are distributed with it in mind; the code that made them is part of `llm_magic`.
"""


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: train and print a summary.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m llm_magic.demo.train",
        description="Train the llm_magic demo model on Python's own documentation.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output directory (default: {DEFAULT_OUT})")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"optimiser steps (default: {DEFAULT_STEPS}; {SMALL['steps']} with "
                             "--small)")
    parser.add_argument("--small", action="store_true",
                        help=f"a smaller, shorter-trained model to compare with the demo "
                             f"({SMALL['n_layer']} layers x {SMALL['n_embd']} wide, part of the "
                             "corpus, the demo's own tokenizer): about a minute; needs "
                             "--out, the shipped demo stays as it is")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads; part of what makes a run reproducible "
                             f"(default: 2; {SMALL['threads']} with --small)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed for initialisation and batches (default: %(default)s)")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="print the validation loss every N steps (default: only at the end)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)
    shape: dict[str, Any] = {}
    if args.small:
        if args.out.resolve() == DEFAULT_OUT:
            parser.error("--small writes another model: give --out DIR (the shipped demo "
                         "stays as it is)")
        shape = {**SMALL, "tokenizer_from": DEFAULT_OUT}
    steps = args.steps if args.steps is not None else shape.pop("steps", DEFAULT_STEPS)
    threads = args.threads if args.threads is not None else shape.pop("threads", 2)
    shape.pop("steps", None)
    shape.pop("threads", None)
    result = train(args.out, steps=steps, seed=args.seed, threads=threads,
                   eval_every=args.eval_every, verbose=not args.quiet, **shape)
    summary = asdict(result)
    print(json.dumps(summary, indent=2))
    print(f"\nWrote {result.out_dir}: {result.parameters:,} parameters, "
          f"{result.weights_bytes / 1e6:.2f} MB, validation loss {result.val_loss:.3f} "
          f"(perplexity {result.val_perplexity:.1f}), {result.train_seconds / 60:.1f} min of "
          f"training.\nGreedy: {result.greedy!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
