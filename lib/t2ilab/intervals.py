"""Is a change in a judged share real? Newcombe's interval for the difference of two independent proportions.

Every "rose", "better than continue" or "not distinguishable" sentence in t2ilab comes from here, so the
reports, the diagnosis and the arms experiment agree on what counts as a change.
"""

from __future__ import annotations

import math

Z = 1.96  # 95% intervals


def wilson_interval(successes: float, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (sensible at 0% and 100%, unlike p +- z*se)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(hits_a: int, n_a: int, hits_b: int, n_b: int) -> tuple[float, float, float]:
    """(p_a - p_b, low, high): Newcombe's method 10 (hybrid Wilson score), 95 %.

    Newcombe (1998), "Interval estimation for the difference between independent proportions", method 10:
    sensible at 0 % and 100 % and at small n, where the Wald interval p_a - p_b +- z*se is not.
    """
    if n_a <= 0 or n_b <= 0:
        raise ValueError(f"difference_interval needs n_a and n_b >= 1, got {n_a} and {n_b}")
    p_a, p_b = hits_a / n_a, hits_b / n_b
    la, ua = wilson_interval(hits_a, n_a)
    lb, ub = wilson_interval(hits_b, n_b)
    d = p_a - p_b
    low = d - math.sqrt((p_a - la) ** 2 + (ub - p_b) ** 2)
    high = d + math.sqrt((ua - p_a) ** 2 + (p_b - lb) ** 2)
    return d, max(-1.0, low), min(1.0, high)


def change_word(low: float, high: float, up: str = "rose", down: str = "fell", same: str = "no clear change") -> str:
    """The word for a difference whose 95 % interval is [low, high]: up/down only when it excludes 0."""
    if low > 0:
        return up
    if high < 0:
        return down
    return same
