"""Vectorised twins of the engine's rules for `guardrail simulate` (NumPy, all experiments of a batch at once).

`sequential` mirrors guardrail/seqtest.step operation by operation (tests/test_simulate.py feeds the same
synthetic data through engine.decide and checks both halt at the same look); `threshold` mirrors the
engine's fixed-threshold rule on the last 5 minutes; `oracle` is the physical limit: Wald's SPRT of the
null at the threshold against the true effect, which no test that does not know the effect can beat.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from guardrail import seqtest
from guardrail.model import Comparison

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Array = NDArray[np.float64]

PASS, BREACH, SKIP = 0, 1, 2
WINDOW_MINUTES = 5  # the threshold method's window


def _erfcc(z: Array) -> Array:
    import numpy as np

    a = np.abs(z)
    t = 1.0 / (1.0 + 0.5 * a)
    poly = np.zeros_like(t)
    for c in reversed(seqtest._ERFC_COEFFICIENTS):
        poly = poly * t + c
    value = t * np.exp(-a * a + poly)
    return np.where(z >= 0.0, value, 2.0 - value)


def log_mixture_e(s: Array, v: Array, rho: Array) -> Array:
    """seqtest.log_mixture_e, elementwise."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        total = v + rho
        x = s / np.sqrt(total)
        upper = np.log(0.5 * _erfcc(-x / math.sqrt(2.0)))
        x2 = x * x
        series = 1.0 - 1.0 / x2 + 3.0 / (x2 * x2) - 15.0 / (x2 * x2 * x2)
        lower = -0.5 * x2 - np.log(-x) - 0.5 * math.log(2.0 * math.pi) + np.log(series)
        log_phi = np.where(x > -30.0, upper, lower)
        return math.log(2.0) + 0.5 * np.log(rho / total) + 0.5 * x * x + log_phi


