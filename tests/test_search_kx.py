"""search_kx against a literal scalar transliteration of ggml-quants.c (float32 scalars, C order)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from qtool.quants import scratch, search_kx

F = np.float32


def _ni(v: F) -> int:
    """ggml nearest_int on one float32."""
    val = np.array([F(v) + F(12582912.0)], dtype=F).view(np.int32)[0]
    return int((int(val) & 0x007FFFFF) - 0x00400000)


def ref_qkx(x: np.ndarray, w: np.ndarray | None, nmax: int, rmin: float, rdelta: float, nstep: int,
            use_mad: bool, qkx2: bool) -> tuple[F, F, list[int]]:
    """make_qkx2_quants (qkx2=True) / make_qkx3_quants, one block, scalar float32."""
    n = len(x)
    x = [F(v) for v in x]
    ww = [x[i] * x[i] for i in range(n)] if w is None else [F(v) for v in w]
    mn = x[0]
    mx = x[0]
    sum_w = ww[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        sum_w += ww[i]
        sum_x += ww[i] * x[i]
    if mn > 0:
        mn = F(0)
    if (mx == mn) if qkx2 else (mx <= mn):
        return F(0), -mn, [0] * n
    iscale = F(nmax) / (mx - mn)
    scale = F(1) / iscale
    best = F(0)
    L = [0] * n
    for i in range(n):
        L[i] = max(0, min(nmax, _ni(iscale * (x[i] - mn))))
        diff = scale * F(L[i]) + mn - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best += ww[i] * diff
    if nstep < 1:
        return scale, -mn, L
    for is_ in range(nstep + 1):
        iscale = (F(rmin) + F(rdelta) * F(is_) + F(nmax)) / (mx - mn)
        sum_l = F(0)
        sum_l2 = F(0)
        sum_xl = F(0)
        laux = [0] * n
        for i in range(n):
            ll = max(0, min(nmax, _ni(iscale * (x[i] - mn))))
            laux[i] = ll
            sum_l += ww[i] * F(ll)
            sum_l2 += ww[i] * F(ll) * F(ll)
            sum_xl += ww[i] * F(ll) * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = F(0)
                this_scale = sum_xl / sum_l2
            mad = F(0)
            for i in range(n):
                diff = this_scale * F(laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                mad += ww[i] * diff
            if mad < best:
                L = laux
                best = mad
                scale = this_scale
                mn = this_min
    return scale, -mn, L


def ref_qp(x: np.ndarray, qw: np.ndarray, nmax: int) -> tuple[F, list[int]]:
    """make_qp_quants, one block, scalar float32; L as C's uint8_t."""
    n = len(x)
    x = [F(v) for v in x]
    qw = [F(v) for v in qw]
    mx = F(0)
    for i in range(n):
        mx = mx if mx > x[i] else x[i]
    if mx < F(1e-15):
        return F(0), [0] * n
    iscale = F(nmax) / mx
    L = [_ni(iscale * x[i]) & 0xFF for i in range(n)]
    scale = F(1) / iscale
    best = F(0)
    for i in range(n):
        diff = x[i] - scale * F(L[i])
        best += qw[i] * diff * diff
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        iscale_is = (F(0.1) * F(is_) + F(nmax)) / mx
        scale_is = F(1) / iscale_is
        mse = F(0)
        for i in range(n):
            ll = min(nmax, _ni(iscale_is * x[i]))
            diff = x[i] - scale_is * F(ll)
            mse += qw[i] * diff * diff
        if mse < best:
            best = mse
            iscale = iscale_is
    sumlx = F(0)
    suml2 = F(0)
    for i in range(n):
        ll = min(nmax, _ni(iscale * x[i]))
        L[i] = ll & 0xFF
        sumlx += qw[i] * x[i] * F(ll)
        suml2 += qw[i] * F(ll) * F(ll)
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = qw[i]
            slx = sumlx - w * x[i] * F(L[i])
            sl2 = suml2 - w * F(L[i]) * F(L[i])
            if slx > 0 and sl2 > 0:
                new_l = min(nmax, _ni(x[i] * sl2 / slx))
                if new_l != L[i]:
                    slx += w * x[i] * F(new_l)
                    sl2 += w * F(new_l) * F(new_l)
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if not n_changed:
            break
    return (sumlx / suml2 if suml2 > 0 else F(0)), L


