"""The logit lens of architectures beyond GPT-2 and Llama, every row checked by hand.

Each architecture is a tiny random model saved with a tokenizer and loaded by
the manager, as a user would. The reference never calls llm_magic's lens: the
row of block i is the logits of the model's own forward pass with only its
first i blocks (the module list cut to ``blocks[:i]``; none for the
embeddings), which is what the model would predict if block i were its last,
through the model's own final norm, projection, head, scale and soft cap. The
last row is the whole model's logits. Every row is compared, not only the last:
a grid shifted by one block (Mamba, FalconMamba and RWKV hand out their hidden
states without the embeddings) fails here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from _models import build_tokenizer

from llm_magic.analysis.lens import LensMap, logit_lens
from llm_magic.backends import _lens
from llm_magic.errors import NotAvailableError
from llm_magic.manager import ModelManager

TEXT = "The import statement binds a name to a module, and the module runs once."
PROB_TOL = 1e-5
NATS_TOL = 1e-4
BLOCKS = 3
HIDDEN = 32


@dataclass(frozen=True)
class Arch:
    """How to build one architecture, and where its blocks live (for the reference)."""

    name: str
    blocks: str  # the dotted path of the module list of blocks

    def build(self, vocab: int):
        import transformers as tf

        h, n = HIDDEN, BLOCKS
        if self.name == "mamba":
            return tf.MambaForCausalLM(tf.MambaConfig(
                vocab_size=vocab, hidden_size=h, state_size=4, num_hidden_layers=n,
                expand=2, conv_kernel=4, time_step_rank=4))
        if self.name == "falcon_mamba":
            return tf.FalconMambaForCausalLM(tf.FalconMambaConfig(
                vocab_size=vocab, hidden_size=h, state_size=4, num_hidden_layers=n,
                expand=2, conv_kernel=4, time_step_rank=4))
        if self.name == "rwkv":
            # Rescaled after every block, as RWKV halves its stream between blocks at inference.
            return tf.RwkvForCausalLM(tf.RwkvConfig(
                vocab_size=vocab, hidden_size=h, num_hidden_layers=n, attention_hidden_size=h,
                intermediate_size=2 * h, context_length=128, rescale_every=1))
        if self.name == "lfm2":
            return tf.Lfm2ForCausalLM(tf.Lfm2Config(
                vocab_size=vocab, hidden_size=h, intermediate_size=2 * h, num_hidden_layers=n,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                layer_types=["conv", "full_attention", "conv"]))
        if self.name == "recurrent_gemma":
            return tf.RecurrentGemmaForCausalLM(tf.RecurrentGemmaConfig(
                vocab_size=vocab, hidden_size=h, intermediate_size=2 * h, num_hidden_layers=n,
                num_attention_heads=4, num_key_value_heads=1, lru_width=h,
                attention_window_size=16, block_types=["recurrent", "attention"],
                logits_soft_cap=3.0))
        if self.name == "falcon_h1":
            return tf.FalconH1ForCausalLM(tf.FalconH1Config(
                vocab_size=vocab, hidden_size=h, intermediate_size=2 * h, num_hidden_layers=n,
                num_attention_heads=4, num_key_value_heads=2, mamba_d_ssm=h, mamba_n_heads=4,
                mamba_d_head=8, mamba_d_state=4, mamba_n_groups=1, mamba_d_conv=4,
                mamba_chunk_size=16, max_position_embeddings=128, lm_head_multiplier=0.25))
        if self.name == "opt":
            # OPT-350m's shape: post-LN blocks, no final norm, project_in/project_out.
            return tf.OPTForCausalLM(tf.OPTConfig(
                vocab_size=vocab, hidden_size=h, word_embed_proj_dim=16, ffn_dim=2 * h,
                num_hidden_layers=n, num_attention_heads=4, max_position_embeddings=128,
                do_layer_norm_before=False))
        if self.name == "gemma3":
            return tf.Gemma3ForConditionalGeneration(tf.Gemma3Config(
                text_config={"vocab_size": vocab, "hidden_size": h, "intermediate_size": 2 * h,
                             "num_hidden_layers": n, "num_attention_heads": 4,
                             "num_key_value_heads": 2, "head_dim": 8,
                             "max_position_embeddings": 128, "sliding_window": 16},
                # As many vision blocks as text blocks: the lens must pick the text ones.
                vision_config={"hidden_size": 16, "intermediate_size": 32,
                               "num_hidden_layers": n, "num_attention_heads": 2,
                               "image_size": 28, "patch_size": 14},
                mm_tokens_per_image=4))
        raise AssertionError(self.name)


ARCHS = {a.name: a for a in (
    Arch("mamba", "backbone.layers"),
    Arch("falcon_mamba", "backbone.layers"),
    Arch("rwkv", "rwkv.blocks"),
    Arch("lfm2", "model.layers"),
    Arch("recurrent_gemma", "model.layers"),
    Arch("falcon_h1", "model.layers"),
    Arch("opt", "model.decoder.layers"),
    Arch("gemma3", "model.language_model.layers"),
)}


def build(out: Path, arch: Arch) -> Path:
    tok = build_tokenizer(out)
    torch.manual_seed(0)
    model = arch.build(len(tok))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Build each architecture once, on first use: name -> directory."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build(tmp_path_factory.mktemp(f"tiny-{name}"), ARCHS[name])
        return built[name]

    return get


@pytest.fixture(scope="module")
def models(tiny):
    """One manager for the module; each architecture is loaded on first use."""
    m = ModelManager()

    def get(name: str) -> ModelManager:
        if not m.is_loaded(name):
            m.load(str(tiny(name)), name=name)
        return m

    yield get
    for name in m.names():
        m.unload(name)


# -- the reference: the model cut after block i ----------------------------------------


@contextlib.contextmanager
def cut(model, path: str, keep: int):
    """The model with only the first ``keep`` of its blocks, inside the ``with`` block."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    blocks = getattr(parent, attr)
    setattr(parent, attr, torch.nn.ModuleList(list(blocks)[:keep]))
    try:
        yield
    finally:
        setattr(parent, attr, blocks)