def sequential(
    comparison: Comparison,
    threshold: float,
    alpha: float,
    min_count: int,
    looks: NDArray[np.int64],
    n_c: Array,
    x_c: Array,
    n_t: Array,
    x_t: Array,
    unit_c: Array | None = None,
    unit_t: Array | None = None,
    min_dispersion: float = 1.0,
) -> NDArray[np.int8]:
    """Verdicts (runs, looks) of engine + seqtest.step on since-start cumulative proportions.

    `unit_c`/`unit_t` (optional, shape (5, runs, minutes + 1)): each arm's per-unit sums U, Σy_u, Σy_u²,
    Σn_u², Σy_u·n_u, as a warehouse source reports them; then V is at least the unit-level variance
    (seqtest._unit_v)."""
    import numpy as np

    runs = n_c.shape[0]
    K = seqtest.MAX_RESTARTS
    z = np.zeros(runs)
    last_nc, last_xc, last_nt, last_xt = z.copy(), z.copy(), z.copy(), z.copy()
    s, v, w, r2, windows = z.copy(), z.copy(), z.copy(), z.copy(), z.copy()
    vpu, mpu = np.full(runs, np.nan), np.full(runs, np.nan)
    last_at = z.copy()
    rj, rs, rv = np.full((runs, K), -1.0), np.zeros((runs, K)), np.zeros((runs, K))
    created, last_j = np.zeros(runs, dtype=np.int64), np.zeros(runs)
    increase = comparison.harm_is_increase
    f = 1.0 + threshold if increase else 1.0 - threshold
    a_main, a_late = alpha * seqtest.MAIN_SHARE, alpha * (1.0 - seqtest.MAIN_SHARE)
    tf_main, tf_late = seqtest.tuning_factor(a_main), seqtest.tuning_factor(a_late)
    c_main, c_late = -math.log(a_main), -math.log(a_late)
    out = np.full((runs, len(looks)), SKIP, dtype=np.int8)
    for i, minute in enumerate(looks):
        nc, xc, nt, xt = n_c[:, minute], x_c[:, minute], n_t[:, minute], x_t[:, minute]
        eligible = np.minimum(nc, nt) >= min_count
        decreased = eligible & (
            (nc < last_nc)
            | (nt < last_nt)
            | (xc < last_xc - 1e-6 * (1.0 + last_xc))
            | (xt < last_xt - 1e-6 * (1.0 + last_xt))
        )
        dnc, dxc, dnt, dxt = nc - last_nc, xc - last_xc, nt - last_nt, xt - last_xt
        valid = eligible & ~decreased & (dnc >= 2.0) & (dnt >= 2.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ww = dnt * dnc / (dnt + dnc)
            m_c, m_t = dxc / dnc, dxt / dnt
            d = ww * (m_t - f * m_c) if increase else ww * (f * m_c - m_t)
            p_c = (dxt + dxc + 1.0) / (f * dnt + dnc + 2.0)
            p_t = f * p_c
            p_c, p_t = np.minimum(np.maximum(p_c, 1e-9), 1.0 - 1e-9), np.minimum(np.maximum(p_t, 1e-9), 1.0 - 1e-9)
            vi = ww * ww * (p_t * (1.0 - p_t) / dnt + f * f * (p_c * (1.0 - p_c)) / dnc)
            r = (d - ww * s / w) / np.sqrt(vi)
        add_r = valid & (windows > 0) & (w > 0.0)
        r2 = np.where(add_r, r2 + r * r, r2)
        span = minute - last_at
        units = dnc + dnt
        j = float(minute // seqtest.RESTART_MINUTES)
        new_restart = valid & (j >= 1) & ((created == 0) | (last_j < j))
        pos = created % K
        sel = np.nonzero(new_restart)[0]
        rj[sel, pos[sel]], rs[sel, pos[sel]], rv[sel, pos[sel]] = j, s[sel], v[sel]
        created = np.where(new_restart, created + 1, created)
        last_j = np.where(new_restart, j, last_j)
        s = np.where(valid, s + d, s)
        v = np.where(valid, v + vi, v)
        w = np.where(valid, w + ww, w)
        vpu = np.where(valid & np.isnan(vpu), vi / units, vpu)
        mpu = np.where(valid & np.isnan(mpu), np.maximum(span, 1e-9) / units, mpu)
        windows = np.where(valid, windows + 1, windows)
        moved = valid | decreased
        last_nc, last_xc = np.where(moved, nc, last_nc), np.where(moved, xc, last_xc)
        last_nt, last_xt = np.where(moved, nt, last_nt), np.where(moved, xt, last_xt)
        last_at = np.where(moved, float(minute), last_at)
        # _evaluate
        counted = np.maximum(0.0, windows - 1.0)
        disp = np.maximum(
            max(1.0, min_dispersion),
            (seqtest.DISPERSION_PRIOR_WINDOWS * seqtest.DISPERSION_PRIOR + r2)
            / (seqtest.DISPERSION_PRIOR_WINDOWS + counted),
        )
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            upm = 1.0 / mpu
            rho_main = np.maximum(vpu * (upm * seqtest.MAIN_TARGET_MINUTES) / tf_main, 1e-300)
            rho_late = np.maximum(vpu * (upm * seqtest.LATE_TARGET_MINUTES) / tf_late, 1e-300)
            v_main = disp * v
            if unit_c is not None and unit_t is not None:  # the unit-level variance, where it is larger
                var_t = _unit_variance(unit_t[:, :, minute], nt, xt)
                unit_v = w * w * (var_t + f * f * _unit_variance(unit_c[:, :, minute], nc, xc))
                v_main = np.where(np.isfinite(unit_v) & (unit_v > v_main), unit_v, v_main)
            log_e = log_mixture_e(s, v_main, rho_main)
            log_m = _late(s, v, v_main, rv, rj, rs, rho_late, K, c_late)
        active = eligible & (windows > 0) & (v > 0.0)
        breach = active & ~decreased & ((log_e >= c_main) | (log_m >= c_late))
        verdict = np.where(breach, BREACH, np.where(eligible & ~decreased, PASS, SKIP))
        out[:, i] = verdict
    return out


def _late(
    s: Array, v: Array, v_main: Array, rv: Array, rj: Array, rs: Array, rho_late: Array, k: int, c_late: float
) -> Array:
    """ln M of the late-onset detector (seqtest._evaluate's restart mixture), elementwise."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale = v_main / v
        dv = v[:, None] - rv
        live = (rj >= 1.0) & (dv > 0.0)
        jj = np.where(live, rj, 2.0)
        log_pi = -np.log((jj + 1.0) * np.log(jj + 1.0) ** 2) - math.log(seqtest._RESTART_Z)
        # ln E ≤ ln 2 + ½ ln(ρ/(V+ρ)) + max(0, x)²/2 (ln Φ ≤ 0): only runs whose bound on ln M reaches
        # the level need the exact mixture (the same arithmetic as seqtest; the bound only skips work).
        rest_s, rest_v = s[:, None] - rs, scale[:, None] * dv
        total = rest_v + rho_late[:, None]
        x = np.maximum(rest_s, 0.0) / np.sqrt(total)
        bound = log_pi + math.log(2.0) + 0.5 * np.log(rho_late[:, None] / total) + 0.5 * x * x
        bound = np.where(live, bound, -np.inf).max(axis=1) + math.log(k)
        log_m = np.full(s.shape[0], -np.inf)
        need = np.nonzero(bound >= c_late)[0]
        if need.size:
            terms = log_pi[need] + log_mixture_e(rest_s[need], rest_v[need], rho_late[need, None])
            terms = np.where(live[need], terms, -np.inf)
            top = terms.max(axis=1)
            safe_top = np.where(np.isfinite(top), top, 0.0)
            log_m[need] = np.where(
                np.isfinite(top), safe_top + np.log(np.exp(terms - safe_top[:, None]).sum(axis=1)), -np.inf
            )
    return log_m


def _unit_variance(u: Array, n: Array, total: Array) -> Array:
    """seqtest.unit_variance for a ratio metric, elementwise: u = (U, Σy_u, Σy_u², Σn_u², Σy_u·n_u); nan where
    there are fewer than 2 units."""
    import numpy as np

    units, y, yy, nn, yn = u
    with np.errstate(divide="ignore", invalid="ignore"):
        s_yy = (yy - y * y / units) / (units - 1.0)
        r = total / n
        s_nn = (nn - n * n / units) / (units - 1.0)
        s_yn = (yn - y * n / units) / (units - 1.0)
        nbar = n / units
        var = np.maximum(0.0, s_yy - 2.0 * r * s_yn + r * r * s_nn) / (units * nbar * nbar)
    return np.where((units >= 2.0) & (n > 0.0), var, np.nan)


def threshold_rule(
    comparison: Comparison,
    threshold: float,
    min_count: int,
    looks: NDArray[np.int64],
    n_c: Array,
    x_c: Array,
    n_t: Array,
    x_t: Array,
) -> NDArray[np.int8]:
    """The engine's threshold rule on the last 5 minutes (raw cumulative sums): skip below min_count."""
    import numpy as np

    start = np.maximum(looks - WINDOW_MINUTES, 0)
    nc, nt = n_c[:, looks] - n_c[:, start], n_t[:, looks] - n_t[:, start]
    pc = np.divide(x_c[:, looks] - x_c[:, start], nc, out=np.zeros_like(nc), where=nc > 0)
    pt = np.divide(x_t[:, looks] - x_t[:, start], nt, out=np.zeros_like(nt), where=nt > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(pc > 0, (pt - pc) / np.where(pc > 0, pc, 1.0), np.where(pt > 0, np.inf, 0.0))
    harm = rel if comparison.harm_is_increase else -rel
    verdict = np.where(harm > threshold, BREACH, PASS).astype(np.int8)
    verdict[(nc < min_count) | (nt < min_count)] = SKIP
    return verdict


def oracle(
    threshold: float,
    effect: float,
    decrease: bool,
    alpha: float,
    onset: int,
    looks: NDArray[np.int64],
    n_c: Array,
    x_c: Array,
    n_t: Array,
    x_t: Array,
) -> NDArray[np.float64]:
    """Minute at which Wald's SPRT (H0 ratio = 1 ± δ vs H1 ratio = the true effect, conditional binomial per
    window, Lindon & Malek's likelihood) crosses ln(1/α) from the onset on; inf when never. It knows the
    effect and the onset: a limit, not a method."""
    import numpy as np

    f = 1.0 - threshold if decrease else 1.0 + threshold
    idx = np.concatenate([[0], looks])
    dn_c, dn_t = np.diff(n_c[:, idx], axis=1), np.diff(n_t[:, idx], axis=1)
    dx_c, dx_t = np.diff(x_c[:, idx], axis=1), np.diff(x_t[:, idx], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        logit_pi = np.log(dn_t) - np.log(dn_c)
        q0 = 1.0 / (1.0 + np.exp(-(logit_pi + math.log(f))))
        q1 = 1.0 / (1.0 + np.exp(-(logit_pi + math.log(effect))))
        inc = dx_t * np.log(q1 / q0) + dx_c * np.log((1.0 - q1) / (1.0 - q0))
    inc = np.where(np.isfinite(inc) & (looks > onset), inc, 0.0)  # it knows the onset too
    llr = np.cumsum(inc, axis=1)
    crossed = llr >= -math.log(alpha)
    first = np.argmax(crossed, axis=1)
    return np.where(crossed.any(axis=1), looks[first].astype(float), np.inf)


def halts(
    verdicts: NDArray[np.int8], looks: NDArray[np.int64], confirmations: int, max_gap_minutes: float
) -> NDArray[np.float64]:
    """engine.next_streak look by look: a pass resets, a skip keeps, a breach more than the gap after the last
    one restarts at 1; the gap is max(max_gap_minutes, 1.5 × the interval since the previous look)."""
    import numpy as np

    runs = verdicts.shape[0]
    count = np.zeros(runs, dtype=np.int64)
    last = np.full(runs, -np.inf)
    halted = np.full(runs, np.inf)
    previous = 0.0
    for i, minute in enumerate(looks):
        gap = max(max_gap_minutes, 1.5 * (float(minute) - previous)) if i else max_gap_minutes
        previous = float(minute)
        v = verdicts[:, i]
        active = ~np.isfinite(halted)
        breach = (v == BREACH) & active
        recent = (minute - last <= gap) & (count > 0)
        count = np.where(v == PASS, 0, count)
        count = np.where(breach, np.where(recent, count + 1, 1), count)
        last = np.where(breach, float(minute), last)
        halted = np.where(active & breach & (count >= confirmations), float(minute), halted)
        if not active.any():
            break
    return halted
