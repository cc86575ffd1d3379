"""ik_llama.cpp's Q4_1 / Q5_1 with an imatrix and Q4_K / Q5_K with and without one (flavour "ik"):
byte-exact against ik_llama.cpp's golden vectors; the vectorized searches (search_kx_ik.py) and
kernels against a scalar line-by-line transliteration of ik's ggml-quants.c (make_qkx2_quants,
make_qkx3_quants, make_qp_quants, quantize_row_q{4,5}_K_ref/_impl, quantize_row_q{4,5}_1_impl) on
random blocks of varied scale; edge rows; the registry."""

from __future__ import annotations

import numpy as np
import pytest

from qtool.quants import can_quantize, engine
from qtool.quants.ik.kquants_q45_ik import QUANTIZE
from qtool.quants.ik.search_kx_ik import make_qkx3_ik_t, make_qp_quants_ik_t
from qtool.quants.kquants.q45_k import quantize_q4_k
from qtool.quants.registry import quantizer, support

from . import refs
from .kquant_refs import fp16_bits as fp16
from .kquant_refs import fp16_value as h2f
from .kquant_refs import ik_quantize_lib, ref_qkx2_ik
from .kquant_refs import nearest_int as nint
from .kquant_refs import ref_qkx3_ik as make_qkx3_ref
from .kquant_refs import ref_qp_ik as make_qp_ref
from .vectors import expected, inputs, mismatched_rows

F = np.float32
K_TYPES = ["Q4_K", "Q5_K"]
TYPES = ["Q4_1", "Q5_1", *K_TYPES]
NMAX = {"Q4_1": 15, "Q5_1": 31, "Q4_K": 15, "Q5_K": 31}


# ---- scalar transliteration of ik_llama.cpp ggml-quants.c ---------------------------------------

def _pack_scales(ls: list, lm: list) -> list:
    sc = [0] * 12
    for j in range(8):
        if j < 4:
            sc[j] = ls[j] & 0xFF
            sc[j + 4] = lm[j] & 0xFF
        else:
            sc[j + 4] = ((ls[j] & 0xF) | ((lm[j] & 0xF) << 4)) & 0xFF
            sc[j - 4] = (sc[j - 4] | ((ls[j] >> 4) << 6)) & 0xFF
            sc[j] = (sc[j] | ((lm[j] >> 4) << 6)) & 0xFF
    return sc


def _scale_min(j: int, q: list) -> tuple[int, int]:
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def k45_block_ref(x: np.ndarray, qw: np.ndarray | None, nmax: int) -> bytes:
    """One super-block of ik quantize_row_q{4,5}_K_impl (qw given) / quantize_row_q{4,5}_K_ref."""
    x = [F(v) for v in x]
    L = [0] * 256
    scales, mins = [F(0)] * 8, [F(0)] * 8
    if qw is None:
        for j in range(8):
            xs = x[32 * j:32 * j + 32]
            s2 = F(0)
            for v in xs:
                s2 = F(s2 + F(v * v))
            av = F(np.sqrt(F(s2 / F(32))))
            w = [F(av + F(abs(v))) for v in xs]
            rmin, nstep = (-1.0, 20) if nmax == 15 else (-0.5, 15)
            scales[j], mins[j], L[32 * j:32 * j + 32] = ref_qkx2_ik(xs, w, nmax, rmin, 0.1, nstep, False)
        ms, mm = F(0), F(0)
        for j in range(8):
            ms = scales[j] if scales[j] > ms else ms
            mm = mins[j] if mins[j] > mm else mm
        with np.errstate(divide="ignore", over="ignore"):
            isc = F(F(63) / ms) if ms > 0 else F(0)
            imn = F(F(63) / mm) if mm > 0 else F(0)
            ls = [min(63, nint(F(isc * scales[j])) & 0xFF) for j in range(8)]
            lm = [min(63, nint(F(imn * mins[j])) & 0xFF) for j in range(8)]
        dbits, mbits = fp16(F(ms / F(63))), fp16(F(mm / F(63)))
    else:
        s2 = F(0)
        for v in x:
            s2 = F(s2 + F(v * v))
        sigma2 = F(F(F(2) * s2) / F(256))
        sw = [F(0)] * 8
        for j in range(8):
            xs = x[32 * j:32 * j + 32]
            w = [F(F(qw[32 * j + i]) * F(np.sqrt(F(sigma2 + F(xs[i] * xs[i]))))) for i in range(32)]
            s = F(0)
            for v in w:
                s = F(s + v)
            sw[j] = s
            scales[j], mins[j], L[32 * j:32 * j + 32] = make_qkx3_ref(xs, w, nmax)
        db, ls = make_qp_ref(scales, sw, 63)
        mb, lm = make_qp_ref(mins, sw, 63)
        if nmax == 31:
            ls, lm = [min(63, v) for v in ls], [min(63, v) for v in lm]
        dbits, mbits = fp16(db), fp16(mb)
    sc = _pack_scales(ls, lm)
    for j in range(8):
        s, m = _scale_min(j, sc)
        d = F(h2f(dbits) * F(s))
        if not d:
            continue
        dm = F(h2f(mbits) * F(m))
        for i in range(32):
            with np.errstate(over="ignore", invalid="ignore"):
                L[32 * j + i] = max(0, min(nmax, nint(F(F(x[32 * j + i] + dm) / d))))
    out = [*np.array([dbits, mbits], dtype="<u2").view(np.uint8).tolist(), *sc]
    if nmax == 15:
        for j in range(0, 256, 64):
            out += [L[j + i] | (L[j + i + 32] << 4) for i in range(32)]
    else:
        qh, ql = [0] * 32, []
        m1, m2 = 1, 2
        for nn in range(0, 256, 64):
            for j in range(32):
                l1, l2 = L[nn + j], L[nn + j + 32]
                if l1 > 15:
                    l1 -= 16
                    qh[j] |= m1
                if l2 > 15:
                    l2 -= 16
                    qh[j] |= m2
                ql.append(l1 | (l2 << 4))
            m1 <<= 2
            m2 <<= 2
        out += qh + ql
    return bytes(int(v) & 0xFF for v in out)


