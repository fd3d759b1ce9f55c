"""count_correct on hand-made problems whose hits are worked out by hand (ties, falling and flat
rivals, unsorted and signed grids, stacked terms): fast, for mutation testing of clipimo.methods.search."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clipimo.methods.search import affine_logits, count_correct


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# Five queries over three classes, alphas 0..5 (no gamma). Logit of class k: z_k + alpha * e_k.
#  q0 label 0, far ahead everywhere              -> hit at every alpha
#  q1 label 0, class 1 far ahead everywhere       -> never
#  q2 label 0: a vs 3 (class 1 higher: tie wins)  -> alpha >= 3
#  q3 label 1: a vs 3 (class 0 lower: must beat)  -> alpha >= 4
#  q4 label 0: 4 - a vs 0 (falling; tie wins)     -> alpha <= 4
Z = t([[10, 0, 0], [0, 10, 0], [0, 3, -50], [3, 0, -50], [4, 0, -50]])
E = t([[0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0]])
Y = torch.tensor([0, 0, 0, 1, 0])
ALPHAS = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
HITS = [2, 2, 2, 3, 4, 3]  # q0 + q2 + q3 + q4 per alpha, by hand


@pytest.mark.parametrize("budget", [1, 3, 1 << 24])
def test_hand_counts_with_exact_ties(budget):
    got = count_correct(Z, E, Y, ALPHAS, budget=budget)
    assert got.dtype == torch.long
    assert got.tolist() == [[h] for h in HITS]


def test_unsorted_and_repeated_alphas_keep_their_order():
    alphas = [5.0, 0.0, 3.0, 3.0, 1.0, 4.0]
    assert count_correct(Z, E, Y, alphas)[:, 0].tolist() == [HITS[5], HITS[0], HITS[3], HITS[3], HITS[1], HITS[4]]


def test_each_query_alone():
    want = [[1] * 6, [0] * 6, [0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 1, 0]]
    for i, row in enumerate(want):
        assert count_correct(Z[i:i + 1], E[i:i + 1], Y[i:i + 1], ALPHAS)[:, 0].tolist() == row


def test_stacked_terms_are_counted_per_term():
    flipped = -E  # q2 wins for a <= -3 (never here), q3 never, q4 wins for a >= -4 (always)
    got = count_correct(Z, torch.stack([E, flipped, E]), Y, ALPHAS)
    assert got.shape == (3, 6, 1)
    assert got[0, :, 0].tolist() == HITS and got[2, :, 0].tolist() == HITS
    assert got[1, :, 0].tolist() == [2] * 6  # q0 and q4


@pytest.mark.parametrize("stack_elements", [0, 1 << 21])
def test_stacked_terms_per_term_on_both_paths(monkeypatch, stack_elements):
    """One term at a time, or the whole stack as one problem of B * n rows (small stacks): the same
    per-term counts, which a per-point loop gives (random terms with gamma, exact ties included)."""
    from clipimo.methods import search

    monkeypatch.setattr(search, "STACK_ELEMENTS", stack_elements)
    gen = torch.Generator().manual_seed(5)
    z = torch.randint(-3, 4, (9, 4), generator=gen).float()
    rl = torch.randint(-2, 3, (9, 4), generator=gen).float()
    terms = torch.randint(-2, 3, (3, 9, 4), generator=gen).float()
    labels = torch.randint(0, 4, (9,), generator=gen)
    alphas, gammas = [0.0, 0.5, 1.0, 2.0], [0.0, 1.0, 3.0]
    got = count_correct(z, terms, labels, alphas, rl, gammas)
    for b in range(3):
        for i, a in enumerate(alphas):
            for j, g in enumerate(gammas):
                want = int((affine_logits(z, terms[b], a, rl, g).argmax(1) == labels).sum())
                assert int(got[b, i, j]) == want, (b, a, g)


def test_signed_alphas():
    # label 0: 0.5 - a... logit_0 = -a (e = -1), logit_1 = 0.5: tie or better for a <= -0.5
    z, e, y = t([[0, 0.5]]), t([[-1, 0]]), torch.tensor([0])
    assert count_correct(z, e, y, [-2.0, -1.0, -0.5, 0.0, 1.0])[:, 0].tolist() == [1, 1, 1, 0, 0]
    y1 = torch.tensor([1])  # label 1 needs -a < 0.5 strictly: a > -0.5
    assert count_correct(z, e, y1, [-2.0, -1.0, -0.5, 0.0, 1.0])[:, 0].tolist() == [0, 0, 0, 1, 1]


def test_gamma_and_alpha_together():
    # label 0: logit_0 = gamma + alpha, logit_1 = 1: a hit where gamma + alpha >= 1 (exact halves).
    z, rl, e, y = t([[0, 1]]), t([[1, 0]]), t([[1, 0]]), torch.tensor([0])
    got = count_correct(z, e, y, [0.0, 0.5, 1.0], rl, [0.0, 0.5, 1.0])
    assert got.tolist() == [[0, 0, 1], [0, 1, 1], [1, 1, 1]]
    both = count_correct(z.repeat(2, 1), e.repeat(2, 1), torch.tensor([0, 1]), [0.0, 0.5, 1.0], rl.repeat(2, 1),
                         [0.0, 0.5, 1.0])
    assert both.tolist() == [[1, 1, 1], [1, 1, 1], [1, 1, 1]]  # label 1 takes exactly the other points


def test_flat_rival_decided_by_gamma():
    # e equal for both classes (no alpha dependence): lead of class 1 = -gamma. Label 0 ties at 0.
    z, rl, e = t([[0, 0]]), t([[1, 0]]), t([[2, 2]])
    got = count_correct(z, e, torch.tensor([0]), [0.0, 3.0], rl, [-1.0, 0.0, 1.0])
    assert got.tolist() == [[0, 1, 1], [0, 1, 1]]
    got = count_correct(z, e, torch.tensor([1]), [0.0, 3.0], rl, [-1.0, 0.0, 1.0])
    assert got.tolist() == [[1, 0, 0], [1, 0, 0]]


@pytest.mark.parametrize("label, hits", [(0, 1), (1, 0)])
def test_identical_classes_tie_to_the_lower(label, hits):
    z, e = t([[1, 1, -9]]), t([[2, 2, 0]])
    assert count_correct(z, e, torch.tensor([label]), [0.0, 1.0, 7.0])[:, 0].tolist() == [hits] * 3


def test_rival_ahead_only_inside_the_grid():
    # label 0 leads at both ends but class 1 (a bump: e_1 larger, z_1 lower) never wins: lines
    # cross once, so the label wins on one side: logit_0 = 2 + a, logit_1 = 3a - 2 -> a <= 2.
    z, e = t([[2, -2]]), t([[1, 3]])
    assert count_correct(z, e, torch.tensor([0]), [0.0, 1.0, 2.0, 2.5, 3.0])[:, 0].tolist() == [1, 1, 1, 0, 0]


def test_two_rivals_leave_a_window():
    # label 0: logit a; class 1: 1 (wins below 1); class 2: 2a - 3 (wins above 3): hits for 1 <= a <= 3.
    z, e = t([[0, 1, -3]]), t([[1, 0, 2]])
    got = count_correct(z, e, torch.tensor([0]), [0.0, 0.5, 1.0, 2.0, 3.0, 3.5, 4.0])
    assert got[:, 0].tolist() == [0, 0, 1, 1, 1, 0, 0]


def test_no_queries():
    got = count_correct(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), [0.0, 1.0],
                        torch.zeros(0, 3), [0.0, 1.0, 2.0])
    assert got.tolist() == [[0, 0, 0], [0, 0, 0]]


def test_float32_rounding_decides_like_the_loop():
    # Class 1 trails by one float32 ulp-level step that alpha * e rounds away at large alpha:
    # the search must follow the float32 logits, not exact arithmetic.
    z = t([[1.0, 1.0 - 2.0 ** -23]])
    e = t([[3.0, 3.0 + 2.0 ** -21]])
    alphas = [0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 4.0, 1000.0]
    want = [int(affine_logits(z, e, float(np.float32(a))).argmax(1).item() == 0) for a in alphas]
    assert len(set(want)) == 2  # the label loses somewhere on this grid
    assert count_correct(z, e, torch.tensor([0]), alphas)[:, 0].tolist() == want


def test_affine_logits_by_hand():
    z, e, rl = t([[1, -2]]), t([[2, 0.5]]), t([[3, 4]])
    assert affine_logits(z, e, 4.0).tolist() == [[9, 0]]
    assert affine_logits(z, e, 4.0, rl, 5.0).tolist() == [[24, 20]]
    assert affine_logits(z, e, 4.0, rl).tolist() == [[9, 0]]  # gamma defaults to 0


def test_rival_ahead_only_at_the_largest_alpha():
    # logit_1 = a - 3 trails by 1 at alpha 2 and leads at alpha 10 (the box must reach the last alpha).
    z, e = t([[0, -3]]), t([[0, 1]])
    assert count_correct(z, e, torch.tensor([0]), [0.0, 1.0, 2.0, 10.0])[:, 0].tolist() == [1, 1, 1, 0]
    assert count_correct(z, e, torch.tensor([0]), [10.0, 0.0, 1.0, 2.0])[:, 0].tolist() == [0, 1, 1, 1]


def test_zero_shot_lead_outweighs_the_gamma_term():
    # The rival's RL lead is positive for every gamma (1 or 2) but Z keeps the label ahead: hits.
    z, rl, e = t([[5, 0]]), t([[0, 1]]), t([[0, 0]])
    assert count_correct(z, e, torch.tensor([0]), [0.0, 1.0], rl, [1.0, 2.0]).tolist() == [[1, 1], [1, 1]]
    # The rival's RL lead (gamma) is positive everywhere, Z's (-1) evens it at gamma 1: a tie the
    # label wins as the lower class; at gamma 2 the rival leads.
    z, rl = t([[0, -1]]), t([[0, 1]])
    assert count_correct(z, e, torch.tensor([0]), [0.0, 1.0], rl, [1.0, 2.0]).tolist() == [[1, 0], [1, 0]]
    # The rival's RL lead is negative everywhere but its Z lead wins: no hits.
    z, rl = t([[0, 5]]), t([[1, 0]])
    assert count_correct(z, e, torch.tensor([0]), [0.0, 1.0], rl, [1.0, 2.0]).tolist() == [[0, 0], [0, 0]]


@pytest.mark.parametrize("z, rl, e, label, hit", [
    ([1e6, 1e6], [0, 0.01], [0, 0], 0, 1),   # exact: class 1 leads by 0.01; float32: a tie, label 0 wins
    ([0, 0.01], [1e6, 1e6], [0, 0], 1, 0),   # exact: label 1 leads by 0.01; float32: a tie, class 0 wins
    ([0, 0.01], [0, 0], [1e6, 1e6], 1, 0),
])
def test_large_terms_absorb_small_ones_like_the_loop(z, rl, e, label, hit):
    """float32 rounds 1e6 + 0.01 to 1e6, so the loop's decision differs from exact arithmetic:
    the margins must scale with every term's size (Z's, gamma RL's and alpha E's)."""
    z, rl, e, y = t([z]), t([rl]), t([e]), torch.tensor([label])
    assert int(affine_logits(z, e, 1.0, rl, 1.0).argmax(1).item() == label) == hit
    assert count_correct(z, e, y, [1.0], rl, [1.0]).tolist() == [[hit]]


def test_every_query_unrivalled():
    z, e = t([[9, 0, 0], [0, 0, 7]]), t([[1, 1, 1], [0, 0, 0]])
    assert count_correct(z, e, torch.tensor([0, 2]), [0.0, 1.0]).tolist() == [[2], [2]]


@pytest.mark.parametrize("label, hit", [(0, 1), (2, 0)])
def test_all_terms_zero_is_a_tie_of_every_class(label, hit):
    z = e = rl = torch.zeros(1, 3)
    assert count_correct(z, e, torch.tensor([label]), [0.0, 2.0], rl, [0.0, 1.0]).tolist() == [[hit] * 2] * 2
