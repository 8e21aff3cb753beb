"""The nights-compared arithmetic on hand-made counts: known z and p values, Fisher's exact test, the
false-discovery adjustment, and which keys appeared, grew, shrank or vanished."""

from __future__ import annotations

import math

import pytest

from vlmprobe.report.stats import benjamini_hochberg, compare_counts, fisher_exact, two_proportions, z_corrected


def test_fisher_exact_matches_hand_computed_hypergeometric_sums():
    # Fisher's tea-tasting table [[3, 1], [1, 3]]: P(k) = C(4,k)^2 / 70 = 1, 16, 36, 16, 1 (/70);
    # the tables no likelier than k=3 add up to 34/70.
    assert fisher_exact(3, 4, 1, 4) == pytest.approx(34 / 70, rel=1e-12)
    # [[6, 2], [1, 4]]: C(7,k) C(6,8-k) / C(13,8) for k=2..7 is 21, 210, 525, 420, 105, 6 (/1287);
    # k=6 (105) and the rarer 21 and 6 give 132/1287 = 4/39.
    assert fisher_exact(6, 8, 1, 5) == pytest.approx(4 / 39, rel=1e-12)
    assert fisher_exact(1, 5, 6, 8) == pytest.approx(4 / 39, rel=1e-12)  # symmetric in the nights
    assert fisher_exact(0, 100, 0, 100) == 1.0  # no failure either night: no evidence of change


def test_z_with_continuity_correction_and_its_p_on_known_counts():
    # 30 of 1,000 rows against 60 of 1,000: pooled 0.045, se = sqrt(.045 * .955 * .002) = 0.0092709;
    # |diff| 0.03 less the correction 0.001 → z = 3.12806. Its square is Yates' chi-square of the
    # 2x2 table, N (|ad - bc| - N/2)^2 / (row and column sums) = 9.78476, whose 1-df tail is 0.0017596.
    t = two_proportions(30, 1000, 60, 1000)
    assert t.test == "z" and t.z == pytest.approx(3.12806, abs=1e-5)
    yates = 2000 * (abs(30 * 940 - 970 * 60) - 1000) ** 2 / (1000 * 1000 * 90 * 1910)
    assert t.z ** 2 == pytest.approx(yates, rel=1e-12) and yates == pytest.approx(9.78476, abs=1e-5)
    assert t.p == pytest.approx(0.0017596, rel=1e-4)
    assert z_corrected(60, 1000, 30, 1000) == pytest.approx(-3.12806, abs=1e-5)  # signed: the rate shrank
    # within the correction of each other: no change at all
    assert z_corrected(10, 1000, 10, 1001) == 0.0
    assert (t.rate1, t.rate2) == (0.03, 0.06)


def test_small_counts_use_fishers_exact_test():
    t = two_proportions(3, 4, 1, 4)
    assert t.test == "fisher" and t.p == pytest.approx(34 / 70)
    # 2 against 9 failures in 10,000 rows each: expected failures 5.5 per night, so the z-test …
    assert two_proportions(2, 10_000, 9, 10_000).test == "z"
    # … but 1 against 6: expected 3.5 < 5, Fisher's test (C(7,k)/2^7 nearly: p = 2 * 8/128 = 0.125)
    small = two_proportions(1, 10_000, 6, 10_000)
    assert small.test == "fisher" and small.p == pytest.approx(0.125, abs=0.001)


@pytest.mark.parametrize("bad", [(1, 0, 1, 5), (6, 5, 1, 5), (-1, 5, 1, 5)])
def test_impossible_counts_are_refused(bad):
    with pytest.raises(ValueError, match="out of range"):
        two_proportions(*bad)


def test_benjamini_hochberg_adjusts_in_the_given_order():
    # sorted p 0.01, 0.03, 0.04, 0.2 → 0.04, 0.06, 0.0533, 0.2 → running minimum from the top
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.2])
    assert benjamini_hochberg([]) == []


def test_compare_counts_classifies_each_key_and_says_which_changes_are_noise():
    rows = 10_000
    before = {"color:red": 10, "count:circle": 50, "shape:star": 4, "size:dot": 7, "text:sign": 20}
    after = {"color:red": 60, "count:circle": 48, "shape:star": 0, "size:dot": 7, "text:sign": 20, "viewpoint:tilted": 3}
    changes = {c.key: c for c in compare_counts(before, rows, after, rows)}
    kinds = {k: c.change for k, c in changes.items()}
    assert kinds == {"color:red": "grew", "count:circle": "shrank", "shape:star": "vanished", "size:dot": "same",
                     "text:sign": "same", "viewpoint:tilted": "appeared"}
    red = changes["color:red"]
    assert red.significant and red.mark == "**" and red.test.test == "z" and red.test.z > 0
    assert red.q == pytest.approx(red.test.p * 6, rel=1e-9)  # the smallest p of 6: times 6 / 1
    # 50 → 48 and 4 → 0 or 0 → 3 in 10,000 rows are noise
    for key in ("count:circle", "shape:star", "viewpoint:tilted"):
        assert not changes[key].significant and changes[key].verdict == "noise" and changes[key].mark == ""
    assert changes["viewpoint:tilted"].test.test == "fisher"
    ordered = [c.key for c in compare_counts(before, rows, after, rows)]
    assert ordered[0] == "color:red"  # the most significant first


def test_rates_are_per_row_probed_so_a_bigger_night_is_not_a_growth():
    # twice the rows, twice the failures: the same rate
    (c,) = compare_counts({"k:v": 40}, 10_000, {"k:v": 80}, 20_000)
    assert c.change == "same" and c.test.z == 0.0 and not c.significant
    with pytest.raises(ValueError, match="no rows probed"):
        compare_counts({"k:v": 1}, 0, {"k:v": 1}, 10)
    assert math.isclose(c.test.rate1, c.test.rate2)