def q1_row_ref(x: np.ndarray, qw: np.ndarray, nmax: int) -> bytes:
    """ik quantize_row_q{4,5}_1_impl with quant_weights, one row."""
    x = [F(v) for v in x]
    n = len(x)
    s2 = F(0)
    for v in x:
        s2 = F(s2 + F(v * v))
    sigma2 = F(s2 / F(n))
    out: list[int] = []
    for ib in range(n // 32):
        xb = x[32 * ib:32 * ib + 32]
        w = [F(F(qw[32 * ib + j]) * F(np.sqrt(F(sigma2 + F(xb[j] * xb[j]))))) for j in range(32)]
        d, mn, L = make_qkx3_ref(xb, w, nmax)
        out += np.array([fp16(d), fp16(F(-mn))], dtype="<u2").view(np.uint8).tolist()
        if nmax == 31:
            qh = 0
            for j in range(16):
                qh |= ((L[j] & 0x10) >> 4) << j
                qh |= ((L[j + 16] & 0x10) >> 4) << (j + 16)
            out += np.array([qh], dtype="<u4").view(np.uint8).tolist()
        out += [(L[j] & 0xF) | ((L[j + 16] & 0xF) << 4) for j in range(16)]
    return bytes(out)


# ---- golden vectors ------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden_vectors(qtype: str, variant: str) -> None:
    x, imatrix, kinds = inputs("ik_llama")
    z = expected(qtype, "ik_llama")
    im = imatrix if variant == "im" else None
    got = engine.quantize(x, qtype, im, flavour="ik")
    bad = mismatched_rows(got, z[f"q_{variant}"])
    assert bad == [], f"{qtype} {variant}: rows {bad} ({[kinds[i] for i in bad]}) differ"
    deq = engine.dequantize(got, qtype, x.shape[1])
    assert np.array_equal(deq.view(np.uint32), z[f"deq_{variant}"].view(np.uint32))
    n_main = len(mismatched_rows(engine.quantize(x, qtype, im), z[f"q_{variant}"]))
    if variant == "im":  # ik's own search: mainline's bytes differ in most rows
        assert n_main > 40
    elif qtype in K_TYPES:  # only the 1e-30 row: ik's `max - min < 1e-10f` degenerate test
        assert n_main == 1 and mismatched_rows(engine.quantize(x, qtype), z["q_noim"]) == [kinds.index("tiny")]
    else:
        assert n_main == 0


def test_registry() -> None:
    for t in TYPES:
        assert support(t, "ik") == (True, True)
        assert can_quantize(t, "ik") and can_quantize(t, "mainline")
    assert quantizer("Q4_K", "ik", False) is QUANTIZE["Q4_K"]
    assert quantizer("Q4_K", "mainline", False) is quantize_q4_k  # mainline keeps its own kernel
    assert quantizer("Q4_1", "ik", True) is QUANTIZE["Q4_1"]
    assert quantizer("Q4_1", "ik", False) is quantizer("Q4_1", "mainline", False)
    with pytest.raises(ValueError, match="needs an imatrix"):
        QUANTIZE["Q5_1"](np.zeros((1, 32), dtype=F), None)


# ---- vectorized against the scalar transliteration -----------------------------------------------

def _random_blocks(rng: np.random.Generator, nblocks: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of varied scale and shape, and weights with zeros and a wide range."""
    scale = np.exp(rng.uniform(-12, 8, (nblocks, 1)))
    x = rng.standard_normal((nblocks, n)) * scale
    kind = rng.integers(0, 5, nblocks)
    x[kind == 1] = np.abs(x[kind == 1])  # one-signed: min clamps to 0
    x[kind == 2] = rng.uniform(-1, 3, (int((kind == 2).sum()), n)) * scale[kind == 2]
    x[kind == 3] *= rng.random((int((kind == 3).sum()), n)) < 0.3  # sparse
    w = rng.chisquare(2, (nblocks, n)) * np.exp(rng.uniform(-3, 3, (nblocks, 1)))
    w[rng.random((nblocks, n)) < 0.05] = 0
    return x.astype(F), w.astype(F)


@pytest.mark.parametrize("nmax", [15, 31])
def test_make_qkx3_ik_matches_scalar(nmax: int) -> None:
    rng = np.random.default_rng(100 + nmax)
    x, w = _random_blocks(rng, 120, 32)
    x[0] = F(2e-11) * rng.standard_normal(32).astype(F)  # range below 1e-10: degenerate
    x[1] = F(3e-10) * rng.standard_normal(32).astype(F)  # just above
    x[2] = 0
    w[3] = 0  # all-zero weights: D = 0 everywhere
    scale, the_min, lt = make_qkx3_ik_t(np.ascontiguousarray(x.T), np.ascontiguousarray(w.T), nmax)
    for b in range(x.shape[0]):
        s, m, L = make_qkx3_ref(list(x[b]), list(w[b]), nmax)
        assert (scale[b].view(np.uint32), the_min[b].view(np.uint32)) == (F(s).view(np.uint32), F(m).view(np.uint32)), b
        assert lt[:, b].tolist() == L, b
    # a single block takes the same path as many
    s1, m1, l1 = make_qkx3_ik_t(np.ascontiguousarray(x[5:6].T), np.ascontiguousarray(w[5:6].T), nmax)
    assert s1[0] == scale[5] and m1[0] == the_min[5] and np.array_equal(l1[:, 0], lt[:, 5])


def test_make_qp_ik_matches_scalar() -> None:
    rng = np.random.default_rng(7)
    x = np.abs(rng.standard_normal((200, 8)) * np.exp(rng.uniform(-40, 5, (200, 1)))).astype(F)
    x[0] = F(5e-16) * np.abs(rng.standard_normal(8)).astype(F)  # zero for mainline (1e-15), not for ik
    x[1] = 0
    w = (rng.chisquare(3, (200, 8)) * np.exp(rng.uniform(-5, 5, (200, 1)))).astype(F)
    scale, lt = make_qp_quants_ik_t(np.ascontiguousarray(x.T), np.ascontiguousarray(w.T), 63)
    for b in range(x.shape[0]):
        s, L = make_qp_ref(list(x[b]), list(w[b]), 63)
        assert scale[b].view(np.uint32) == F(s).view(np.uint32) and lt[:, b].tolist() == L, b
    assert scale[0] > 0


@pytest.mark.parametrize("qtype", K_TYPES)
@pytest.mark.parametrize("with_imatrix", [False, True])
def test_k_kernels_match_scalar(qtype: str, with_imatrix: bool) -> None:
    rng = np.random.default_rng(3 + 2 * with_imatrix + (qtype == "Q5_K"))
    x, w = _random_blocks(rng, 40, 32)
    rows = x.reshape(5, 256)
    rows[4, 100:140] = F(1e-30)  # a few degenerate sub-blocks in a live super-block
    im = np.abs(w.reshape(5, 256)[0]) if with_imatrix else None
    got = QUANTIZE[qtype](rows, im)
    for r in range(rows.shape[0]):
        assert got[r].tobytes() == k45_block_ref(rows[r], im, NMAX[qtype]), r


@pytest.mark.parametrize("qtype", ["Q4_1", "Q5_1"])
def test_q1_kernels_match_scalar(qtype: str) -> None:
    rng = np.random.default_rng(11 + (qtype == "Q5_1"))
    x, w = _random_blocks(rng, 48, 32)
    rows = x.reshape(6, 256)
    im = np.abs(w.reshape(6, 256)[1])
    got = QUANTIZE[qtype](rows, im)
    for r in range(rows.shape[0]):
        assert got[r].tobytes() == q1_row_ref(rows[r], im, NMAX[qtype]), r


@pytest.mark.parametrize("qtype", TYPES)
def test_single_rows_and_input_untouched(qtype: str) -> None:
    """Rows quantize independently: one row (a lone block column, where numpy would reduce
    pairwise) gives the bytes it gets among others, and the caller's rows stay as they were."""
    rng = np.random.default_rng(9)
    x, w = _random_blocks(rng, 128, 32)
    rows = x.reshape(16, 256)
    rows[:, 1::3] = 0  # sparse rows: where a pairwise sum of squares differs most often
    im = np.abs(w.reshape(16, 256)[2])
    keep = rows.copy()
    for imx in ([im, None] if qtype in K_TYPES else [im]):
        whole = QUANTIZE[qtype](rows, imx)
        for r in range(rows.shape[0]):
            assert np.array_equal(QUANTIZE[qtype](rows[r:r + 1], imx), whole[r:r + 1]), r
        assert np.array_equal(rows.view(np.uint32), keep.view(np.uint32))


# ---- edge rows -----------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", TYPES)
def test_edge_rows(qtype: str) -> None:
    rng = np.random.default_rng(5)
    n = 512
    rows = np.stack([np.zeros(n), np.full(n, 1e-30), rng.uniform(-3e4, 3e4, n), np.full(n, 0.7),
                     np.full(n, -2.5), rng.standard_normal(n) * 1e-12, rng.standard_normal(n)]).astype(F)
    im = np.abs(rng.standard_normal(n)).astype(F)
    im[:64] = 0  # whole blocks / sub-blocks of zero weight
    for imx in ([im, None] if qtype in K_TYPES else [im]):
        q = engine.quantize(rows, qtype, imx, flavour="ik")
        y = engine.dequantize(q, qtype, n)
        assert q.shape == (rows.shape[0], get_row_bytes(qtype, n))
        finite = np.isfinite(y).all(axis=1)
        assert finite[[0, 1, 2, 3, 4, 6]].all()
        assert np.array_equal(y[0], np.zeros(n, dtype=F))
        assert np.abs(y[1]).max() < 1e-20
        lo = 64 if imx is not None else 0  # zero-weight blocks are free to be anything
        for r, tol in ((2, 0.2), (3, 0.05), (4, 0.05), (6, 0.2)):
            err = np.abs(y[r, lo:] - rows[r, lo:]).max() / np.abs(rows[r]).max()
            assert err < tol, (qtype, r, err)
        # the vectorized path on these rows is the scalar one
        if qtype in K_TYPES:
            for r in (1, 2, 3, 5):
                assert q[r, :144 if qtype == "Q4_K" else 176].tobytes() == k45_block_ref(
                    rows[r, :256], None if imx is None else imx[:256], NMAX[qtype])
        else:
            for r in (1, 2, 3, 5):
                assert q[r].tobytes() == q1_row_ref(rows[r], imx, NMAX[qtype])


def get_row_bytes(qtype: str, n: int) -> int:
    return {"Q4_1": 20, "Q5_1": 24}.get(qtype, 0) * (n // 32) + {"Q4_K": 144, "Q5_K": 176}.get(qtype, 0) * (n // 256)


# ---- ik_llama.cpp itself, where a build is available ---------------------------------------------

@pytest.mark.skipif(refs.ik_lib() is None, reason=refs.why("QTOOL_IK_LIB"))
def test_against_ik_library() -> None:
    """Random shapes (one row included), scales and imatrices against ik's ggml_quantize_chunk."""
    lib = ik_quantize_lib()
    ids = {"Q4_1": (3, 20, 32), "Q5_1": (7, 24, 32), "Q4_K": (12, 144, 256), "Q5_K": (13, 176, 256)}
    rng = np.random.default_rng(61)
    for trial in range(8):
        n = 256 * int(rng.integers(1, 4))
        nrows = 1 if trial < 2 else int(rng.integers(2, 12))
        x, _ = _random_blocks(rng, nrows * n // 32, 32)
        rows = x.reshape(nrows, n)
        if trial % 2:
            rows[:, 1::3] = 0
        im = (rng.chisquare(1, n) * np.exp(rng.uniform(-6, 6, n))).astype(F)
        im[rng.random(n) < 0.1] = 0
        for name, (tid, size, block) in ids.items():
            for w in ((im,) if name in ("Q4_1", "Q5_1") else (None, im)):
                want = np.empty((nrows, n // block * size), np.uint8)
                lib.ggml_quantize_chunk(tid, rows.ctypes.data, want.ctypes.data, 0, nrows, n,
                                        None if w is None else w.ctypes.data, None)
                got = engine.quantize(rows, name, w, flavour="ik")
                assert mismatched_rows(got, want) == [], (trial, name, w is None)
