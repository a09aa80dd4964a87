"""Trends in a loss curve: the OLS slope per epoch with a confidence interval widened for autocorrelated epochs,
its direction, and spikes against a robust running baseline."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

CI_LEVEL = 0.95  # two-sided t-interval of the OLS slope
AUTOCORR_MAX = 0.5  # cap on the residual autocorrelation used to widen the CI (see slope)
AUTOCORR_MIN_POINTS = 6  # fewer points: too few pairs to estimate it, plain OLS
SPIKE_WINDOW = 25  # a training-loss point is compared with the median and MAD of the points before it
SPIKE_MAD_K = 6.0  # spike: above median + K * 1.4826 * MAD (1.4826 * MAD estimates sigma; 6 sigma is rare noise)
SPIKE_MIN_RATIO = 1.25  # ... and at least 25 % above that median, so wiggles in a near-noiseless loss don't count


def slope(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """OLS slope of y per epoch with its t-interval, and the slope relative to the mean level."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok].astype(float), y[ok].astype(float)
    n = len(x)
    if n < 3 or np.ptp(x) == 0:
        return {"slope": math.nan, "ci_low": math.nan, "ci_high": math.nan, "rel_slope": math.nan, "rho": math.nan}
    fit = stats.linregress(x, y)
    # Consecutive epochs are correlated (EMA weights, slow drift), so plain OLS claims trends too often. Santer
    # et al. 2000 (doi:10.1029/1999JD901105): lag-1 autocorrelation r of the residuals gives n_eff = n(1-r)/(1+r);
    # the standard error grows by sqrt((n-2)/(n_eff-2)) and t uses n_eff-2 dof. r is capped at AUTOCORR_MAX
    # because a smooth curved decay also has correlated residuals, and that is signal, not noise.
    resid = y - (fit.intercept + fit.slope * x)
    rho = float(np.corrcoef(resid[:-1], resid[1:])[0, 1]) if n >= AUTOCORR_MIN_POINTS and np.ptp(resid) > 0 else 0.0
    rho = min(max(rho, 0.0), AUTOCORR_MAX) if math.isfinite(rho) else 0.0
    n_eff = n * (1 - rho) / (1 + rho)
    half = (stats.t.ppf(0.5 + CI_LEVEL / 2, n_eff - 2) * fit.stderr * math.sqrt((n - 2) / (n_eff - 2))
            if n_eff > 2 else math.inf)
    level = abs(float(np.mean(y)))
    return {"slope": fit.slope, "ci_low": fit.slope - half, "ci_high": fit.slope + half,
            "rel_slope": fit.slope / level if level > 0 else math.nan, "rho": rho}


def direction(s: dict[str, float], min_rel: float = 0.0) -> str:
    """"down"/"up" when the CI excludes zero and the relative slope is at least min_rel, else "flat"."""
    if s["ci_high"] < 0 and s["rel_slope"] <= -min_rel:
        return "down"
    if s["ci_low"] > 0 and s["rel_slope"] >= min_rel:
        return "up"
    return "flat"


def count_spikes(loss: np.ndarray) -> np.ndarray:
    """Boolean mask of points above median + SPIKE_MAD_K·σ_MAD (and SPIKE_MIN_RATIO·median) of the points before."""
    loss = np.asarray(loss, dtype=float)
    spikes = np.zeros(len(loss), dtype=bool)
    for i in range(SPIKE_WINDOW // 2, len(loss)):
        before = loss[max(0, i - SPIKE_WINDOW):i]
        before = before[np.isfinite(before)]
        if len(before) < SPIKE_WINDOW // 2 or not np.isfinite(loss[i]):
            continue
        median = np.median(before)
        sigma = 1.4826 * np.median(np.abs(before - median))  # MAD → σ for Gaussian noise, robust to the spikes
        spikes[i] = loss[i] > median + SPIKE_MAD_K * sigma and loss[i] > SPIKE_MIN_RATIO * median
    return spikes
