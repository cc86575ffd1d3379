"""qtool.quants.search against a literal scalar transliteration of ggml-quants.c (float32 scalars,
C order) and against the golden Q4_0 / Q5_0 imatrix vectors (which run make_qx_quants)."""

from __future__ import annotations

import numpy as np
import pytest

from qtool.quants import search
from tests.vectors import expected, inputs

F = np.float32
EPS = F(1e-15)


def _ni(v: F) -> int:
    """ggml nearest_int on one float32."""
    val = np.array([F(v) + F(12582912.0)], dtype=F).view(np.int32)[0]
    return int((int(val) & 0x007FFFFF) - 0x00400000)


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


def ref_qx(x: np.ndarray, nmax: int, rmse_type: int, qw: np.ndarray | None) -> tuple[F, list[int]]:
    """make_qx_quants, one block, scalar float32."""
    n = len(x)
    x = [F(v) for v in x]
    mx = F(0)
    amax = F(0)
    for v in x:
        if abs(v) > amax:
            amax = abs(v)
            mx = v
    if amax < EPS:
        return F(0), [0] * n
    iscale = F(-nmax) / mx
    if rmse_type == 0:
        return F(1) / iscale, [nmax + _clamp(_ni(iscale * v), -nmax, nmax - 1) for v in x]
    early = rmse_type < 0
    rt = abs(rmse_type)

    def wt(i: int) -> F:
        if qw is not None:
            return F(qw[i])
        return {1: x[i] * x[i], 2: F(1), 3: abs(x[i])}.get(rt, np.sqrt(abs(x[i])))

    sumlx = F(0)
    suml2 = F(0)
    L = []
    for i in range(n):
        lv = _clamp(_ni(iscale * x[i]), -nmax, nmax - 1)
        L.append(lv + nmax)
        w = wt(i)
        sumlx += w * x[i] * F(lv)
        suml2 += w * F(lv) * F(lv)
    scale = sumlx / suml2 if suml2 != 0 else F(0)
    if early:
        return (F(0.5) * (scale + F(1) / iscale) if suml2 > 0 else F(1) / iscale), L
    best = scale * sumlx
    for i_s in range(-9, 10):
        if i_s == 0:
            continue
        iscale = -(F(nmax) + F(0.1) * F(i_s)) / mx
        sumlx = F(0)
        suml2 = F(0)
        for i in range(n):
            lv = _clamp(_ni(iscale * x[i]), -nmax, nmax - 1)
            w = wt(i)
            sumlx += w * x[i] * F(lv)
            suml2 += w * F(lv) * F(lv)
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            L = [nmax + _clamp(_ni(iscale * v), -nmax, nmax - 1) for v in x]
            scale = sumlx / suml2
            best = scale * sumlx
    return F(scale), L


def ref_q3(x: np.ndarray, nmax: int, do_rmse: bool) -> tuple[F, list[int]]:
    """make_q3_quants, one block, scalar float32."""
    n = len(x)
    x = [F(v) for v in x]
    mx = F(0)
    amax = F(0)
    for v in x:
        if abs(v) > amax:
            amax = abs(v)
            mx = v
    if amax < EPS:
        return F(0), [0] * n
    iscale = F(-nmax) / mx
    if not do_rmse:
        return F(1) / iscale, [nmax + _clamp(_ni(iscale * v), -nmax, nmax - 1) for v in x]
    L = [0] * n
    sumlx = F(0)
    suml2 = F(0)
    for i in range(n):
        lv = _clamp(_ni(iscale * x[i]), -nmax, nmax - 1)
        L[i] = lv
        w = x[i] * x[i]
        sumlx += w * x[i] * F(lv)
        suml2 += w * F(lv) * F(lv)
    for _ in range(5):
        changed = 0
        for i in range(n):
            w = x[i] * x[i]
            slx = sumlx - w * x[i] * F(L[i])
            if slx > 0:
                sl2 = suml2 - w * F(L[i]) * F(L[i])
                new_l = _clamp(_ni(x[i] * sl2 / slx), -nmax, nmax - 1)
                if new_l != L[i]:
                    slx += w * x[i] * F(new_l)
                    sl2 += w * F(new_l) * F(new_l)
                    if sl2 > 0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        changed += 1
        if not changed:
            break
    return (sumlx / suml2 if suml2 > F(0) else F(0)), [v + nmax for v in L]