def _blocks(rng: np.random.Generator, nblocks: int, n: int) -> np.ndarray:
    """Random blocks of many shapes plus edge blocks (zeros, -0.0, constants, tiny, one-signed)."""
    out = []
    for b in range(nblocks):
        kind = b % 8
        scale = F(10.0 ** rng.uniform(-6, 4))
        if kind == 0:
            v = rng.standard_normal(n) * scale
        elif kind == 1:
            v = rng.standard_t(2, n) * scale
        elif kind == 2:
            v = np.abs(rng.standard_normal(n)) * scale
        elif kind == 3:
            v = -np.abs(rng.standard_normal(n)) * scale
        elif kind == 4:
            v = np.round(rng.standard_normal(n) * 3) * scale
        elif kind == 5:
            v = rng.uniform(-1, 1, n) * scale
            v[rng.random(n) < 0.5] = 0.0
        elif kind == 6:
            v = np.full(n, scale * rng.choice([-1.0, 1.0]))
        else:
            v = rng.standard_normal(n) * F(1e-30)
        out.append(v)
    x = np.array(out, dtype=F)
    x[-1] = 0.0
    x[-2] = -0.0
    x[-3, ::2] = -0.0
    return x


@pytest.mark.parametrize("n,nmax,rmin,rdelta,nstep,use_mad,qkx2,wkind", [
    (16, 3, -0.5, 0.1, 15, True, True, "abs"),       # Q2_K ref
    (32, 15, -1.0, 0.1, 20, False, True, "avx"),     # Q4_K ref
    (32, 31, -0.5, 0.1, 15, False, True, "avx"),     # Q5_K ref
    (16, 3, -0.9, 0.05, 36, False, False, "imat"),   # Q2_K impl
    (32, 15, -0.9, 0.05, 36, False, False, "imat"),  # Q4_K / Q4_1 impl
    (32, 31, -0.9, 0.05, 36, False, False, "imat"),  # Q5_K / Q5_1 impl
    (32, 15, -0.9, 0.05, 36, False, False, None),    # make_qkx3 without weights
])
def test_qkx_matches_scalar(n, nmax, rmin, rdelta, nstep, use_mad, qkx2, wkind):
    rng = np.random.default_rng(n * 1000 + nmax * 10 + nstep)
    x = _blocks(rng, 48, n)
    if wkind == "abs":
        w = np.abs(x)
    elif wkind == "avx":
        w = (np.sqrt((x * x).mean(axis=1, keepdims=True)) + np.abs(x)).astype(F)
    elif wkind == "imat":
        qw = rng.chisquare(1, (x.shape[0], n)).astype(F)
        qw[:, ::7] = 0
        w = (qw * np.sqrt((x * x).mean(axis=1, keepdims=True) + x * x)).astype(F)
    else:
        w = None
    fn = search_kx.make_qkx2_quants if qkx2 else search_kx.make_qkx3_quants
    scale, the_min, L = fn(x, w, nmax, rmin, rdelta, nstep, use_mad)
    assert scale.dtype == F and the_min.dtype == F and L.dtype == np.uint8 and L.shape == x.shape
    for b in range(x.shape[0]):
        rs, rm, rl = ref_qkx(x[b], None if w is None else w[b], nmax, rmin, rdelta, nstep, use_mad, qkx2)
        assert np.array([scale[b]]).view(np.uint32)[0] == np.array([rs], F).view(np.uint32)[0], (b, scale[b], rs)
        assert np.array([the_min[b]]).view(np.uint32)[0] == np.array([rm], F).view(np.uint32)[0], (b, the_min[b], rm)
        assert L[b].tolist() == rl, b


@pytest.mark.parametrize("n,nmax", [(16, 15), (8, 63)])
def test_qp_matches_scalar(n, nmax):
    rng = np.random.default_rng(n + nmax)
    x = np.abs(_blocks(rng, 64, n))
    x[5, 3] = -x[5, 3] - F(0.01)  # a negative entry: C's uint8_t wrap
    x[6] = rng.random(n).astype(F) * F(1e-16)  # below GROUP_MAX_EPS
    w = rng.chisquare(2, (x.shape[0], n)).astype(F)
    w[:, 1] = 0
    scale, L = search_kx.make_qp_quants(x, w, nmax)
    for b in range(x.shape[0]):
        rs, rl = ref_qp(x[b], w[b], nmax)
        assert np.array([scale[b]]).view(np.uint32)[0] == np.array([rs], F).view(np.uint32)[0], (b, scale[b], rs)
        assert L[b].tolist() == rl, b


def test_qkx_chunking_and_natural_layout():
    """Chunked calls (more blocks than one chunk) equal one block at a time."""
    rng = np.random.default_rng(7)
    chunk = search_kx._CHUNK_VALUES // 32
    x = rng.standard_normal((chunk + 37, 32)).astype(F)
    w = np.abs(x) + F(0.1)
    s, m, L = search_kx.make_qkx3_quants(x, w, 15, -0.9, 0.05, 36, False)
    idx = [0, 1, chunk - 1, chunk, x.shape[0] - 1]
    s1, m1, L1 = search_kx.make_qkx3_quants(x[idx], w[idx], 15, -0.9, 0.05, 36, False)
    assert np.array_equal(s[idx], s1) and np.array_equal(m[idx], m1) and np.array_equal(L[idx], L1)


