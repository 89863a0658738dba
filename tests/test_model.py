import os
import subprocess
import sys

import pytest
import torch

from msenc_lib.model import MultiscaleEncoderConfig, MultiscaleEncoderForMaskedLM, MultiscaleEncoderModel
from msenc_lib.model.masking import MaskingSpec, mask_tokens

VOCAB, PAD, MASK = 24, 0, 1
DIGITS = list(range(10, 20))


def tiny_config(**kw) -> MultiscaleEncoderConfig:
    base = dict(vocab_size=VOCAB, pad_token_id=PAD, mask_token_id=MASK, digit_token_ids=DIGITS)
    return MultiscaleEncoderConfig.from_preset("tiny", **{**base, **kw})


def random_ids(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, shape, generator=g)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MultiscaleEncoderModel(tiny_config()).eval()


def test_presets_and_context():
    seed = MultiscaleEncoderConfig.from_preset("seed", vocab_size=VOCAB)
    assert seed.max_context == 65536 and seed.seq_lens == [2048, 8, 4]
    assert seed.hidden_sizes == [256, 64, 64] and seed.num_layers == [8, 4, 2]
    assert MultiscaleEncoderConfig().seq_lens == [2048, 8, 4]  # defaults = the seed's config
    assert tiny_config().max_context == 1024
    with pytest.raises(ValueError, match="unknown preset"):
        MultiscaleEncoderConfig.from_preset("huge")


@pytest.mark.parametrize("bad, match", [
    (dict(num_layers=[1, 1]), "num_layers"),
    (dict(head_dim=7), "head_dim"),
    (dict(pad_token_id=99), "pad_token_id"),
    (dict(digit_token_ids=[1, 2]), "digit_token_ids"),
    (dict(ntl_type="l1"), "ntl_type"),
])
def test_config_errors_name_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**bad)


def test_output_shapes_for_any_length_and_stage_count(model):
    for length in (1, 5, 16, 300, 1024):
        out = model(random_ids(2, length)).last_hidden_state
        assert out.shape == (2, length, 32)
        assert torch.isfinite(out).all()
    two_stage = MultiscaleEncoderModel(tiny_config(seq_lens=[8, 4], hidden_sizes=[16, 8], num_layers=[1, 1],
                                                   num_attention_heads=[2, 1])).eval()
    assert two_stage(random_ids(3, 20)).last_hidden_state.shape == (3, 20, 8)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model(random_ids(1, 1025))


def test_stage_shapes_follow_the_hierarchy(model):
    seen = []
    hooks = [s.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape))) for s in model.stages]
    model(random_ids(2, 1024))
    for h in hooks:
        h.remove()
    # 2 sequences x 64 patches of 16 tokens; 128 x 4 patches of 4 tokens; 512 x 4 tokens
    assert seen == [(2, 64, 64), (128, 4, 32), (512, 4, 32)]


def test_padding_never_changes_real_positions(model):
    ids = random_ids(1, 203, seed=1)
    alone = model(ids).last_hidden_state
    more_pad = torch.cat([ids, torch.full((1, 600), PAD)], 1)
    mask = torch.cat([torch.ones(1, 203, dtype=torch.bool), torch.zeros(1, 600, dtype=torch.bool)], 1)
    padded = model(more_pad, attention_mask=mask).last_hidden_state[:, :203]
    assert torch.allclose(alone, padded, atol=1e-5)
    # the padded tokens' ids do not matter either
    junk = more_pad.clone()
    junk[:, 203:] = random_ids(1, 600, seed=2)
    assert torch.allclose(alone, model(junk, attention_mask=mask).last_hidden_state[:, :203], atol=1e-5)
    # batch company: next to a longer sequence
    other = random_ids(1, 803, seed=3)
    batch = torch.cat([more_pad, other])
    bmask = torch.cat([mask, torch.ones(1, 803, dtype=torch.bool)])
    together = model(batch, attention_mask=bmask).last_hidden_state
    assert torch.allclose(alone[0], together[0, :203], atol=1e-5)
    assert torch.allclose(model(other).last_hidden_state[0], together[1], atol=1e-5)


def test_real_tokens_do_change_outputs(model):
    ids = random_ids(1, 100, seed=4)
    changed = ids.clone()
    changed[0, 90] = (changed[0, 90] + 1 - 2) % (VOCAB - 2) + 2
    a, b = model(ids).last_hidden_state, model(changed).last_hidden_state
    assert (a[0, :80] - b[0, :80]).abs().max() > 1e-4  # bidirectional: earlier positions see the change