@torch.no_grad()
def reference(model, arch: Arch, ids: list[int]) -> torch.Tensor:
    """float64 [rows, T, vocab]: row i is the logits of the model cut after block i."""
    # The whole model first: RWKV rescales its blocks' weights on its first pass in eval mode.
    whole = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].double()
    rows = []
    for keep in range(BLOCKS + 1):
        with cut(model, arch.blocks, keep):
            out = model(input_ids=torch.tensor([ids]), use_cache=False)
        rows.append(out.logits[0].double())
    assert torch.equal(rows[-1], whole)  # cutting nothing is the model itself
    return torch.stack(rows)


def check_every_row(lens: LensMap, logits: torch.Tensor) -> None:
    """Every cell of every row against the reference logits."""
    rows, t, k = lens.shape
    assert logits.shape[:2] == (rows, t)
    logp = torch.log_softmax(logits, -1)
    p = logp.exp()
    final = logits[-1].argmax(-1)
    assert lens.predicted == tuple(final.tolist())
    index = final.expand(rows, -1).unsqueeze(-1)
    np.testing.assert_allclose(lens.final_prob, p.gather(-1, index)[..., 0].numpy(),
                               atol=PROB_TOL)
    np.testing.assert_allclose(lens.entropy, (-(p * logp).sum(-1)).numpy(), atol=NATS_TOL)
    np.testing.assert_allclose(lens.kl, (p[-1] * (logp[-1] - logp)).sum(-1).numpy(),
                               atol=NATS_TOL)
    np.testing.assert_allclose(lens.probs, torch.topk(p, k, dim=-1).values.numpy(),
                               atol=PROB_TOL)
    for r in range(rows):
        # Each id's own reference probability (ties may order the ids either way).
        got = p[r].gather(-1, torch.as_tensor(lens.ids[r], dtype=torch.int64)).numpy()
        np.testing.assert_allclose(lens.probs[r], got, atol=PROB_TOL, err_msg=f"row {r}")


# -- every row, every architecture ---------------------------------------------------------


