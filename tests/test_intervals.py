"""Newcombe's difference interval: known values, symmetry, and the words drawn from it."""

import pytest
from t2ilab.intervals import change_word, difference_interval


def test_matches_newcombe_1998_table_example():
    # Newcombe (1998) Table II, example (a): 56/70 vs 48/80, method 10 gives 0.0524 to 0.3339.
    d, low, high = difference_interval(56, 70, 48, 80)
    assert d == pytest.approx(0.2)
    assert low == pytest.approx(0.0524, abs=5e-4) and high == pytest.approx(0.3339, abs=5e-4)


def test_is_antisymmetric_and_stays_inside_minus_one_one():
    d, low, high = difference_interval(3, 40, 30, 40)
    d2, low2, high2 = difference_interval(30, 40, 3, 40)
    assert d == pytest.approx(-d2) and low == pytest.approx(-high2) and high == pytest.approx(-low2)
    assert -1 <= low < d < high <= 1
    _, low, high = difference_interval(50, 50, 0, 50)
    assert 0 < low < high <= 1


def test_words_need_an_interval_that_excludes_zero():
    assert change_word(*difference_interval(80, 100, 50, 100)[1:]) == "rose"
    assert change_word(*difference_interval(50, 100, 80, 100)[1:]) == "fell"
    assert change_word(*difference_interval(52, 100, 50, 100)[1:]) == "no clear change"
    with pytest.raises(ValueError, match="n_a and n_b"):
        difference_interval(0, 0, 1, 2)
