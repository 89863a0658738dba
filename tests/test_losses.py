import pytest
import torch

from msenc_lib.model.losses import number_token_loss

V = 16
DIGITS = list(range(3, 13))  # token ids of '0'..'9'


def logits_for(dist: dict[int, float]) -> torch.Tensor:
    """Logits whose softmax over the digit tokens puts probability p on digit d (log p, -inf elsewhere)."""
    row = torch.full((V,), -1e4)
    for digit, p in dist.items():
        row[DIGITS[digit]] = torch.log(torch.tensor(p))
    return row


@pytest.mark.parametrize("kind", ["mse", "was"])
def test_zero_when_all_mass_on_the_right_digit(kind):
    logits = torch.stack([logits_for({7: 1.0}), logits_for({0: 1.0})])
    labels = torch.tensor([DIGITS[7], DIGITS[0]])
    assert number_token_loss(logits, labels, DIGITS, kind).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind, exponent", [("mse", 2), ("was", 1)])
def test_grows_with_digit_distance(kind, exponent):
    label = torch.tensor([DIGITS[2]])
    losses = [number_token_loss(logits_for({d: 1.0}).unsqueeze(0), label, DIGITS, kind).item() for d in range(2, 10)]
    assert losses == sorted(losses) and losses[0] == pytest.approx(0, abs=1e-6)
    assert losses[-1] == pytest.approx(7 ** exponent, rel=1e-4)  # all mass on 9 for label 2


def test_mse_and_was_differ_for_spread_predictions():
    # half the mass on 1, half on 5, label 3: the mean is right (MSE 0) but the mass is 2 away (WAS 2)
    logits, label = logits_for({1: 0.5, 5: 0.5}).unsqueeze(0), torch.tensor([DIGITS[3]])
    assert number_token_loss(logits, label, DIGITS, "mse").item() == pytest.approx(0.0, abs=1e-5)
    assert number_token_loss(logits, label, DIGITS, "was").item() == pytest.approx(2.0, rel=1e-4)


def test_only_digit_labels_count_and_non_digit_mass_is_renormalised():
    logits = torch.stack([logits_for({4: 1.0}), torch.randn(V)])
    logits[0, 0] = 50.0  # huge mass on a non-digit token does not matter: renormalised over digits
    labels = torch.tensor([DIGITS[4], 0])  # second label is not a digit
    assert number_token_loss(logits, labels, DIGITS, "mse").item() == pytest.approx(0.0, abs=1e-6)


def test_no_digit_label_gives_zero_with_graph():
    logits = torch.randn(3, V, requires_grad=True)
    loss = number_token_loss(logits, torch.tensor([0, 1, -100]), DIGITS)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() == 0


def test_gradient_moves_towards_the_label():
    logits = logits_for({6: 0.5, 8: 0.5}).unsqueeze(0).requires_grad_(True)
    label = torch.tensor([DIGITS[6]])
    number_token_loss(logits, label, DIGITS, "mse").backward()
    assert logits.grad[0, DIGITS[6]] < 0 < logits.grad[0, DIGITS[8]]


def test_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        number_token_loss(torch.randn(1, V), torch.tensor([DIGITS[0]]), DIGITS, "l1")


# ------------------------------------------------------------------ chunked cross-entropy through the LM head
def _reference_losses(hidden, weight, bias, targets, kind):
    logits = torch.nn.functional.linear(hidden, weight, bias)
    ce = torch.nn.functional.cross_entropy(logits.float(), targets)
    return ce, number_token_loss(logits, targets, DIGITS, kind)


@pytest.mark.parametrize("kind, with_bias, chunk_elements", [("mse", True, 4 * 97), ("was", False, 5 * 97),
                                                              ("mse", True, 1 << 22)])
def test_chunked_losses_equal_plain_cross_entropy_and_ntl(kind, with_bias, chunk_elements):
    """Values and gradients of hidden, weight and bias match the full-logits computation, whether the 61 rows
    run in chunks of 4 or 5 (a ragged last chunk) or in one."""
    from msenc_lib.model.losses import masked_lm_losses

    vocab, dim, n = 97, 12, 61
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, dim, generator=g)
    weight = torch.randn(vocab, dim, generator=g)
    bias = torch.randn(vocab, generator=g) if with_bias else None
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[::3] = torch.tensor(DIGITS)[torch.randint(0, 10, (len(targets[::3]),), generator=g)]  # many digits

    leaves = [t for t in (hidden, weight, bias) if t is not None]
    grads = []
    for compute in (lambda h, w, b: masked_lm_losses(h, w, b, targets, DIGITS, kind, chunk_elements=chunk_elements),
                    lambda h, w, b: _reference_losses(h, w, b, targets, kind)):
        params = [t.clone().requires_grad_(True) for t in leaves]
        h, w, b = params[0], params[1], (params[2] if with_bias else None)
        ce, ntl = compute(h, w, b)
        (0.7 * ce + 0.3 * ntl).backward()
        grads.append((ce.detach(), ntl.detach(), [p.grad for p in params]))
    (ce, ntl, got), (ref_ce, ref_ntl, want) = grads
    assert ntl > 0 and torch.allclose(ce, ref_ce, atol=1e-5) and torch.allclose(ntl, ref_ntl, atol=1e-5)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5)


def test_chunked_losses_without_grad_and_without_rows():
    from msenc_lib.model.losses import masked_lm_losses

    weight = torch.randn(30, 8, requires_grad=True)
    hidden = torch.randn(7, 8)
    targets = torch.tensor(DIGITS[:7])
    with torch.no_grad():
        ce, ntl = masked_lm_losses(hidden, weight, None, targets, DIGITS, chunk_elements=60)
    ref_ce, ref_ntl = _reference_losses(hidden, weight.detach(), None, targets, "mse")
    assert torch.allclose(ce, ref_ce, atol=1e-5) and torch.allclose(ntl, ref_ntl, atol=1e-5)
    ce, ntl = masked_lm_losses(hidden[:0], weight, None, targets[:0], DIGITS)
    (ce + ntl).backward()  # zero, graph kept
    assert ce.item() == 0.0 and ntl.item() == 0.0 and weight.grad.abs().sum() == 0
    assert masked_lm_losses(hidden, weight, None, targets, None)[1] is None


def test_chunked_losses_reject_out_of_vocabulary_labels():
    from msenc_lib.model.losses import masked_lm_losses

    with pytest.raises(ValueError, match="labels"):
        masked_lm_losses(torch.randn(2, 4), torch.randn(10, 4), None, torch.tensor([3, 10]))
