"""lm.ablate and lm.patch on encoder–decoder models: the encoder, the decoder and the
decoder's cross-attention of tiny random T5, BART and Marian (and the bundled translator).

Every number is compared with a run the test makes itself: the model's own forward pass
(source to the encoder, start token + target to the decoder), with the test's own
plain-torch hooks on modules it finds by hand, or with weights edited by hand.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from _models import build_seq2seq, build_tokenizer

from llm_magic.analysis.patching import Ablation, Patching, ablate, patch
from llm_magic.backends import _patching, _patching_grid, _patching_seq2seq
from llm_magic.errors import InvalidOptionError, NotAvailableError, PromptTooLongError

CLEAN = [5, 17, 30, 41, 9, 12, 60]
CORRUPT = [5, 17, 31, 41, 9, 12, 60]  # source position 2 differs
TARGET = [40, 41, 42]  # the decoder reads its start token, then these
A, B = 3, 7  # the answers of the default metric, as ids
ARCHS = ("t5", "bart", "marian")
#: Every (part, over) that patching takes.
PATCHES = [("encoder", o) for o in _patching_grid.OVER] + [
    ("decoder", o) for o in _patching_grid.OVER] + [("cross", "attn"), ("cross", "heads")]


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seq2seq-patching")
    found = {arch: build_seq2seq(root / arch, arch) for arch in ARCHS}
    # A T5 with more decoder than encoder layers (2 and 3), as real T5 variants may have.
    from transformers import T5Config, T5ForConditionalGeneration

    out = root / "t5-deep"
    tok = build_tokenizer(out, 512)
    eos = tok.eos_token_id
    torch.manual_seed(1)
    T5ForConditionalGeneration(T5Config(
        d_model=32, d_ff=64, num_layers=2, num_decoder_layers=3, num_heads=4, d_kv=8,
        n_positions=64, vocab_size=len(tok), pad_token_id=eos, eos_token_id=eos,
        decoder_start_token_id=eos)).save_pretrained(out)
    return {**found, "t5-deep": out}


@pytest.fixture(scope="module")
def loaded(paths):
    """A manager holding the four models (float32, sdpa as loaded) and a causal GPT-2."""
    from llm_magic.manager import ModelManager

    m = ModelManager()
    for arch, path in paths.items():
        m.load(str(path), name=arch, dtype="float32")
    yield m
    for name in m.names():
        m.unload(name)


def model_of(manager, name):
    with manager.checkout(name) as backend:
        return backend


def start(model):
    return model.config.decoder_start_token_id


def own(model, source, decoder=None):
    """The model's own logits: ``source`` to the encoder, start + ``decoder`` to the decoder."""
    decoder = [start(model), *TARGET] if decoder is None else decoder
    ids = torch.tensor([source])
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids),
                     decoder_input_ids=torch.tensor([decoder]), use_cache=False).logits


def run_with(model, source, module, hook, pre):
    handle = (module.register_forward_pre_hook(hook, with_kwargs=True) if pre
              else module.register_forward_hook(hook))
    try:
        return own(model, source)
    finally:
        handle.remove()


def parts(model, part, layer):
    """The block, attention, its output projection and MLP, found by hand for each family."""
    if hasattr(model, "encoder") and hasattr(model.encoder, "block"):  # T5
        block = (model.encoder if part == "encoder" else model.decoder).block[layer]
        if part == "cross":
            attn = block.layer[1].EncDecAttention
        else:
            attn = block.layer[0].SelfAttention
        return block, attn, attn.o, block.layer[-1].DenseReluDense
    stack = model.model.encoder if part == "encoder" else model.model.decoder
    block = stack.layers[layer]
    attn = block.encoder_attn if part == "cross" else block.self_attn
    return block, attn, attn.out_proj, block.fc2


def first(x):
    return x[0] if isinstance(x, tuple) else x


def grab(model, source, module, pre):
    kept = {}

    def keep_pre(_m, args, kwargs):
        kept["x"] = (args[0] if args else kwargs["hidden_states"]).clone()

    def keep_post(_m, _a, out):
        kept["x"] = first(out).clone()

    run_with(model, source, module, keep_pre if pre else keep_post, pre)
    return kept["x"]


