"""search_kx against a literal scalar transliteration of ggml-quants.c (float32 scalars, C order)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from qtool.quants import scratch, search_kx

from .kquant_refs import ref_qkx, ref_qp

F = np.float32


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
