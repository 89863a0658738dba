import torch

from msenc_lib.model.masking import MaskingSpec, mask_tokens

V, PAD, MASK, SEP = 40, 0, 1, 2
SPEC = MaskingSpec.create(MASK, [PAD, SEP], V)


def batch(n=64, length=500, real=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (n, length), generator=g)
    ids[:, ::10] = SEP
    ids[:, real:] = PAD
    mask = torch.zeros(n, length, dtype=torch.bool)
    mask[:, :real] = True
    return ids, mask


def test_proportions_per_sequence():
    ids, mask = batch()
    corrupted, labels = mask_tokens(ids, SPEC, mask, torch.Generator().manual_seed(1))
    picked = labels != -100
    candidates = (mask & (ids != SEP)).sum(1)  # 360 per row
    assert torch.equal(picked.sum(1), torch.round(candidates * 0.15).long())  # exactly 54 per row
    n = picked.sum().item()
    masked = (corrupted == MASK) & picked
    unchanged = (corrupted == ids) & picked
    assert masked.sum(1).eq(43).all()  # int(0.8 * 54)
    random_or_kept = picked & ~masked
    # of the other 11 per row: int(0.9 * 54) - 43 = 5 replaced by a random token (which may equal the original)
    assert random_or_kept.sum(1).eq(11).all()
    assert 0.08 < unchanged.sum().item() / n < 0.16
    assert torch.equal(labels[picked], ids[picked])


def test_never_picks_pad_or_special_and_random_tokens_are_not_special():
    ids, mask = batch(seed=3)
    corrupted, labels = mask_tokens(ids, SPEC, mask, torch.Generator().manual_seed(2))
    picked = labels != -100
    assert not picked[~mask].any() and not picked[ids == SEP].any()
    assert torch.equal(corrupted[~picked], ids[~picked])
    replaced = picked & (corrupted != MASK)
    assert not torch.isin(corrupted[replaced], torch.tensor([PAD, SEP, MASK])).any()


def test_deterministic_for_a_seed_and_different_across_seeds():
    ids, mask = batch(n=4)
    a = mask_tokens(ids, SPEC, mask, torch.Generator().manual_seed(7))
    b = mask_tokens(ids, SPEC, mask, torch.Generator().manual_seed(7))
    c = mask_tokens(ids, SPEC, mask, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_positions_are_spread_over_the_sequence():
    ids, mask = batch(n=200, length=400, real=400, seed=5)
    _, labels = mask_tokens(ids, SPEC, mask, torch.Generator().manual_seed(0))
    per_position = (labels != -100).float().mean(0)
    assert per_position[::10].sum() == 0  # separators
    first, second = per_position[:200].mean(), per_position[200:].mean()
    assert abs(first - second) < 0.02
