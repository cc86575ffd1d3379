"""ik_llama.cpp's Q2_K (with and without an imatrix) and Q3_K with an imatrix
(qtool/quants/ik/kquants_q23_ik.py): golden vectors, a scalar transliteration of ik's C on random
blocks of varied scale, TriNet detection, edge rows, the engine and registry, and (where
QTOOL_IK_LIB is set) ik_llama.cpp's own ggml_quantize_chunk on more rows; the CLI end to end
against the sha256 of ik_llama.cpp's llama-quantize --pure outputs."""

from __future__ import annotations

import hashlib
import lzma
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qtool.cli import cli
from qtool.quants import engine
from qtool.quants.ik.kquants_q23_ik import quantize_q2_k_ik, quantize_q3_k_ik, trinet_exact, trinet_max
from qtool.quants.ik.search_kx_ik import make_qkx3_ik_t as make_qkx3_quants_ik_t
from qtool.quants.ik.search_kx_ik import make_qp_quants_ik_t
from qtool.quants.registry import support

from . import refs
from .kquant_refs import fp16_bits as fp16
from .kquant_refs import fp16_value as fp16f
from .kquant_refs import ik_quantize_lib, ref_qkx2_ik
from .kquant_refs import nearest_int as ni
from .kquant_refs import ref_qkx3_ik as c_qkx3
from .kquant_refs import ref_qp_ik as c_qp
from .vectors import expected, inputs, mismatched_rows

F32 = np.float32


# --- golden vectors ---------------------------------------------------------------------------

@pytest.mark.parametrize(("qtype", "variant"), [("Q2_K", "noim"), ("Q2_K", "im"), ("Q3_K", "im"), ("Q3_K", "noim")])
def test_golden_rows(qtype: str, variant: str) -> None:
    x, imatrix, _ = inputs("ik_llama")
    e = expected(qtype, "ik_llama")
    q = engine.quantize(x, qtype, imatrix if variant == "im" else None, flavour="ik")
    assert mismatched_rows(q, e["q_" + variant]) == []
    np.testing.assert_array_equal(engine.dequantize(q, qtype, x.shape[1]), e["deq_" + variant])


def test_double_sums_without_einsum(monkeypatch: pytest.MonkeyPatch) -> None:
    """The multiply + reduce fallback of the double sums (used where einsum is not sequential)."""
    from qtool.quants.ik import search_kx_ik

    assert search_kx_ik.einsum64_is_sequential() in (True, False)
    monkeypatch.setattr(search_kx_ik, "_EINSUM64", False)
    x, imatrix, _ = inputs("ik_llama")
    assert mismatched_rows(quantize_q2_k_ik(x, imatrix), expected("Q2_K", "ik_llama")["q_im"]) == []


def test_registry() -> None:
    assert support("Q2_K", "ik") == (True, True)
    assert support("Q3_K", "ik") == (True, True)
    x, imatrix, kinds = inputs("ik_llama")
    tiny = kinds.index("tiny")
    # the 'tiny' row: ik's make_qkx2_quants returns early for max - min < 1e-10 (mainline: max == min)
    assert not np.array_equal(engine.quantize(x[tiny:tiny + 1], "Q2_K", flavour="ik"),
                              engine.quantize(x[tiny:tiny + 1], "Q2_K", flavour="mainline"))
    # with an imatrix the two trees differ on ordinary rows
    for t in ("Q2_K", "Q3_K"):
        assert not np.array_equal(engine.quantize(x[:4], t, imatrix, flavour="ik"),
                                  engine.quantize(x[:4], t, imatrix, flavour="mainline"))
    with pytest.raises(ValueError, match="mainline"):
        quantize_q3_k_ik(x[:1], None)


# --- scalar transliteration of ik's C (ggml-quants.c) ------------------------------------------