def _blocks(n: int, nb: int, seed: int) -> np.ndarray:
    """Random blocks plus edge cases: zeros, tiny, constant, one spike, ties, huge."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((nb, n)).astype(F) * F(10.0) ** rng.uniform(-3, 3, (nb, 1)).astype(F)
    x[0] = 0
    x[1] = F(1e-16)
    x[2] = F(-0.75)
    x[3] = 0
    x[3, 5] = F(-3.0)
    x[4] = rng.integers(-8, 8, n).astype(F) * F(0.25)  # exact ties of iscale*x
    x[5] = rng.standard_normal(n).astype(F) * F(3e4)
    x[6, ::2] = 0
    x[7] = np.abs(x[7])
    return x


@pytest.mark.parametrize("nmax,n,rmse_type,weighted", [
    (8, 32, 1, True), (16, 32, 1, True), (32, 16, 1, False), (32, 16, 1, True), (4, 16, 1, True),
    (8, 32, 0, False), (8, 32, 2, False), (8, 32, 3, False), (8, 32, 4, False), (8, 32, -1, True),
    (32, 16, -2, False),
])
def test_make_qx_quants_vs_scalar(nmax: int, n: int, rmse_type: int, weighted: bool) -> None:
    x = _blocks(n, 60, seed=nmax * 100 + n + rmse_type)
    rng = np.random.default_rng(7)
    qw = rng.chisquare(2, x.shape).astype(F) if weighted else None
    if weighted:
        qw[10] = 0
        qw[11, :n // 2] = 0
    scale, L = search.make_qx_quants(n, nmax, x, rmse_type, qw)
    assert scale.dtype == F and scale.shape == (x.shape[0],)
    assert L.dtype == np.uint8 and L.shape == x.shape
    for b in range(x.shape[0]):
        rs, rl = ref_qx(x[b], nmax, rmse_type, None if qw is None else qw[b])
        assert scale[b].view(np.uint32) == F(rs).view(np.uint32), (b, scale[b], rs)
        assert L[b].tolist() == rl, b


@pytest.mark.parametrize("nmax,do_rmse", [(4, True), (4, False), (8, True)])
def test_make_q3_quants_vs_scalar(nmax: int, do_rmse: bool) -> None:
    x = _blocks(16, 80, seed=nmax + do_rmse)
    scale, L = search.make_q3_quants(16, nmax, x, do_rmse)
    for b in range(x.shape[0]):
        with np.errstate(over="ignore"):  # huge blocks overflow slx*slx*suml2 to inf, as in C
            rs, rl = ref_q3(x[b], nmax, do_rmse)
        assert scale[b].view(np.uint32) == F(rs).view(np.uint32), (b, scale[b], rs)
        assert L[b].tolist() == rl, b


def test_transposed_api_matches_natural() -> None:
    x = _blocks(32, 50, seed=3)
    qw = np.random.default_rng(1).uniform(0, 2, x.shape).astype(F)
    s1, L1 = search.make_qx_quants(32, 8, x, 1, qw)
    s2, Lt = search.make_qx_quants_t(np.ascontiguousarray(x.T), np.ascontiguousarray(qw.T), 8, 1)
    assert np.array_equal(s1.view(np.uint32), s2.view(np.uint32))
    assert np.array_equal(L1, Lt.T)


@pytest.mark.parametrize("qtype,nmax,bs", [("Q4_0", 8, 18), ("Q5_0", 16, 22)])
def test_make_qx_quants_golden(qtype: str, nmax: int, bs: int) -> None:
    """The weighted search of quantize_row_q4_0_impl / q5_0_impl reproduces every golden row's
    scale (and the 4-bit levels) for all 55 rows."""
    x, im, _ = inputs()
    nr, n = x.shape
    sigma2 = np.add.accumulate(x * x, axis=1)[:, -1] / F(n)  # sequential sum, as C
    w = im[None, :] * np.sqrt(sigma2[:, None] + x * x)
    s, L = search.make_qx_quants(32, nmax, x.reshape(-1, 32), 1, w.reshape(-1, 32))
    q = expected(qtype)["q_im"].reshape(nr, -1, bs)
    d_want = q[:, :, :2].copy().view(np.uint16)[..., 0]
    d_got = s.astype(np.float16).view(np.uint16).reshape(nr, -1)
    assert np.nonzero((d_got != d_want).any(axis=1))[0].tolist() == []
    L = L.reshape(nr, -1, 32)
    lo = (L[..., :16] & 15) | ((L[..., 16:] & 15) << 4)
    assert np.array_equal(lo, q[..., bs - 16:])


def test_single_block_is_summed_in_order() -> None:
    """A lone block (one column in the transposed layout) must still be summed sequentially."""
    x = _blocks(32, 12, seed=11)
    qw = np.random.default_rng(2).chisquare(2, x.shape).astype(F)
    for b in range(x.shape[0]):
        s, L = search.make_qx_quants(32, 8, x[b:b + 1], 1, qw[b:b + 1])
        rs, rl = ref_qx(x[b], 8, 1, qw[b])
        assert s[0].view(np.uint32) == F(rs).view(np.uint32) and L[0].tolist() == rl, b
        s3, L3 = search.make_q3_quants(32, 4, x[b:b + 1], True)
        with np.errstate(over="ignore"):
            rs3, rl3 = ref_q3(x[b], 4, True)
        assert s3[0].view(np.uint32) == F(rs3).view(np.uint32) and L3[0].tolist() == rl3, b


def test_dot_sums_paths_agree(monkeypatch) -> None:
    """dot_sums by einsum (where the runtime check allows it) and by multiply + reduce agree bit
    for bit, and both are C's sequential float32 sums."""
    rng = np.random.default_rng(4)
    wx = (rng.standard_normal((32, 333)) * 100).astype(F)
    w = rng.uniform(0, 2, (32, 333)).astype(F)
    lv = rng.integers(-16, 16, (32, 333)).astype(F)
    a = np.empty((2, 333), dtype=F)
    b = np.empty((2, 333), dtype=F)
    search.dot_sums(wx, w, lv, a)
    search.dot_sums(wx, w, lv, b, np.empty((2, 32, 333), dtype=F))
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    for col in (0, 100, 332):
        s0, s1 = F(0), F(0)
        for j in range(32):
            s0 += wx[j, col] * lv[j, col]
            s1 += (w[j, col] * lv[j, col]) * lv[j, col]
        assert a[0, col] == s0 and a[1, col] == s1