@pytest.mark.parametrize("qkx2", [True, False])
def test_qkx_extreme_ranges(qkx2):
    """Denormal, tiny and huge blocks take the exact nearest_int path; still bit-identical."""
    rng = np.random.default_rng(99)
    n = 32
    rows = []
    for sc in (1e-40, 1e-39, 1e-38, 1e-30, 1e20, 1e30, 3e37):
        rows.append(rng.standard_normal(n) * sc)
        rows.append(np.abs(rng.standard_normal(n)) * sc)
    spike = rng.standard_normal(n) * 1e-3
    spike[5] = 1e5
    rows.append(spike)
    with np.errstate(all="ignore"):
        x = np.array(rows, dtype=F)
        w = (np.abs(x) + F(1e-30)).astype(F)
        fn = search_kx.make_qkx2_quants if qkx2 else search_kx.make_qkx3_quants
        scale, the_min, L = fn(x, w, 15, -0.9, 0.05, 36, False)
        for b in range(x.shape[0]):
            rs, rm, rl = ref_qkx(x[b], w[b], 15, -0.9, 0.05, 36, False, qkx2)
            assert np.array([scale[b]]).view(np.uint32)[0] == np.array([rs], F).view(np.uint32)[0], b
            assert np.array([the_min[b]]).view(np.uint32)[0] == np.array([rm], F).view(np.uint32)[0], b
            assert L[b].tolist() == rl, b


@pytest.mark.parametrize("qkx2", [True, False])
def test_single_block_matches_scalar(qkx2):
    """One block (a single column on the transposed layout) is summed in C's order too: numpy
    would reduce a lone column pairwise (8 partial sums), which changes the low bits."""
    rng = np.random.default_rng(31)
    x = _blocks(rng, 24, 32)
    w = rng.chisquare(2, x.shape).astype(F)
    fn = search_kx.make_qkx2_quants if qkx2 else search_kx.make_qkx3_quants
    for b in range(x.shape[0]):
        scale, the_min, L = fn(x[b:b + 1], w[b:b + 1], 15, -0.9, 0.05, 36, False)
        rs, rm, rl = ref_qkx(x[b], w[b], 15, -0.9, 0.05, 36, False, qkx2)
        assert scale[0].view(np.uint32) == F(rs).view(np.uint32), b
        assert the_min[0].view(np.uint32) == F(rm).view(np.uint32), b
        assert L[0].tolist() == rl, b


def test_qp_single_block_matches_scalar():
    rng = np.random.default_rng(32)
    x = np.abs(_blocks(rng, 24, 8)) * F(1000)
    w = rng.chisquare(2, x.shape).astype(F)
    for b in range(x.shape[0]):
        scale, L = search_kx.make_qp_quants(x[b:b + 1], w[b:b + 1], 63)
        rs, rl = ref_qp(x[b], w[b], 63)
        assert scale[0].view(np.uint32) == F(rs).view(np.uint32), b
        assert L[0].tolist() == rl, b


def test_workspace_memory_reuse_is_safe():
    """Workspaces draw on a per-thread pool: two live ones never share memory, a view a caller
    still holds keeps its memory out of reuse, and memory nobody holds is reused; every buffer is
    64-byte aligned at a distinct page offset per name."""
    def body() -> None:
        ws1 = scratch.Workspace()
        a = ws1.get("a", (4096,))
        a[:] = 1
        b_ = ws1.get("b", (4096,))
        assert a.ctypes.data % 64 == 0 and b_.ctypes.data % 64 == 0
        assert a.ctypes.data % 4096 != b_.ctypes.data % 4096
        ws2 = scratch.Workspace()
        b = ws2.get("a", (4096,))
        assert not np.shares_memory(a, b) and not np.shares_memory(b_, b)
        del ws1, b_  # a is still held: its memory must not be handed out again
        ws3 = scratch.Workspace()
        c = ws3.get("c", (4096,))
        c[:] = 2
        assert not np.shares_memory(c, a) and not np.shares_memory(c, b) and (a == 1).all()
        del a
        pooled = scratch.pooled_buffers()
        ws4 = scratch.Workspace()
        d = ws4.get("d", (4000,))
        assert scratch.pooled_buffers() == pooled  # freed memory is recycled, none allocated
        assert not any(np.shares_memory(d, v) for v in (b, c))
        assert ws4.get("d", (4000,)).ctypes.data == d.ctypes.data  # and stable within a workspace

    errors: list[BaseException] = []

    def run() -> None:
        try:
            body()
        except BaseException as e:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(e)

    t = threading.Thread(target=run)  # a fresh thread: a fresh, empty pool
    t.start()
    t.join()
    if errors:
        raise errors[0]