def test_save_and_auto_load_give_identical_outputs(tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    torch.manual_seed(0)
    mlm = MultiscaleEncoderForMaskedLM(tiny_config()).eval()
    mlm.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "msenc"
    ids = random_ids(2, 77)
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded(ids).logits, mlm(ids).logits)
    encoder = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(encoder, MultiscaleEncoderModel)
    assert torch.equal(encoder(ids).last_hidden_state, mlm.encoder(ids).last_hidden_state)


def test_importing_the_model_package_registers_the_auto_classes():
    """In a fresh interpreter: ``import msenc_lib`` alone changes nothing (no transformers, no torch, no
    environment); ``import msenc_lib.model`` registers ``model_type: msenc`` with the Auto* factories."""
    code = ("import os, sys, msenc_lib; assert 'transformers' not in sys.modules and 'torch' not in sys.modules; "
            "assert 'OMP_WAIT_POLICY' not in os.environ; import msenc_lib.model; "
            "from transformers import AutoConfig; print(AutoConfig.for_model('msenc').__class__.__name__)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "MultiscaleEncoderConfig"


def test_masked_lm_loss_parts_and_positions():
    torch.manual_seed(0)
    mlm = MultiscaleEncoderForMaskedLM(tiny_config())
    ids = random_ids(2, 120)
    labels = torch.full_like(ids, -100)
    labels[:, ::7] = ids[:, ::7]
    out = mlm(ids, labels=labels)
    assert out.logits is None and out.num_masked == int((labels != -100).sum())
    assert torch.isclose(out.loss, 0.7 * out.ce_loss + 0.3 * out.ntl_loss)
    full = mlm(ids, labels=labels, return_logits=True)
    assert full.logits.shape == (2, 120, VOCAB) and torch.isclose(full.loss, out.loss)
    out.loss.backward()
    assert mlm.encoder.embed_tokens.weight.grad is not None


def test_masked_lm_chunked_head_matches_full_logits_reference():
    """A tiny chunk (3 rows of the 24-token vocabulary per chunk) gives the loss and every parameter's gradient
    of plain cross-entropy + number-token loss on the full logits."""
    import torch.nn.functional as F

    from msenc_lib.model.losses import number_token_loss

    torch.manual_seed(0)
    chunked = MultiscaleEncoderForMaskedLM(tiny_config())
    chunked.loss_chunk_elements = 3 * VOCAB
    reference = MultiscaleEncoderForMaskedLM(tiny_config())
    reference.load_state_dict(chunked.state_dict())
    ids = random_ids(2, 200)
    labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.15, ids, -100)
    out = chunked(ids, labels=labels)
    out.loss.backward()

    logits = reference(ids, return_logits=True).logits
    picked = labels != -100
    ce = F.cross_entropy(logits[picked].float(), labels[picked])
    ntl = number_token_loss(logits[picked], labels[picked], DIGITS)
    (0.7 * ce + 0.3 * ntl).backward()
    assert torch.allclose(out.ce_loss, ce, atol=1e-5) and torch.allclose(out.ntl_loss, ntl, atol=1e-5)
    assert out.ntl_loss > 0
    for (name, pa), pb in zip(chunked.named_parameters(), reference.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5), name


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = MultiscaleEncoderForMaskedLM(tiny_config())
    b = MultiscaleEncoderForMaskedLM(tiny_config())
    b.load_state_dict(a.state_dict())
    (getattr(b, "activation_checkpointing_enable", None) or b.gradient_checkpointing_enable)()  # v5 name first
    a.train(), b.train()
    ids = random_ids(2, 256)
    labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.2, ids, -100)
    a(ids, labels=labels).loss.backward()
    b(ids, labels=labels).loss.backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), name