def test_einsum_check_is_sensitive() -> None:
    """The data einsum_is_sequential checks on tells C's order from pairwise summation and from
    fused multiply-add, so a numpy that does either is caught (and the ufunc path is used)."""
    rng = np.random.default_rng(20240611)
    nb = 2
    a = (rng.standard_normal((32, nb)) * np.exp(rng.uniform(-8, 8, (32, nb)))).astype(F)
    rng.uniform(0, 3, (32, nb))
    lv = rng.integers(-33, 33, (32, nb)).astype(F)
    seq = np.add.reduce(a * lv, axis=0, initial=F(0))
    pairwise = np.add.reduce(np.ascontiguousarray((a * lv).T), axis=1)
    fma = np.zeros(nb, dtype=np.float64)
    for j in range(32):  # acc = fl(a*l + acc), one rounding per step
        fma = (a[j].astype(np.float64) * lv[j] + fma).astype(F).astype(np.float64)
    assert not np.array_equal(seq, pairwise)
    assert not np.array_equal(seq, fma.astype(F))
    assert isinstance(search.einsum_is_sequential(), bool)


def test_search_without_einsum(monkeypatch) -> None:
    """The fallback path (no einsum) reproduces the golden Q4_0 imatrix scales too."""
    monkeypatch.setattr(search, "_EINSUM_SEQUENTIAL", False)
    test_make_qx_quants_golden("Q4_0", 8, 18)


