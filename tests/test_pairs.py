"""Vectorised pair construction against a plain loop written from Algorithm 1 / appendix D.3."""

import pytest
import torch

from rrdist.methods import make_config
from rrdist.methods.relational import RelationalReasoning, aggregate, negative_partners, positive_pairs
from rrdist.models.conv4 import Conv4


def reference_pairs(z, M, K, shift, how="cat"):
    """Plain loops over view pairs (i < j) and images n, as the paper's pseudo-code does.

    `shift[b, n]` is the offset drawn for image n in view-pair block b: the negative of view i
    of image n is view j of image (n + shift) mod M.
    """
    agg = {"cat": lambda a, b: torch.cat([a, b]), "sum": lambda a, b: a + b,
           "mean": lambda a, b: (a + b) / 2, "max": lambda a, b: torch.maximum(a, b)}[how]
    pos, neg, block = [], [], 0
    for i in range(K):
        for j in range(i + 1, K):
            for n in range(M):
                pos.append(agg(z[i * M + n], z[j * M + n]))
                neg.append(agg(z[i * M + n], z[j * M + (n + int(shift[block, n])) % M]))
            block += 1
    return torch.stack(pos + neg), torch.tensor([1.0] * len(pos) + [0.0] * len(neg))


@pytest.mark.parametrize("M,K", [(2, 2), (5, 3), (8, 4), (16, 7)])
@pytest.mark.parametrize("how", ["cat", "sum", "mean", "max"])
def test_pairs_equal_plain_loop(M, K, how):
    torch.manual_seed(M * 100 + K)
    z = torch.randn(K * M, 6)
    left, right = positive_pairs(M, K)
    g = torch.Generator().manual_seed(7)
    neg_right = negative_partners(right, M, g)
    # The same draws, read back as the per-block shifts the reference loop uses.
    shift = torch.randint(1, M, right.shape, generator=torch.Generator().manual_seed(7)).view(-1, M)
    got = aggregate(z, torch.cat([left, left]), torch.cat([right, neg_right]), how)
    want, targets = reference_pairs(z, M, K, shift, how)
    assert got.shape == want.shape
    assert torch.equal(got, want)
    assert len(targets) == M * (K * K - K)