def pack_q2(scales: list[int], L: list[int], d: int, dmin: int) -> bytes:
    qs = [0] * 64
    for j in range(0, 256, 128):
        for ll in range(32):
            qs[j // 4 + ll] = L[j + ll] | (L[j + ll + 32] << 2) | (L[j + ll + 64] << 4) | (L[j + ll + 96] << 6)
    return bytes(scales) + bytes(qs) + d.to_bytes(2, "little") + dmin.to_bytes(2, "little")


def c_q2_k_impl(x: np.ndarray, qw: np.ndarray) -> bytes:
    """quantize_row_q2_K_impl for one super-block."""
    sumx2 = F32(0)
    for v in x:
        sumx2 += v * v
    sigma2 = F32(0.75) * sumx2 / F32(256)
    scales, mins, sw = [], [], []
    for j in range(16):
        xb = x[16 * j:16 * j + 16]
        w = [qw[16 * j + k] * np.sqrt(sigma2 + xb[k] * xb[k]) for k in range(16)]
        s = F32(0)
        for v in w:
            s += v
        sw.append(s)
        sc, mn, _ = c_qkx3(xb, np.array(w, dtype=F32), 3, -0.9, 0.05, 36)
        scales.append(sc)
        mins.append(mn)
    swa = np.array(sw, dtype=F32)
    dm, Ls = c_qp(np.array(scales, dtype=F32), swa, 15)
    mm, Lm = c_qp(np.array(mins, dtype=F32), swa, 15)
    L = []
    for j in range(16):
        d = dm * F32(Ls[j])
        m = mm * F32(Lm[j])
        idv = F32(1) / d if d else F32(0)
        L += [max(0, min(3, ni((x[16 * j + k] + m) * idv))) for k in range(16)]
    return pack_q2([(Ls[j] | (Lm[j] << 4)) & 0xFF for j in range(16)], L, fp16(dm), fp16(mm))


def c_q2_k_ref_block(x: np.ndarray) -> bytes:
    """quantize_row_q2_K_ref's per-block part (no TriNet) for one super-block."""
    scales, mins, L = [], [], []
    for j in range(16):
        xb = x[16 * j:16 * j + 16]
        sc, mn, lj = ref_qkx2_ik(xb, np.abs(xb), 3, -0.5, 0.1, 15, True)
        scales.append(sc)
        mins.append(mn)
        L += lj
    ms = mm = F32(0)
    for j in range(16):
        ms = scales[j] if scales[j] > ms else ms
        mm = mins[j] if mins[j] > mm else mm
    sb = [0] * 16
    d = dmin = 0
    if ms > 0:
        sb = [ni(F32(15) / ms * scales[j]) & 0xFF for j in range(16)]
        d = fp16(ms / F32(15))
    if mm > 0:
        sb = [(sb[j] | (ni(F32(15) / mm * mins[j]) << 4)) & 0xFF for j in range(16)]
        dmin = fp16(mm / F32(15))
    for j in range(16):
        dd = fp16f(d) * F32(sb[j] & 0xF)
        if not dd:
            continue
        dmv = fp16f(dmin) * F32(sb[j] >> 4)
        for k in range(16):
            L[16 * j + k] = max(0, min(3, ni((x[16 * j + k] + dmv) / dd)))
    return pack_q2(sb, L, d, dmin)


def c_qx_ik(x: np.ndarray, nmax: int, qw: np.ndarray) -> tuple[np.float32, list[int]]:
    """ik's make_qx_quants(n, nmax, x, L, rmse_type=1, qw)."""
    n = len(x)
    mx = amax = F32(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = abs(v), v
    if amax < F32(1e-15):
        return F32(0), [0] * n

    def sums(isc: np.float32) -> tuple[np.float32, np.float32, list[int]]:
        slx = sl2 = F32(0)
        ls = []
        for i in range(n):
            li = max(-nmax, min(nmax - 1, ni(isc * x[i])))
            ls.append(li)
            slx += qw[i] * x[i] * F32(li)
            sl2 += qw[i] * F32(li) * F32(li)
        return slx, sl2, ls

    sumlx, suml2, ls = sums(F32(-nmax) / mx)
    scale = sumlx / suml2 if suml2 else F32(0)
    best = scale * sumlx
    L = [v + nmax for v in ls]
    for s in range(-9, 10):
        for isc in (-(F32(nmax) + F32(0.1) * F32(s)) / mx, (F32(nmax - 1) + F32(0.1) * F32(s)) / mx):
            slx, sl2, ls = sums(isc)
            if sl2 > 0 and slx * slx > best * sl2:
                L = [v + nmax for v in ls]
                scale = slx / sl2
                best = scale * slx
                sumlx, suml2 = slx, sl2
    for _ in range(n * (2 * nmax - 1)):
        ag_max, gmax, bj = F32(0), F32(0), -1
        for j in range(n):
            lj = L[j] - nmax
            g = scale * qw[j] * (x[j] - scale * F32(lj))
            if (g > 0 and lj < nmax - 1) or (g < 0 and lj > -nmax):
                if abs(g) > ag_max:
                    ag_max, gmax, bj = abs(g), g, j
        if bj < 0:
            break
        w = qw[bj]
        lj = L[bj] - nmax
        if gmax > 0:
            nlx, nl2, lj = sumlx + w * x[bj], suml2 + w * F32(2 * lj + 1), lj + 1
        else:
            nlx, nl2, lj = sumlx - w * x[bj], suml2 - w * F32(2 * lj - 1), lj - 1
        if nl2 > 0 and nlx * nlx > best * nl2:
            sumlx, suml2 = nlx, nl2
            scale = sumlx / suml2
            best = scale * sumlx
            L[bj] = lj + nmax
        else:
            break
    return scale, L


def c_q3_k_impl(x: np.ndarray, qw: np.ndarray) -> bytes:
    """quantize_row_q3_K_impl (ik) for one super-block."""
    sumx2 = F32(0)
    for v in x:
        sumx2 += v * v
    sigma2 = F32(2) * sumx2 / F32(256)
    scales, sw, L = [], [], []
    for j in range(16):
        xb = x[16 * j:16 * j + 16]
        w = np.array([qw[16 * j + k] * np.sqrt(sigma2 + xb[k] * xb[k]) for k in range(16)], dtype=F32)
        s = F32(0)
        for v in w:
            s += v
        sw.append(s)
        sc, lj = c_qx_ik(xb, 4, w)
        scales.append(sc)
        L += lj
    d_block, Ls = c_qx_ik(np.array(scales, dtype=F32), 32, np.array(sw, dtype=F32))
    sb = [0] * 12
    for j in range(16):
        lv = Ls[j]
        if j < 8:
            sb[j] = lv & 0xF
        else:
            sb[j - 8] |= (lv & 0xF) << 4
        sb[j % 4 + 8] |= (lv >> 4) << (2 * (j // 4))
    d16 = fp16(d_block)
    for j in range(16):
        sc = (sb[j] & 0xF) if j < 8 else (sb[j - 8] >> 4)
        sc = (sc | (((sb[8 + j % 4] >> (2 * (j // 4))) & 3) << 4)) - 32
        d = fp16f(d16) * F32(sc)
        if not d:
            continue
        for k in range(16):
            L[16 * j + k] = max(-4, min(3, ni(x[16 * j + k] / d))) + 4
    hmask = [0] * 32
    for j in range(256):
        if L[j] > 3:
            hmask[j % 32] |= 1 << (j // 32)
            L[j] -= 4
    qs = [0] * 64
    for j in range(0, 256, 128):
        for ll in range(32):
            qs[j // 4 + ll] = L[j + ll] | (L[j + ll + 32] << 2) | (L[j + ll + 64] << 4) | (L[j + ll + 96] << 6)
    return bytes(hmask) + bytes(qs) + bytes(sb) + d16.to_bytes(2, "little")


def random_superblocks(rng: np.random.Generator, nb: int) -> np.ndarray:
    """Super-blocks of varied scale and shape (gaussian, heavy tails, one-signed, sparse, rounded)."""
    out = []
    for i in range(nb):
        s = 10.0 ** rng.uniform(-9, 4)
        kind = i % 5
        if kind == 0:
            v = rng.standard_normal(256)
        elif kind == 1:
            v = rng.standard_t(2, 256)
        elif kind == 2:
            v = rng.uniform(-0.2, 1, 256)
        elif kind == 3:
            v = rng.standard_normal(256) * (rng.uniform(size=256) < 0.15)
        else:
            v = np.round(rng.standard_normal(256) * 2)
        out.append(v * s)
    return np.array(out, dtype=F32)


def random_imatrix(rng: np.random.Generator) -> np.ndarray:
    im = (rng.standard_normal(256) ** 2 * 10.0 ** rng.uniform(-3, 3, 256)).astype(F32)
    im[rng.uniform(size=256) < 0.1] = 0
    im[32:48] = 0  # a whole sub-block without weight
    return im


@pytest.mark.parametrize("seed", [0, 1])
def test_q2_k_impl_matches_scalar_c(seed: int) -> None:
    rng = np.random.default_rng(seed)
    xs = random_superblocks(rng, 10)
    im = random_imatrix(rng)
    got = quantize_q2_k_ik(xs, im)
    for b in range(xs.shape[0]):
        assert got[b].tobytes() == c_q2_k_impl(xs[b], im), f"super-block {b}"


@pytest.mark.parametrize("seed", [0, 1])
def test_q3_k_impl_matches_scalar_c(seed: int) -> None:
    rng = np.random.default_rng(10 + seed)
    xs = random_superblocks(rng, 10)
    im = random_imatrix(rng)
    got = quantize_q3_k_ik(xs, im)
    for b in range(xs.shape[0]):
        assert got[b].tobytes() == c_q3_k_impl(xs[b], im), f"super-block {b}"


def test_q2_k_ref_matches_scalar_c() -> None:
    rng = np.random.default_rng(20)
    xs = random_superblocks(rng, 10)
    xs[3] *= F32(1e-25)  # max - min < 1e-10 in every sub-block: ik's early return
    got = quantize_q2_k_ik(xs, None)
    assert trinet_max(xs) is None
    for b in range(xs.shape[0]):
        assert got[b].tobytes() == c_q2_k_ref_block(xs[b]), f"super-block {b}"


def test_search_kernels_match_scalar_c() -> None:
    """make_qkx3_quants and make_qp_quants (ik) on their own, on 200 random blocks of 16."""
    rng = np.random.default_rng(30)
    nb = 200
    x = (rng.standard_normal((nb, 16)) * 10.0 ** rng.uniform(-6, 3, (nb, 1))).astype(F32)
    x[::7] = np.abs(x[::7])  # one-signed: min clamped to 0
    w = (rng.uniform(0, 2, (nb, 16)) ** 3).astype(F32)
    w[::11, :5] = 0
    sc, mn, L = make_qkx3_quants_ik_t(np.ascontiguousarray(x.T), np.ascontiguousarray(w.T), 3, -0.9, 0.05, 36)
    xp = np.abs(x)
    wq = w.copy()
    xp[5] = 0  # all zero
    xp[6] = F32(5e-17)  # between ik's 1e-16 and mainline's 1e-15: not zero in ik
    wq[8] = 0  # no weight: sumlx/suml2 = NaN, as in C
    qs, qL = make_qp_quants_ik_t(np.ascontiguousarray(xp.T), np.ascontiguousarray(wq.T), 15)
    for b in range(nb):
        s, m, lb = c_qkx3(x[b], w[b], 3, -0.9, 0.05, 36)
        assert (sc[b], mn[b], L[:, b].tolist()) == (s, m, lb), f"qkx3 block {b}"
        s, lb = c_qp(xp[b], wq[b], 15)
        assert (qs[b].tobytes(), qL[:, b].tolist()) == (F32(s).tobytes(), lb), f"qp block {b}"


# --- TriNet detection (quantize_row_q2_K_ref over the whole call) ------------------------------

def ternary_rows(rng: np.random.Generator, nrows: int) -> np.ndarray:
    t = rng.integers(-1, 2, (nrows, 512)) * 0.02 + rng.standard_normal((nrows, 512)) * 3e-4
    return t.astype(F32)


def borderline_trinet(seed: int) -> list[np.ndarray]:
    """Ternary rows plus noise, the noise level bisected to where C's test flips, and its neighbours."""
    rng = np.random.default_rng(seed)
    t = rng.integers(-1, 2, (4, 512))
    nz = rng.standard_normal((4, 512))

    def rows(sd: float) -> np.ndarray:
        return (t + nz * sd).astype(F32)

    def yes(sd: float) -> bool:
        xb = rows(sd)
        return trinet_exact(xb.reshape(-1), F32(np.abs(xb).max()))

    lo, hi = 0.0, 0.5
    assert yes(lo) and not yes(hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if yes(mid) else (lo, mid)
    return [rows(lo * (1 + k * 1e-7)) for k in range(-4, 5)]


def test_trinet_rows() -> None:
    rng = np.random.default_rng(40)
    x = ternary_rows(rng, 3)
    mx = trinet_max(x)
    assert mx == np.abs(x).max()
    q = quantize_q2_k_ik(x, None).reshape(-1, 84)
    assert (q[:, :16] == 0x11).all()
    d = fp16(mx).to_bytes(2, "little")
    assert all(bytes(r[80:82]) == d and bytes(r[82:84]) == d for r in q)
    y = engine.dequantize(q.reshape(3, -1), "Q2_K", 512)
    lv = np.where(x < -F32(0.5) * mx, -1, np.where(x < F32(0.5) * mx, 0, 1))
    np.testing.assert_allclose(y, lv * fp16f(int.from_bytes(d, "little")), rtol=0, atol=0)
    # one ordinary row in the same call turns the test off for all rows
    g = np.concatenate([x, rng.standard_normal((1, 512)).astype(F32)])
    assert trinet_max(g) is None
    assert not np.array_equal(quantize_q2_k_ik(g, None)[:3], q.reshape(3, -1))
    # near the threshold mse = 0.1*mse0 the double-precision estimate defers to C's float32 sums
    seen = set()
    for xb in borderline_trinet(41):
        yes = trinet_exact(xb.reshape(-1), F32(np.abs(xb).max()))
        assert (trinet_max(xb) is not None) == yes
        seen.add(yes)
    assert seen == {True, False}
    # an imatrix never takes that path
    assert not (quantize_q2_k_ik(x, np.ones(512, F32)).reshape(-1, 84)[:, :16] == 0x11).all()


def test_trinet_decided_once_for_pieces() -> None:
    """A tensor quantized in pieces, with the TriNet test decided once on the whole tensor, gives
    the bytes of one call on the whole tensor; deciding per piece does not (each piece's own max)."""
    rng = np.random.default_rng(45)
    x = ternary_rows(rng, 6)
    x[3:] *= F32(0.7)
    whole = quantize_q2_k_ik(x, None)
    mx = trinet_max(x)
    assert mx is not None
    pieces = np.concatenate([quantize_q2_k_ik(x[:3], None, mx), quantize_q2_k_ik(x[3:], None, mx)])
    assert np.array_equal(pieces, whole)
    apart = np.concatenate([quantize_q2_k_ik(x[:3], None), quantize_q2_k_ik(x[3:], None)])
    assert not np.array_equal(apart, whole)
    g = rng.standard_normal((2, 512)).astype(F32)  # decided "no" for the whole: per-block path
    assert np.array_equal(quantize_q2_k_ik(g, None, None), quantize_q2_k_ik(g, None))


# --- edge rows -------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K"])
def test_edge_rows_round_trip(qtype: str) -> None:
    rng = np.random.default_rng(50)
    rows = np.array([np.zeros(512), np.full(512, 1e-30), np.full(512, 3e4), np.full(512, -2.5),
                     rng.standard_normal(512) * 1e-30, rng.standard_normal(512) * 3e4,
                     np.r_[np.zeros(256), rng.standard_normal(256)]], dtype=F32)
    im = np.ones(512, F32)
    im[:100] = 0
    for w in (None, im):
        q = engine.quantize(rows, qtype, w, flavour="ik")
        y = engine.dequantize(q, qtype, 512)
        assert np.isfinite(y).all()
        assert (y[0] == 0).all()
        big = np.abs(rows).max(axis=1) > 1
        cols = slice(112, None)  # sub-blocks with some imatrix weight (all-zero weights give scale 0, as in C)
        err = np.abs(y - rows)[:, cols].max(axis=1)
        assert (err[big] <= 0.75 * np.abs(rows[big]).max(axis=1)).all()
    # a single super-block (one column: numpy would reduce it pairwise) equals its row in a batch
    for w in (None, im[:256]):
        one = engine.quantize(rows[5:6, :256], qtype, w, flavour="ik")
        many = engine.quantize(np.repeat(rows[5:6, :256], 3, axis=0), qtype, w, flavour="ik")
        assert (many == one).all()


# --- ik_llama.cpp itself, where a build is available ----------------------------------------

@pytest.mark.skipif(refs.ik_lib() is None, reason=refs.why("QTOOL_IK_LIB"))
def test_against_ik_library() -> None:
    lib = ik_quantize_lib()
    rng = np.random.default_rng(60)
    x = random_superblocks(rng, 256).reshape(64, 1024)
    im = np.concatenate([random_imatrix(rng) for _ in range(4)])
    tri = ternary_rows(rng, 4)
    edge = borderline_trinet(61)  # around mse = 0.1*mse0
    q2_cases = [(x, None), (x, im), (tri, None)] + [(e, None) for e in edge]
    for tid, name, cases in ((10, "Q2_K", q2_cases), (11, "Q3_K", [(x, im), (x, None)])):
        lib.ggml_quantize_init(tid)
        for rows, w in cases:
            want = np.empty((rows.shape[0], (rows.shape[1] // 256) * (84 if tid == 10 else 110)), np.uint8)
            lib.ggml_quantize_chunk(tid, rows.ctypes.data, want.ctypes.data, 0, rows.shape[0], rows.shape[1],
                                    None if w is None else w.ctypes.data, None)
            got = engine.quantize(rows, name, w, flavour="ik")
            assert mismatched_rows(got, want) == [], (name, w is None)


# --- the CLI end to end: ik_llama.cpp's llama-quantize --pure on the tiny fixture model ---------

QUANTIZE_DATA = Path(__file__).parent / "data" / "quantize"
# sha256 of `llama-quantize --pure [--imatrix tiny-256.imatrix.dat] tiny-256.gguf OUT TYPE 1` from
# ik_llama.cpp 8337e4cd built with -ffp-contract=off, run in tests/data/quantize (the imatrix file
# name is stored in the output)
IK_PURE_SHA256 = {
    ("Q2_K", False): "cac59fb10c2a52058e3a364f9e5a02b88e40e021e2fb8a053b7a2744feabd673",
    ("Q2_K", True): "c9ef489acee6fa5aa6ab2678a812ccef25883507520518cc321a6e26a57e599d",
    ("Q3_K", False): "b3adb2a414a3cf1155fd4f785c45c2f0ed9f2df441dfd515bb2d81e366c8928c",
    ("Q3_K", True): "e3072b86863f8f173cf9399d6a85db845b4dfe942bb377d86dfc84b602422be3",
}


@pytest.mark.parametrize(("qtype", "with_imatrix"), sorted(IK_PURE_SHA256))
def test_cli_pure_matches_ik_llama_quantize(qtype: str, with_imatrix: bool, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "tiny-256.gguf"
    model.write_bytes(lzma.open(QUANTIZE_DATA / "tiny-256.gguf.xz").read())
    monkeypatch.chdir(QUANTIZE_DATA)
    out = tmp_path / "out.gguf"
    im = ["--imatrix", "tiny-256.imatrix.dat"] if with_imatrix else []
    r = CliRunner().invoke(cli, ["quantize", "--flavour", "ik", "--pure", *im, str(model), str(out), qtype, "1"])
    assert r.exit_code == 0, r.output
    assert hashlib.sha256(out.read_bytes()).hexdigest() == IK_PURE_SHA256[(qtype, with_imatrix)]


def test_scalar_helpers_sanity() -> None:
    """The transliteration's own helpers behave as ggml's (so the comparisons above can fail)."""
    assert [ni(v) for v in (0.5, 1.5, 2.5, -0.5, -1.5)] == [0, 2, 2, 0, -2]
    assert fp16f(fp16(1.0)) == 1.0 and math.isnan(fp16f(fp16(float("nan"))))