def replacing(edit, pre):
    """A plain-torch hook that hands the activation to ``edit``."""
    def hook_pre(_m, args, kwargs):
        if args:
            return (edit(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}

    def hook_post(_m, _a, out):
        return (edit(out[0]), *out[1:]) if isinstance(out, tuple) else edit(out)

    return hook_pre if pre else hook_post


def heads_of(model):
    return model.config.num_heads if hasattr(model.config, "num_heads") else \
        model.config.encoder_attention_heads


def manual_patch(model, part, over, layer, column, corrupt=CORRUPT):
    """The corrupt source's run with one site set to the clean run's value, by hand."""
    block, attn, proj, mlp = parts(model, part, layer)
    module, pre = {"resid": (block, True), "attn": (attn, False), "mlp": (mlp, False),
                   "heads": (proj, True)}[over]
    clean = grab(model, CLEAN, module, pre)
    heads = heads_of(model)

    def edit(x):
        x = x.clone()
        if over == "heads":
            d = x.shape[-1] // heads
            x[:, :, column * d:(column + 1) * d] = clean[:, :, column * d:(column + 1) * d]
        else:
            x[:, column] = clean[:, column]
        return x

    logits = run_with(model, corrupt, module, replacing(edit, pre), pre)
    return float(logits[0, -1, A] - logits[0, -1, B])


# -- exactness ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("part", _patching_seq2seq.PARTS)
def test_no_intervention_is_the_models_own_logits_bit_for_bit(loaded, arch, part):
    model = model_of(loaded, arch).model
    s = _patching_seq2seq.sites(model, part)
    mine = own(model, CORRUPT)
    batch = _patching.batch_of([start(model), *TARGET], CORRUPT, "cpu")
    with torch.inference_mode():
        with _patching.hooks(_patching_grid._patch_hooks(s, "heads", {}, [], [(0, 0)])):
            hooked = _patching.logits(model, batch)
    assert torch.equal(hooked, mine)
    a = ablate(CORRUPT, model=arch, target=TARGET, part=part, manager=loaded)
    assert a.ablated == "nothing" and a.part == part
    assert np.all(a.delta == 0) and np.all(a.kl == 0)
    base = torch.log_softmax(mine[0].float(), -1)
    assert torch.equal(torch.from_numpy(a.base_logprob[:, 0]), base.max(-1).values)
    assert len(a.tokens) == 1 + len(TARGET)  # the decoder's positions: start, then target


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("part, over", PATCHES)
def test_each_patched_cell_equals_the_tests_own_hook(loaded, arch, part, over):
    model = model_of(loaded, arch).model
    s = _patching_seq2seq.sites(model, part)
    decoder = [start(model), *TARGET]
    kwargs = dict(over=over, metric=_patching_grid.logit_difference(A, B), at=s,
                  decoder=decoder, positions="input" if part == "encoder" else "decoder")
    one = _patching_grid.patch(model, CLEAN, CORRUPT, batch_bytes=1, **kwargs)
    batched = _patching_grid.patch(model, CLEAN, CORRUPT, **kwargs)
    columns = len(CLEAN) if part == "encoder" else len(decoder)
    assert one.grid.shape == (2, s.heads if over == "heads" else columns)
    cells = [(0, 2), (1, 2), (1, 3)] if over != "heads" else [(0, 1), (1, 3)]
    for layer, column in cells:
        assert one.values[layer, column] == manual_patch(model, part, over, layer, column)
    assert one.forwards == one.grid.size and batched.forwards < one.forwards
    np.testing.assert_allclose(batched.values, one.values, rtol=0, atol=1e-5)
    # The grid's own checks, and its two ends against the test's own runs.
    assert one.clean_change == 0.0 and one.corrupt_equal
    clean, corrupt = own(model, CLEAN), own(model, CORRUPT)
    assert one.clean_value == float(clean[0, -1, A] - clean[0, -1, B])
    assert one.corrupt_value == float(corrupt[0, -1, A] - corrupt[0, -1, B])


@pytest.mark.parametrize("arch", ARCHS)
def test_the_encoder_stream_where_the_sources_differ_restores_the_clean_run(loaded, arch):
    p = patch(CLEAN, CORRUPT, model=arch, target=TARGET, answers=(A, B), manager=loaded)
    assert isinstance(p, Patching) and p.part == "encoder" and p.grid.shape == (2, len(CLEAN))
    # The encoder's first block's input at the one differing position is the whole difference.
    assert p.grid[0, 2] == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(p.grid[0, [0, 1, 3, 4, 5, 6]], 0, atol=1e-4)
    # The decoder reads the same ids in both runs: its first block's input changes nothing.
    d = patch(CLEAN, CORRUPT, model=arch, target=TARGET, answers=(A, B), part="decoder",
              manager=loaded)
    assert d.grid.shape == (2, 1 + len(TARGET)) and np.all(d.values[0] == d.corrupt_value)
    assert "exactly 0" in d.sanity and "torch.equal: True" in d.sanity
    # The cross-attention's output of every layer at the last position carries a difference.
    c = patch(CLEAN, CORRUPT, model=arch, target=TARGET, answers=(A, B), part="cross",
              over="attn", manager=loaded)
    assert np.all(c.grid[:, -1] != 0)


def _zero_head_columns(model, part, layer, head):
    """A copy of ``model`` with ``head``'s input columns of the output projection zeroed."""
    model = copy.deepcopy(model)
    _, _, proj, _ = parts(model, part, layer)
    d = proj.weight.shape[1] // heads_of(model)
    with torch.no_grad():
        proj.weight[:, head * d:(head + 1) * d] = 0
    return model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("part", _patching_seq2seq.PARTS)
def test_head_ablation_equals_the_model_with_that_head_zeroed_by_hand(loaded, arch, part):
    model = model_of(loaded, arch).model
    a = ablate(CLEAN, model=arch, target=TARGET, part=part, heads=[(1, 2)], answers=[A, B],
               manager=loaded)
    by_hand = torch.log_softmax(own(_zero_head_columns(model, part, 1, 2), CLEAN)[0].float(), -1)
    np.testing.assert_allclose(a.logprob, by_hand[:, [A, B]].numpy(), rtol=0, atol=1e-5)
    assert np.abs(a.delta).max() > 1e-6  # it did something
    assert a.ablated == {"encoder": "encoder heads 1.2", "decoder": "decoder heads 1.2",
                         "cross": "cross-attention heads 1.2"}[part]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("part", _patching_seq2seq.PARTS)
def test_mean_ablation_and_whole_blocks_equal_the_tests_own_hooks(loaded, arch, part):
    model = model_of(loaded, arch).model
    _, attn, proj, mlp = parts(model, part, 0)
    x = grab(model, CLEAN, proj, True)
    # The mean is over the positions of the ablated stack: the source's for the encoder.
    assert x.shape[1] == (len(CLEAN) if part == "encoder" else 1 + len(TARGET))
    d = x.shape[-1] // heads_of(model)
    mean = x[:, :, d:2 * d].mean(dim=1, keepdim=True)

    def head_mean(y):
        y = y.clone()
        y[:, :, d:2 * d] = mean
        return y

    want = run_with(model, CLEAN, proj, replacing(head_mean, True), True)
    a = ablate(CLEAN, model=arch, target=TARGET, part=part, heads=[(0, 1)], mode="mean",
               answers=[A, B], manager=loaded)
    np.testing.assert_allclose(a.logprob, torch.log_softmax(want[0].float(), -1)[:, [A, B]],
                               rtol=0, atol=1e-6)
    whole = [("layers", attn)] + ([] if part == "cross" else [("mlp", mlp)])
    for kind, module in whole:
        want = run_with(model, CLEAN, module, replacing(torch.zeros_like, False), False)
        a = ablate(CLEAN, model=arch, target=TARGET, part=part, answers=[A], manager=loaded,
                   **{kind: [0]})
        np.testing.assert_array_equal(a.logprob[:, 0],
                                      torch.log_softmax(want[0].float(), -1)[:, A].numpy())
        block_mean = grab(model, CLEAN, module, False).mean(dim=1, keepdim=True)
        want = run_with(model, CLEAN, module, replacing(
            lambda y, m=block_mean: m.expand_as(y).clone(), False), False)
        a = ablate(CLEAN, model=arch, target=TARGET, part=part, answers=[A], mode="mean",
                   manager=loaded, **{kind: [0]})
        np.testing.assert_array_equal(a.logprob[:, 0],
                                      torch.log_softmax(want[0].float(), -1)[:, A].numpy())


def test_no_target_is_one_position_the_first_output_tokens_prediction(loaded):
    model = model_of(loaded, "bart").model
    a = ablate(CLEAN, model="bart", mlp=[1], answers=[A], manager=loaded)
    assert a.part == "decoder" and len(a.tokens) == 1 and a.logprob.shape == (1, 1)
    handle = parts(model, "decoder", 1)[3].register_forward_hook(
        replacing(torch.zeros_like, False))
    try:
        logits = own(model, CLEAN, [start(model)])
    finally:
        handle.remove()
    assert a.logprob[0, 0] == float(torch.log_softmax(logits[0, 0].float(), -1)[A])


def test_a_text_target_is_read_without_its_end_token(manager):
    manager.load("demo-translator")
    backend = model_of(manager, "demo-translator")
    a = ablate("3 March 2021", model="demo-translator", target="2021-03-0", heads=[(0, 0)],
               manager=manager)
    ids = backend.tokenizer(text_target="2021-03-0")["input_ids"]
    assert ids[-1] in backend.eos_ids  # the tokenizer ends the output; the decoder reads less
    assert a.tokens == tuple(backend._texts()(i) for i in [start(backend.model), *ids[:-1]])
    assert a.source_tokens == tuple(backend._texts()(i) for i in
                                    backend.tokenizer("3 March 2021")["input_ids"])


def test_t5_with_more_decoder_than_encoder_layers(loaded):
    a = ablate(CLEAN, model="t5-deep", target=TARGET, layers=[2], mlp=[2], manager=loaded)
    assert np.abs(a.delta).max() > 0 and a.ablated == "decoder attention 2; decoder MLP 2"
    c = ablate(CLEAN, model="t5-deep", target=TARGET, part="cross", layers=[2], manager=loaded)
    assert c.ablated == "cross-attention 2"
    with pytest.raises(InvalidOptionError, match=r"layers 2 is out of range: the encoder has 2 "
                       r"layers \(0 to 1\)"):
        ablate(CLEAN, model="t5-deep", part="encoder", layers=[2], manager=loaded)
    with pytest.raises(InvalidOptionError, match=r"the decoder's cross-attention has 3 layers"):
        ablate(CLEAN, model="t5-deep", part="cross", heads=[(3, 0)], manager=loaded)
    enc = patch(CLEAN, CORRUPT, model="t5-deep", target=TARGET, answers=(A, B), manager=loaded)
    dec = patch(CLEAN, CORRUPT, model="t5-deep", target=TARGET, answers=(A, B), part="decoder",
                over="mlp", manager=loaded)
    assert enc.rows == ("encoder layer 0", "encoder layer 1")
    assert dec.rows == ("decoder layer 0", "decoder layer 1", "decoder layer 2")
    model = model_of(loaded, "t5-deep").model
    assert dec.values[2, 3] == pytest.approx(manual_patch(model, "decoder", "mlp", 2, 3),
                                             abs=1e-5)


def test_decoder_parts_take_sources_of_different_lengths(loaded):
    longer = [5, *CORRUPT]
    model = model_of(loaded, "t5").model
    d = patch(CLEAN, longer, model="t5", target=TARGET, answers=(A, B), part="cross",
              over="heads", manager=loaded)
    assert d.grid.shape == (2, 4) and d.columns[0] == "head 0"
    assert d.values[1, 2] == pytest.approx(manual_patch(model, "cross", "heads", 1, 2, longer),
                                           abs=1e-5)
    e = patch(CLEAN, longer, model="t5", target=TARGET, answers=(A, B), align=[(2, 3)],
              manager=loaded)
    assert e.grid.shape == (2, 1) and e.columns[0].startswith("2\u21923")


def test_a_callable_metric_reads_the_decoders_logits(loaded):
    shapes = []

    def prob_a(logits):
        shapes.append((tuple(logits.shape), logits.dtype))
        return torch.softmax(logits[-1], -1)[A]

    p = patch(CLEAN, CORRUPT, model="bart", target=TARGET, metric=prob_a, part="decoder",
              manager=loaded)
    vocab = model_of(loaded, "bart").model.config.vocab_size
    assert set(shapes) == {((1 + len(TARGET), vocab), torch.float32)}
    clean = own(model_of(loaded, "bart").model, CLEAN)
    assert p.clean_value == float(torch.softmax(clean[0, -1].float(), -1)[A])


@pytest.mark.parametrize("part", _patching_seq2seq.PARTS)
def test_a_patch_that_does_not_write_the_clean_values_is_refused(loaded, monkeypatch, part):
    real = _patching_grid.capture

    def spoiled(model, batch, reads):
        out, kept = real(model, batch, reads)
        return out, {k: v + 1e-3 for k, v in kept.items()}

    monkeypatch.setattr(_patching_grid, "capture", spoiled)
    with pytest.raises(NotAvailableError, match="failed its own check.*no grid is drawn"):
        patch(CLEAN, CORRUPT, model="t5", target=TARGET, answers=(A, B), part=part,
              over="attn", manager=loaded)


def test_a_block_without_its_mlp_is_named_in_the_refusal(loaded):
    model = copy.deepcopy(model_of(loaded, "bart").model)
    for layer in model.model.decoder.layers:
        del layer.fc2
    with pytest.raises(NotAvailableError, match=r"Cannot find the MLP \(DenseReluDense, fc2\) "
                       "in decoder block 0 of BartForConditionalGeneration"):
        _patching_seq2seq.sites(model, "decoder")
    assert len(_patching_seq2seq.sites(model, "cross").attention) == 2  # no MLP needed there

# -- what the results say -------------------------------------------------------------------


def test_results_name_their_part_and_label_columns_with_the_right_tokens(loaded):
    texts = model_of(loaded, "bart")._texts()
    decoder = [start(model_of(loaded, "bart").model), *TARGET]
    enc = patch(CLEAN, CORRUPT, model="bart", target=TARGET, answers=(A, B), manager=loaded)
    assert repr(enc).startswith("<Patching of 'bart' over resid in the encoder: 2 layers x 7 "
                                "source positions")
    assert enc.columns[2] == f"2 {texts(CORRUPT[2])!r}"
    dec = patch(CLEAN, CORRUPT, model="bart", target=TARGET, answers=(A, B), part="decoder",
                over="attn", manager=loaded)
    assert dec.columns == tuple(f"{i} {texts(t)!r}" for i, t in enumerate(decoder))
    assert dec.decoder_tokens == tuple(texts(t) for t in decoder)
    cross = patch(CLEAN, CORRUPT, model="bart", target=TARGET, answers=(A, B), part="cross",
                  over="heads", manager=loaded)
    assert "over heads in the cross-attention: 2 layers x 4 heads" in cross.summary()
    for p, rows, cols in ((enc, "encoder layers", "source positions (corrupt token)"),
                          (dec, "decoder layers", "decoder positions (the decoder token"),
                          (cross, "decoder layers (their cross-attention)",
                           "heads (each at every patched decoder position)")):
        html = p.to_html()
        assert f"rows: {rows}; columns: {cols}" in html and p.rows[0] in html
        assert p.to_png()[:4] == b"\x89PNG"
    a = ablate(CLEAN, model="bart", target=TARGET, part="encoder", heads=[(0, 1)],
               manager=loaded)
    assert isinstance(a, Ablation) and "4 decoder positions" in a.summary()
    assert "decoder positions (start token, then the target) for the source" in a.to_html()


def test_markup_in_tokens_is_escaped(loaded):
    source = "<script>alert(1)</script> <b>x</b>"
    target = "<img src=x onerror=alert(1)>"
    a = ablate(source, model="bart", target=target, heads=[(0, 0)], manager=loaded)
    p = patch(source, source.replace("x", "y"), model="bart", target=target,
              answers=(A, B), part="decoder", over="attn", manager=loaded)
    for html in (a.to_html(), p.to_html()):
        assert "<script" not in html and "<img src=x" not in html and "<b>" not in html
        assert "&lt;" in html


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("call, error, match", [
    (lambda m: ablate(CLEAN, model="gpt2", target="x", manager=m), InvalidOptionError,
     "append the output to the text"),
    (lambda m: patch(CLEAN, CORRUPT, model="gpt2", target=[1], answers=(A, B), manager=m),
     InvalidOptionError, "append the output to the text"),
    (lambda m: ablate(CLEAN, model="gpt2", part="decoder", manager=m), InvalidOptionError,
     "causal LM with one stack"),
    (lambda m: patch(CLEAN, CORRUPT, model="gpt2", part="encoder", answers=(A, B), manager=m),
     InvalidOptionError, "causal LM with one stack"),
    (lambda m: ablate(CLEAN, model="t5", part="middle", manager=m), InvalidOptionError,
     "part must be one of encoder, decoder, cross"),
    (lambda m: patch(CLEAN, CORRUPT, model="t5", part=True, manager=m), InvalidOptionError,
     "part must be one of encoder, decoder, cross"),
    (lambda m: ablate(CLEAN, model="t5", target="", manager=m), InvalidOptionError,
     "target is empty"),
    (lambda m: ablate(CLEAN, model="t5", target="   ", manager=m), InvalidOptionError,
     "target is empty"),
    (lambda m: ablate(CLEAN, model="t5", target=[], manager=m), InvalidOptionError,
     "target is an output"),
    (lambda m: ablate(CLEAN, model="t5", target=[40, True], manager=m), InvalidOptionError,
     "target is an output"),
    (lambda m: ablate(CLEAN, model="t5", target=[10**9], manager=m), InvalidOptionError,
     "not in the vocabulary"),
    (lambda m: ablate("", model="t5", manager=m), InvalidOptionError, "empty"),
    (lambda m: patch(CLEAN, "   ", model="t5", answers=(A, B), manager=m), InvalidOptionError,
     "empty"),
    (lambda m: ablate([5] * 65, model="bart", manager=m), PromptTooLongError,
     "The source is 65 tokens, but the encoder of 'bart' reads at most 64"),
    (lambda m: patch([5] * 65, [5] * 65, model="t5", answers=(A, B), manager=m),
     PromptTooLongError, "The source is 65 tokens, but the encoder of 't5' reads at most 64"),
    (lambda m: ablate(CLEAN, model="bart", target=[5] * 64, manager=m), PromptTooLongError,
     "The output is 64 tokens, but the decoder of 'bart' writes at most 63"),
    (lambda m: ablate(CLEAN, model="marian", part="cross", layers=[2], manager=m),
     InvalidOptionError, r"the decoder's cross-attention has 2 layers \(0 to 1\)"),
    (lambda m: ablate(CLEAN, model="marian", part="encoder", heads=[(0, 4)], manager=m),
     InvalidOptionError, r"each layer of the encoder has 4 heads \(0 to 3\)"),
    (lambda m: ablate(CLEAN, model="marian", heads=[(0, True)], manager=m),
     InvalidOptionError, "not True"),
    (lambda m: ablate(CLEAN, model="marian", part="encoder", mlp=[False], manager=m),
     InvalidOptionError, "not False"),
    (lambda m: ablate(CLEAN, model="bart", part="cross", mlp=[0], manager=m),
     InvalidOptionError, "the cross-attention has none"),
    (lambda m: patch(CLEAN, CORRUPT, model="bart", part="cross", over="resid",
                     answers=(A, B), manager=m),
     InvalidOptionError, "over='resid' does not apply to part='cross'"),
    (lambda m: patch(CLEAN, CORRUPT, model="bart", part="cross", over="mlp",
                     answers=(A, B), manager=m),
     InvalidOptionError, "over='mlp' does not apply to part='cross'"),
    (lambda m: patch(CLEAN, CORRUPT, model="bart", part="decoder", align=[(0, 0)],
                     answers=(A, B), manager=m),
     InvalidOptionError, "drop align="),
    (lambda m: patch(CLEAN, [5, *CORRUPT], model="bart", answers=(A, B), manager=m),
     InvalidOptionError, "clean is 7 tokens and corrupt is 8 tokens"),
    (lambda m: patch(CLEAN, CLEAN, model="bart", part="decoder", answers=(A, B), manager=m),
     InvalidOptionError, "on both the clean and the corrupt run"),
    (lambda m: patch(CLEAN, CORRUPT, model="bart", answers=(A, "the import"), manager=m),
     InvalidOptionError, "output tokens for 'bart'.*not one"),
])
def test_bad_input_is_refused_in_one_line(loaded, tiny_gpt2, call, error, match):
    if "gpt2" not in loaded.names():
        loaded.load(str(tiny_gpt2), name="gpt2")
    with pytest.raises(error, match=match) as info:
        call(loaded)
    assert "\n" not in str(info.value)


def test_a_refusal_loses_no_state(loaded):
    before = patch(CLEAN, CORRUPT, model="marian", target=TARGET, answers=(A, B),
                   part="cross", over="attn", manager=loaded)
    model = model_of(loaded, "marian").model
    hooks = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    for bad in (dict(part="cross", over="mlp"), dict(part="encoder", over="heads",
                                                      align=[(0, 99)])):
        with pytest.raises(InvalidOptionError):
            patch(CLEAN, CORRUPT, model="marian", target=TARGET, answers=(A, B),
                  manager=loaded, **bad)
    with pytest.raises(InvalidOptionError):
        ablate(CLEAN, model="marian", part="decoder", layers=[5], manager=loaded)
    assert hooks == [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    after = patch(CLEAN, CORRUPT, model="marian", target=TARGET, answers=(A, B),
                  part="cross", over="attn", manager=loaded)
    assert np.array_equal(before.values, after.values)


# -- the bundled translator -----------------------------------------------------------------


def test_the_translator_reads_the_years_last_digit_where_it_is(manager):
    """'3 March 2021' against '3 March 2022', the decoder having written '202': the whole
    difference is the encoder's input at the last digit, and the decoder's last layer reads
    it through its cross-attention at the last position."""
    manager.load("demo-translator")
    args = ("3 March 2021", "3 March 2022")
    kw = dict(model="demo-translator", target="202", answers=("1", "2"), manager=manager)
    enc = patch(*args, **kw)
    digit = enc.columns.index("6 '2'")  # the source's last digit (corrupt token)
    assert enc.grid[0, digit] == pytest.approx(1.0, abs=1e-4)
    assert np.abs(np.delete(enc.grid[0], digit)).max() < 1e-4
    assert enc.decoder_tokens == ("<s>", "2", "0", "2")  # no end token after the target
    assert enc.clean_value > 0 > enc.corrupt_value  # it writes the year it read
    cross = patch(*args, part="cross", over="attn", **kw)
    assert cross.grid[-1, -1] > 0.9 and np.abs(cross.grid[:, :-1]).max() < 1e-3


def test_a_notebook_cell_shows_the_part(manager):
    """The call in a cell of a real InteractiveShell, and its rich display."""
    from IPython.core.interactiveshell import InteractiveShell

    import llm_magic as lm

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llm_magic")
    try:
        result = ip.run_cell("import llm_magic as lm\n"
                             "p = lm.patch('3 March 2021', '3 March 2022', "
                             "model='demo-translator', target='202', answers=('1', '2'), "
                             "part='cross', over='heads')", store_history=False)
        assert result.error_in_exec is None and result.error_before_exec is None
        shown, _ = ip.display_formatter.format(ip.user_ns["p"])
        assert "in the cross-attention" in shown["text/plain"]
        assert "rows: decoder layers (their cross-attention)" in shown["text/html"]
    finally:
        lm.unload("demo-translator")
        ip.run_line_magic("unload_ext", "llm_magic")