@pytest.mark.parametrize("M,K", [(2, 2), (64, 4), (64, 32), (3, 9)])
def test_pair_counts_and_no_same_image_negatives(M, K):
    left, right = positive_pairs(M, K)
    neg_right = negative_partners(right, M, torch.Generator().manual_seed(0))
    P = 2 * len(left)
    assert P == M * (K * K - K)
    assert len(left) == len(neg_right) == P // 2  # balanced: as many negatives as positives
    # positives: same image, different views, each unordered view pair once
    assert torch.equal(left % M, right % M)
    assert bool((left // M < right // M).all())
    assert len(set(zip((left // M).tolist(), (right // M).tolist(), (left % M).tolist()))) == P // 2
    # negatives: same view j as the positive, never the same image
    assert torch.equal(neg_right // M, right // M)
    assert bool((neg_right % M != left % M).all())


def test_negative_partners_are_uniform_over_other_images():
    M, K = 5, 2
    _, right = positive_pairs(M, K)
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(M, M)
    for _ in range(4000):
        partner = negative_partners(right, M, g) % M
        counts[torch.arange(M), partner] += 1
    assert counts.diagonal().sum() == 0
    off = counts[~torch.eye(M, dtype=torch.bool)] / 4000
    assert torch.allclose(off, torch.full_like(off, 1 / (M - 1)), atol=0.03)


@pytest.mark.parametrize("how,width", [("cat", 128), ("sum", 64), ("mean", 64), ("max", 64)])
def test_method_uses_every_aggregation(how, width):
    cfg = make_config(K=3, batch_size=4, aggregation=how)
    torch.manual_seed(0)
    method = RelationalReasoning(cfg, Conv4(), 10)
    assert method.head[0].in_features == width
    views = torch.randn(3 * 4, 3, 32, 32)
    logits, targets, count = method.relation_logits(method.backbone(views), 4, 3)
    assert logits.shape == targets.shape == (4 * (9 - 3),) and count == len(logits)
    assert targets.sum() == len(targets) / 2
    loss, metrics = method(views, torch.zeros(4, dtype=torch.long))
    assert torch.isfinite(loss)
    assert 0.0 <= float(metrics["pair_acc"]) <= 1.0
    loss.backward()
    assert all(p.grad is not None for p in method.backbone.parameters())


@pytest.mark.parametrize("how", ["cat", "sum", "mean", "max"])
def test_relation_scores_equal_the_head_on_the_pair_matrix(how):
    """The factorised head (first layer per view, gathered per pair) against the plain head on the
    aggregated pair matrix: the same scores, and the same gradients for features and weights."""
    from rrdist.methods.relational import relation_scores
    from rrdist.models.heads import relation_head

    torch.manual_seed(1)
    M, K, D = 16, 5, 64
    z = torch.randn(K * M, D, dtype=torch.float64, requires_grad=True)
    head = relation_head(D * (2 if how == "cat" else 1)).double()
    left, right = positive_pairs(M, K)
    neg = negative_partners(right, M, torch.Generator().manual_seed(2))
    left, right = torch.cat([left, left]), torch.cat([right, neg])
    weights = torch.randn(len(left), dtype=torch.float64)  # a loss that weighs every score differently

    plain = head(aggregate(z, left, right, how)).squeeze(1)
    grads_plain = torch.autograd.grad((plain * weights).sum(), [z, *head.parameters()])
    fast = relation_scores(head, z, left, right, how)
    grads_fast = torch.autograd.grad((fast * weights).sum(), [z, *head.parameters()])

    assert torch.allclose(fast, plain, atol=1e-10)
    for a, b in zip(grads_fast, grads_plain):
        assert torch.allclose(a, b, atol=1e-9)


@pytest.mark.parametrize("head", ["dot", "encoder_dot"])
def test_dot_product_heads_score_pairs_as_written_out(head):
    """Table 14 ablations: the pair's score is the dot product of the two (encoded) representations."""
    torch.manual_seed(0)
    M, K = 6, 3
    method = RelationalReasoning(make_config(K=K, batch_size=M, head=head), Conv4(), 10).eval()
    assert not hasattr(method, "head")
    z = torch.randn(K * M, 64)
    method.generator = torch.Generator().manual_seed(5)
    e = method.encoder(z) if head == "encoder_dot" else z  # the method encodes each view before pairing
    logits, targets, _ = method.relation_logits(e, M, K)
    left, right = positive_pairs(M, K)
    neg = negative_partners(right, M, torch.Generator().manual_seed(5))
    want = [float(e[a] @ e[b]) for a, b in zip(torch.cat([left, left]).tolist(), torch.cat([right, neg]).tolist())]
    assert torch.allclose(logits, torch.tensor(want), atol=1e-4)
    assert targets.sum() == len(targets) / 2
    method.train()
    loss, _ = method(torch.randn(K * M, 3, 32, 32), None)
    loss.backward()
    assert all(p.grad is not None for p in method.backbone.parameters())


def test_same_class_partners_follow_a_plain_loop():
    """Semi-supervised positives (A.7): the same view of another labelled image of the same class."""
    from rrdist.methods.relational import same_class_partners

    M, K = 10, 3
    classes = torch.tensor([0, 1, 0, -1, 2, 1, 0, -1, 2, 3])  # 3 is alone in its class; -1 unlabelled
    left, right = positive_pairs(M, K)
    chosen, partner = same_class_partners(right, classes, M, torch.Generator().manual_seed(0))
    for p in range(len(right)):
        n = int(right[p]) % M
        candidates = [m for m in range(M) if m != n and classes[n] >= 0 and classes[m] == classes[n]]
        assert bool(chosen[p]) == bool(candidates), p
        if candidates:
            assert int(partner[p]) % M in candidates
            assert int(partner[p]) - int(partner[p]) % M == int(right[p]) - n  # the same view


def test_labelled_subset_is_fixed_and_of_the_asked_size():
    from rrdist.methods.relational import labelled

    idx = torch.arange(100_000)
    for fraction in (0.01, 0.1, 0.25, 0.5):
        share = float(labelled(idx, fraction, seed=0).double().mean())
        assert abs(share - fraction) < 0.01, (fraction, share)
    assert labelled(idx, 1.0, 0).all() and not labelled(idx, 0.0, 0).any()
    assert torch.equal(labelled(idx, 0.1, 3), labelled(idx, 0.1, 3))
    assert not torch.equal(labelled(idx, 0.1, 3), labelled(idx, 0.1, 4))


def test_semi_supervised_pairs_stay_balanced_and_add_one_positive_per_labelled_pair():
    torch.manual_seed(0)
    M, K = 8, 3
    method = RelationalReasoning(make_config(K=K, batch_size=M, label_fraction=1.0), Conv4(), 10)
    assert method.needs_indices
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])  # classes 3 and 4 have one image each
    classes = method.targets(labels, torch.arange(M))
    assert torch.equal(classes, labels)  # fraction 1: every label kept
    z = torch.randn(K * M, 64)
    logits, targets, _ = method.relation_logits(z, M, K, classes)
    plain = M * (K * K - K)
    extra = 2 * (K * (K - 1) // 2) * 6  # 6 images have a same-class partner, in every view pair, + negatives
    assert len(targets) == plain + extra
    assert targets.sum() == len(targets) / 2
    loss, _ = method(torch.randn(K * M, 3, 32, 32), classes)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("semi", [False, True])
def test_workers_shares_partition_the_global_pairs(semi):
    """Each of N workers scores the pairs anchored at its own images, with the draws of the whole
    batch: together the shares are exactly the pairs (and scores) one process builds."""
    torch.manual_seed(0)
    M, K, N = 12, 3, 3
    method = RelationalReasoning(make_config(K=K, batch_size=M, label_fraction=0.5 if semi else 0.0),
                                 Conv4(), 10).double().eval()  # eval: the head scores each pair on its own
    z = torch.randn(K * M, 64, dtype=torch.float64)
    classes = torch.tensor([0, 1, 0, -1, 2, 1, 0, -1, 2, 3, 1, 2]) if semi else None

    def scored(share):
        method.generator = torch.Generator().manual_seed(9)  # every worker draws alike
        logits, targets, count = method.relation_logits(z, M, K, classes, share)
        return sorted(zip(logits.double().round(decimals=9).tolist(), targets.tolist())), count

    whole, count = scored(None)
    parts = [scored((r * M // N, (r + 1) * M // N)) for r in range(N)]
    assert all(c == count for _, c in parts) and count == len(whole)
    assert sorted(sum((p for p, _ in parts), [])) == whole
    assert all(len(p) < len(whole) for p, _ in parts)