def _structured_batch(n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """Digit streams with structure: counters that step by a per-sequence increment, separated by 20."""
    rows = []
    for _ in range(n):
        start, step = torch.randint(0, 500, (1,), generator=gen).item(), torch.randint(1, 4, (1,), generator=gen).item()
        toks = []
        value = start
        while len(toks) < length:
            toks += [DIGITS[int(c)] for c in f"{value:04d}"] + [20]
            value += step
        rows.append(toks[:length])
    return torch.tensor(rows)


def test_masked_lm_loss_falls_on_structured_numbers():
    """Acceptance check of issue 5: the masked-LM loss falls by >= 30% within 200 CPU steps."""
    torch.manual_seed(0)
    cfg = tiny_config()
    model = MultiscaleEncoderForMaskedLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    spec = MaskingSpec.create(MASK, [PAD, MASK, 20], VOCAB)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(200):
        ids = _structured_batch(4, 256, gen)
        corrupted, labels = mask_tokens(ids, spec, generator=gen)
        loss = model(corrupted, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last <= 0.7 * first, (first, last)


def _two_stage(**kw):
    return tiny_config(seq_lens=[16, 4], hidden_sizes=[16, 8], num_layers=[1, 1], num_attention_heads=[2, 1], **kw)


def _loss_and_grads(model, ids, labels):
    model.zero_grad()
    out = model(ids, labels=labels)
    out.loss.backward()
    return out.last_hidden_state.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_compiled_layers_match_eager_outputs_and_gradients():
    """torch.compile'd layers (explicit attention on the short stage, fused rotary) compute what eager layers do."""
    from msenc_lib.model.modeling import CompiledFunction

    torch.manual_seed(0)
    eager = MultiscaleEncoderForMaskedLM(_two_stage())
    compiled = MultiscaleEncoderForMaskedLM(_two_stage())
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_layers()
    layers = [m for m in compiled.modules() if m.__class__.__name__ == "Block"]
    assert layers and all(isinstance(m.forward, CompiledFunction) for m in layers)
    ids = random_ids(2, 64)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 40:] = False
    labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) < 0.3, ids, -100)
    h_eager, g_eager = _loss_and_grads(eager, ids, labels)
    h_comp, g_comp = _loss_and_grads(compiled, ids, labels)
    assert not any(m.forward.failed for m in layers)  # it did compile
    assert torch.allclose(h_eager, h_comp, atol=1e-5)
    for name, grad in g_eager.items():
        assert torch.allclose(grad, g_comp[name], atol=1e-5), name
    with torch.inference_mode():
        assert torch.allclose(eager.encoder(ids, attention_mask=mask).last_hidden_state,
                              compiled.encoder(ids, attention_mask=mask).last_hidden_state, atol=1e-5)


def test_a_failed_compilation_falls_back_to_eager_layers(caplog):
    """No usable C++ compiler: the first call logs one warning and the layers run eagerly, with the same results."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    torch.manual_seed(0)
    eager = MultiscaleEncoderModel(_two_stage()).eval()
    model = MultiscaleEncoderModel(_two_stage()).eval()
    model.load_state_dict(eager.state_dict())
    model.compile_layers()
    ids = random_ids(1, 50)
    torch._dynamo.reset()
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",), "force_disable_caches": True}), \
            caplog.at_level("WARNING", logger="msenc_lib.model.modeling"):
        out = model(ids).last_hidden_state
        again = model(ids).last_hidden_state
    torch._dynamo.reset()
    assert torch.equal(out, eager(ids).last_hidden_state) and torch.equal(again, out)
    layers = [m for m in model.modules() if m.__class__.__name__ == "Block"]
    assert all(m.forward.failed for m in layers)
    assert len([r for r in caplog.records if "torch.compile failed" in r.message]) == len(layers)


def test_a_real_error_in_a_compiled_layer_is_raised_not_swallowed():
    torch.manual_seed(0)
    model = MultiscaleEncoderModel(_two_stage()).eval()
    model.compile_layers()
    layer = model.stages[0].layers[0]
    with pytest.raises(RuntimeError):
        layer(torch.randn(1, 16, 7))  # wrong width: eager fails as well
    assert not layer.forward.failed


def test_per_stage_head_sizes_and_the_seed_wide_preset():
    wide = MultiscaleEncoderConfig.from_preset("seed_wide", vocab_size=VOCAB)
    seed = MultiscaleEncoderConfig.from_preset("seed", vocab_size=VOCAB)
    assert [wide.stage_head_dim(k) for k in range(3)] == [32, 8, 8] and wide.num_attention_heads == [8, 16, 4]
    assert MultiscaleEncoderModel(wide).num_parameters() == MultiscaleEncoderModel(seed).num_parameters()
    model = MultiscaleEncoderModel(tiny_config(num_attention_heads=[2, 4, 4], head_dim=[32, 8, 8])).eval()
    assert model.stages[0].layers[0].attn.qkv.out_features == 3 * 2 * 32
    assert model(random_ids(1, 300)).last_hidden_state.shape == (1, 300, 32)
    with pytest.raises(ValueError, match="head_dim"):
        tiny_config(head_dim=[8, 8])
    with pytest.raises(ValueError, match="head_dim"):
        tiny_config(head_dim=[8, 7, 8])