@pytest.mark.parametrize("name", list(ARCHS))
def test_every_row_is_the_model_cut_after_that_block(models, name):
    m = models(name)
    lens = logit_lens(TEXT, model=name, top=5, manager=m)
    backend = m.backend(name)
    ids = list(backend.tokenizer(TEXT)["input_ids"])
    assert lens.input_ids == tuple(ids)
    assert lens.layers == ("embeddings", *(f"block {i}" for i in range(1, BLOCKS + 1)))
    check_every_row(lens, reference(backend.model, ARCHS[name], ids))
    assert lens.check <= 1e-4


# -- the self-check proves each piece -------------------------------------------------------


def _no_scale_or_cap(monkeypatch) -> None:
    """A lens that forgets the model's logit multiplier and soft cap."""
    init = _lens._Head.__init__

    def forgetful(self, model):
        init(self, model)
        self.scales, self.cap = [], None

    monkeypatch.setattr(_lens._Head, "__init__", forgetful)


def _no_norm(monkeypatch) -> None:
    """A lens that forgets the final norm (and the projection after it)."""
    monkeypatch.setattr(_lens, "final_norm", lambda model: torch.nn.Identity())


@pytest.mark.parametrize(("name", "spoil", "message"), [
    ("mamba", _no_norm, "does not reproduce the model's own logits"),
    ("falcon_mamba", _no_norm, "does not reproduce the model's own logits"),
    ("rwkv", _no_norm, "does not reproduce the model's own logits"),
    ("lfm2", _no_norm, "does not reproduce the model's own logits"),
    ("gemma3", _no_norm, "does not reproduce the model's own logits"),
    ("recurrent_gemma", _no_norm, "does not reproduce the model's own logits"),
    ("recurrent_gemma", _no_scale_or_cap, "does not reproduce the model's own logits"),
    ("falcon_h1", _no_scale_or_cap, "does not reproduce the model's own logits"),
    ("opt", _no_norm, "does not lead to its head"),
])
def test_a_lens_without_the_piece_the_model_applies_is_refused(models, monkeypatch, name, spoil,
                                                              message):
    """Each piece the lens now applies is one the self-check proves: leave it out, and the
    lens no longer reproduces the model's logits, so it is refused in one line."""
    m = models(name)
    spoil(monkeypatch)
    with pytest.raises(NotAvailableError, match=message) as info:
        logit_lens(TEXT, model=name, manager=m)
    assert "\n" not in str(info.value)


def test_a_projection_the_lens_does_not_know_is_named_in_the_refusal(models, monkeypatch):
    m = models("opt")
    monkeypatch.setattr(_lens, "_PROJECTIONS", ())
    with pytest.raises(NotAvailableError, match=r"^Cannot find the final norm of OPTForCausalLM "
                                                r"\(nor a projection to its head, such as "
                                                r"OPT's project_out\)"):
        logit_lens(TEXT, model="opt", manager=m)


# -- every row is the stream its block read, or the lens is refused -------------------------


@pytest.fixture
def llama(tiny_llama, manager):
    manager.load(str(tiny_llama), name="llama")
    return manager


def test_blocks_that_run_twice_are_refused(llama):
    """A model that runs one block twice (a looped model, here Llama's first block in both
    places) has rows no label fits: refused, never drawn."""
    model = llama.backend("llama").model
    layers = model.model.layers
    model.model.layers = torch.nn.ModuleList([layers[0], layers[0]])
    try:
        with pytest.raises(NotAvailableError, match=r"The 2 blocks of LlamaForCausalLM did not "
                                                    r"run once each, in order"):
            logit_lens(TEXT, model="llama", manager=llama)
    finally:
        model.model.layers = layers
    assert logit_lens(TEXT, model="llama", manager=llama).shape[0] == 3


def test_a_stream_changed_in_place_is_refused(llama):
    """A block that changes the stream it was handed, after the lens has read it, would make
    that row something no block read: refused."""
    block = llama.backend("llama").model.model.layers[1]
    hook = block.register_forward_hook(lambda _m, args, _out: args[0].mul_(2))
    try:
        with pytest.raises(NotAvailableError, match="stream entering block 2 of "
                                                    "LlamaForCausalLM was changed in place"):
            logit_lens(TEXT, model="llama", manager=llama)
    finally:
        hook.remove()