def _boundary_blocks(n: int, nmax: int, nb: int, seed: int) -> np.ndarray:
    """Blocks whose values sit on the rounding boundaries of the candidate scales: x = max*(k +/- 0.5)/s
    for candidate s = nmax + 0.1*is, one ulp either side, and ties with +-max; the clamps at
    -nmax and nmax-1 bite on them for some candidates and not for others."""
    rng = np.random.default_rng(seed)
    svals = [F(nmax)] + [F(nmax) + F(0.1) * F(i) for i in range(-9, 10) if i]
    x = np.empty((nb, n), dtype=F)
    for b in range(nb):
        mx = F(10.0 ** rng.uniform(-3, 3)) * rng.choice([F(-1), F(1)])
        s = svals[rng.integers(len(svals))]
        k = rng.integers(nmax - 3, nmax + 1, n).astype(F) + F(0.5)
        v = (mx * k / s).astype(F) * rng.choice([F(-1), F(1)], n)
        v = np.clip(v, -abs(mx), abs(mx))
        step = rng.integers(-1, 2, n)
        v = np.nextafter(v, np.where(step > 0, F(np.inf), F(-np.inf))).astype(F) * (step != 0) + v * (step == 0)
        v[rng.integers(n)] = mx
        if b % 3 == 0:
            v[rng.integers(n)] = -mx  # +-max both present: the first one decides max's sign
        if b % 5 == 0:
            v[: n // 4] = mx
        if b % 2 == 1:  # on candidate s's grid: s fits best, and the clamp at -nmax bites at max for s > nmax + 0.5
            v = (mx * rng.integers(-nmax + 1, nmax, n).astype(F) / s).astype(F)
            v[rng.integers(n)] = mx
        x[b] = v
    return x


@pytest.mark.parametrize("nmax,n", [(4, 16), (32, 16), (8, 32)])
def test_make_qx_quants_clip_groups(monkeypatch, nmax: int, n: int) -> None:
    """The clipped copies of x that replace the per-candidate clamps give C's levels on blocks
    built on the rounding boundaries, with the bounds unchecked (the normal case), checked on the
    floats (|max| above _SAFE_MAX), and with deliberately wrong bounds (the check fails and the
    explicit clamps run)."""
    x = _boundary_blocks(n, nmax, 60, seed=nmax + n)
    qw = np.random.default_rng(nmax).chisquare(2, x.shape).astype(F)
    real = search._clip_groups

    def wrong(svals, nm):
        return [(ks, None if ch is None else ch * 0.5, None if cl is None else cl * 0.5)
                for ks, ch, cl in real(svals, nm)]

    for w in (None, qw):
        want = [ref_qx(x[b], nmax, 1, None if w is None else w[b]) for b in range(x.shape[0])]
        for mode in ("normal", "checked", "clamped"):
            with monkeypatch.context() as mp:
                if mode != "normal":
                    mp.setattr(search, "_SAFE_MAX", F(0))
                if mode == "clamped":
                    mp.setattr(search, "_clip_groups", wrong)
                scale, L = search.make_qx_quants(n, nmax, x, 1, w)
            for b, (rs, rl) in enumerate(want):
                assert scale[b].view(np.uint32) == F(rs).view(np.uint32), (mode, b, scale[b], rs)
                assert L[b].tolist() == rl, (mode, b)


def test_clip_groups_cover_all_candidates() -> None:
    """Every candidate is in exactly one group, and each group's bounds lie inside its interval."""
    for nmax in (2, 3, 4, 8, 15, 16, 31, 32, 63, 127):
        svals = tuple(float(F(nmax) + F(0.1) * F(i)) for i in range(-9, 10))
        groups = search._clip_groups(svals, nmax)
        assert sorted(k for ks, _, _ in groups for k in ks) == list(range(len(svals)))
        for ks, c_hi, c_lo in groups:
            for k in ks:
                s = svals[k]
                if c_hi is not None:
                    assert nmax - 1.5 < s * c_hi < nmax - 0.5
                else:
                    assert s * (1 + 1e-6) < nmax - 0.5
                if c_lo is not None:
                    assert nmax - 0.5 < s * c_lo < nmax + 0.5
                else:
                    assert s * (1 + 1e-6) < nmax + 0.5


@pytest.mark.parametrize("seq_min", [0, 10**9])
def test_make_q3_quants_pass_variants(monkeypatch, seq_min: int) -> None:
    """Both implementations of a coordinate-descent pass (steps through i across blocks; rounds
    of all remaining steps for few blocks) follow C's sequence of states."""
    monkeypatch.setattr(search, "_Q3_SEQ_MIN", seq_min)
    x = np.concatenate([_blocks(16, 100, seed=5), _boundary_blocks(16, 4, 60, seed=6)])
    scale, L = search.make_q3_quants(16, 4, x, True)
    for b in range(x.shape[0]):
        with np.errstate(over="ignore"):
            rs, rl = ref_q3(x[b], 4, True)
        assert scale[b].view(np.uint32) == F(rs).view(np.uint32), (b, scale[b], rs)
        assert L[b].tolist() == rl, b
