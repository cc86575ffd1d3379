"""ik_llama.cpp's own algorithms for mainline types (`--flavour ik`): Q6_K, and Q4_0 / Q5_0 with an
imatrix (ik's make_qx_quants), IQ4_NL / IQ4_XS (ik's scale search with descent), byte-exact
against ik_llama.cpp's golden vectors; scalar ports of the two searches against the vectorized ones; the row quantizer
quantize-stats measures for IQ4_NL; the engine refusing ik variants that are not ported."""

from __future__ import annotations

import numpy as np
import pytest

from qtool.quants import NotImplementedType, can_quantize, engine, quantizable_types
from qtool.quants.ik.iq4_ik import quantize_row_iq4_nl_ik, search_ik_t
from qtool.quants.ik.search_ik import make_qx_quants_ik_t
from qtool.quants.nonlinear import KV_F32, best_index_t
from qtool.quants.registry import support
from qtool.quants.rowref import quantize_row_iq4_nl_ref, quantize_row_ref

from .vectors import VECTORS, expected, inputs, mismatched_rows

F32 = np.float32
IK_TYPES = ["Q6_K", "IQ4_NL", "IQ4_XS", "Q4_0", "Q5_0", "Q6_0"]
SAME_AS_MAINLINE = {("Q4_0", "noim"), ("Q5_0", "noim")}  # ik's algorithm differs only with an imatrix


@pytest.mark.parametrize("qtype", IK_TYPES)
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_ik_golden(qtype: str, variant: str) -> None:
    x, imatrix, kinds = inputs("ik_llama")
    want = expected(qtype, "ik_llama")[f"q_{variant}"]
    im = imatrix if variant == "im" else None
    got = engine.quantize(x, qtype, im, flavour="ik")
    bad = mismatched_rows(got, want)
    assert bad == [], f"{qtype} {variant}: rows {bad} ({[kinds[i] for i in bad]}) differ"
    if qtype == "Q6_0":  # ik_llama.cpp's own type: no mainline flavour
        assert not can_quantize(qtype, "mainline")
        return
    # the vectors tell the flavours apart: mainline's algorithm gives other bytes in most rows
    n_main = len(mismatched_rows(engine.quantize(x, qtype, im), want))
    assert n_main == 0 if (qtype, variant) in SAME_AS_MAINLINE else n_main > 40


@pytest.mark.parametrize("qtype", IK_TYPES)
def test_ik_dequantize_matches_reference(qtype: str) -> None:
    e = expected(qtype, "ik_llama")
    got = engine.dequantize(e["q_noim"], qtype, 1024)
    assert np.array_equal(got.view(np.uint32), e["deq_noim"].view(np.uint32))


# --- scalar ports --------------------------------------------------------------------------------

def _qx_ik_scalar(x: np.ndarray, nmax: int, qw: np.ndarray | None) -> tuple[F32, list[int]]:
    """ik_llama.cpp make_qx_quants(n, nmax, x, L, 1, qw), line by line in float32."""
    n = len(x)
    amax, mx = F32(0), F32(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = abs(v), v
    if amax < F32(1e-15):
        return F32(0), [0] * n
    w = [qw[i] if qw is not None else x[i] * x[i] for i in range(n)]

    def levels(isc: F32) -> list[int]:
        return [max(-nmax, min(nmax - 1, int(np.rint(isc * x[i])))) for i in range(n)]

    def sums(lv: list[int]) -> tuple[F32, F32]:
        slx, sl2 = F32(0), F32(0)
        for i in range(n):
            slx += w[i] * x[i] * F32(lv[i])
            sl2 += w[i] * F32(lv[i]) * F32(lv[i])
        return slx, sl2

    L = levels(F32(-nmax) / mx)
    sumlx, suml2 = sums(L)
    scale = sumlx / suml2 if suml2 else F32(0)
    best = scale * sumlx
    bsx, bs2 = sumlx, suml2
    for i in range(-9, 10):
        for isc in (-(F32(nmax) + F32(0.1) * F32(i)) / mx, (F32(nmax - 1) + F32(0.1) * F32(i)) / mx):
            lv = levels(isc)
            sx, s2 = sums(lv)
            if s2 > 0 and sx * sx > best * s2:
                L, scale = lv, sx / s2
                best = scale * sx
                bsx, bs2 = sx, s2
    sumlx, suml2 = bsx, bs2
    for _ in range(n * (2 * nmax - 1)):
        agm, gm, bj = F32(0), F32(0), -1
        for j in range(n):
            g = scale * w[j] * (x[j] - scale * F32(L[j]))
            if (g > 0 and L[j] < nmax - 1) or (g < 0 and L[j] > -nmax):
                if abs(g) > agm:
                    agm, gm, bj = abs(g), g, j
        if bj < 0:
            break
        lj = L[bj]
        if gm > 0:
            nx, n2, lj = sumlx + w[bj] * x[bj], suml2 + w[bj] * F32(2 * lj + 1), lj + 1
        else:
            nx, n2, lj = sumlx - w[bj] * x[bj], suml2 - w[bj] * F32(2 * lj - 1), lj - 1
        if n2 > 0 and nx * nx > best * n2:
            sumlx, suml2 = nx, n2
            scale = sumlx / suml2
            best = scale * sumlx
            L[bj] = lj
        else:
            break
    return scale, [v + nmax for v in L]


def _blocks(rng: np.random.Generator, nb: int, n: int) -> np.ndarray:
    x = (rng.standard_normal((nb, n)) * np.exp(rng.uniform(-5, 2, (nb, 1)))).astype(F32)
    x[0] = 0
    x[1, ::3] = 0
    x[2] = np.round(x[2] * 4) / 4  # ties
    return x


@pytest.mark.parametrize("nmax,n,weighted", [(32, 16, False), (32, 16, True), (8, 32, True), (4, 16, True)])
def test_make_qx_quants_ik_vs_scalar(nmax: int, n: int, weighted: bool) -> None:
    with np.errstate(all="ignore"):
        rng = np.random.default_rng(nmax * 100 + n)
        x = _blocks(rng, 60, n)
        qw = rng.uniform(0, 3, x.shape).astype(F32) if weighted else None
        if qw is not None:
            qw[3] = 0
        scale, lt = make_qx_quants_ik_t(np.ascontiguousarray(x.T), None if qw is None else np.ascontiguousarray(qw.T),
                                        nmax, 1)
        for b in range(x.shape[0]):
            s, lv = _qx_ik_scalar(x[b], nmax, None if qw is None else qw[b])
            assert scale[b].view(np.uint32) == F32(s).view(np.uint32), b
            assert lt[:, b].tolist() == lv, b
        one_s, one_l = make_qx_quants_ik_t(np.ascontiguousarray(x[4:5].T), None, nmax, 1)  # one block
        s, lv = _qx_ik_scalar(x[4], nmax, None)
        assert one_s[0] == s and one_l[:, 0].tolist() == lv


def _iq4_ik_scalar(x: np.ndarray, w: np.ndarray, ntry: int) -> tuple[F32, list[int]]:
    """ik_llama.cpp quantize_row_iq4_nl_impl's per-block search, line by line in float32."""
    amax, mx = F32(0), F32(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = abs(v), v
    if amax < F32(1e-15):
        return F32(0), []
    kv = [int(v) for v in KV_F32]

    def idx(a: F32) -> int:
        return int(best_index_t(np.array([a], F32))[0])

    def sums(lv: list[int]) -> tuple[F32, F32]:
        sx, s2 = F32(0), F32(0)
        for j in range(32):
            q = F32(kv[lv[j]])
            sx += w[j] * q * x[j]
            s2 += w[j] * q * q
        return sx, s2

    d = -mx / F32(kv[0]) if ntry > 0 else mx / F32(kv[0])
    idd = F32(1) / d
    L = [idx(idd * x[j]) for j in range(32)]
    sumqx, sumq2 = sums(L)
    d = sumqx / sumq2
    best = d * sumqx
    bsx, bs2 = sumqx, sumq2
    for itry in range(-ntry, ntry + 1):
        for v0 in (kv[0], kv[15]):
            idd = F32(itry + v0) / mx
            lv = [idx(idd * x[j]) for j in range(32)]
            sx, s2 = sums(lv)
            if s2 > 0 and sx * sx > best * s2:
                d = sx / s2
                best = d * sx
                bsx, bs2, L = sx, s2, lv
    sumqx, sumq2 = bsx, bs2
    for _ in range(32 * 32):
        min_step, bj, dr = F32(np.inf), -1, 0
        for j in range(32):
            g = d * w[j] * (x[j] - d * F32(kv[L[j]]))
            if g > 0 and L[j] < 15:
                step = F32(kv[L[j] + 1] - kv[L[j]]) / g
                if step < min_step:
                    min_step, bj, dr = step, j, 1
            elif g < 0 and L[j] > 0:
                step = F32(kv[L[j] - 1] - kv[L[j]]) / g
                if step < min_step:
                    min_step, bj, dr = step, j, -1
        if bj < 0:
            break
        a, b = kv[L[bj] + dr], kv[L[bj]]
        nx = sumqx + w[bj] * x[bj] * F32(a - b)
        n2 = sumq2 + w[bj] * F32(a * a - b * b)
        if n2 > 0 and nx * nx > best * n2:
            sumqx, sumq2 = nx, n2
            d = sumqx / sumq2
            best = d * sumqx
            L[bj] += dr
        else:
            break
    return d, L


@pytest.mark.parametrize("ntry", [7, -1])
@pytest.mark.parametrize("weighted", [False, True])
def test_iq4_search_ik_vs_scalar(ntry: int, weighted: bool) -> None:
    with np.errstate(all="ignore"):
        rng = np.random.default_rng(ntry + 10 * weighted + 20)
        x = _blocks(rng, 40, 32)
        w = (rng.uniform(0, 3, x.shape).astype(F32) if weighted else x * x).astype(F32)
        d, lt = search_ik_t(np.ascontiguousarray(x.T), np.ascontiguousarray(w.T), ntry)
        for b in range(x.shape[0]):
            sd, sl = _iq4_ik_scalar(x[b], w[b], ntry)
            assert d[b].view(np.uint32) == F32(sd).view(np.uint32), b
            if sl:
                assert lt[:, b].tolist() == sl, b


# --- quantize-stats' row quantizer ---------------------------------------------------------------

@pytest.mark.parametrize("flavour", ["mainline", "ik"])
def test_row_ref_iq4_nl(flavour: str) -> None:
    z = np.load(VECTORS / "rowref_iq4_nl.npz")
    want = z[f"q_{flavour}"].reshape(-1, 18)
    got = quantize_row_ref(z["x"], "IQ4_NL", flavour)
    assert got is not None
    got = got.reshape(-1, 18)
    live = want[:, :2].copy().view("<u2")[:, 0] != 0  # d == 0: C packs stale stack bytes as levels
    assert np.array_equal(got[:, :2], want[:, :2])
    assert np.array_equal(got[live], want[live])
    # ntry = -1 is not what llama-quantize writes
    assert not np.array_equal(engine.quantize(z["x"], "IQ4_NL", flavour=flavour).reshape(-1, 18)[live], want[live])
    assert quantize_row_ref(z["x"], "Q4_0", flavour) is None


def test_row_ref_q6_0() -> None:
    x = np.load(VECTORS / "rowref_iq4_nl.npz")["x"]
    want = np.load(VECTORS / "rowref_q6_0.npz")["q_ik"]
    got = quantize_row_ref(x, "Q6_0", "ik")
    assert got is not None and np.array_equal(got, want)
    assert not np.array_equal(engine.quantize(x, "Q6_0", flavour="ik"), want)


def test_row_ref_functions_agree_with_dispatch() -> None:
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(F32)
    assert np.array_equal(quantize_row_ref(x, "IQ4_NL", "ik"), quantize_row_iq4_nl_ik(x))
    assert np.array_equal(quantize_row_ref(x, "IQ4_NL", "mainline"), quantize_row_iq4_nl_ref(x))


# --- what the engine refuses ---------------------------------------------------------------------

def test_unported_ik_variants_are_refused() -> None:
    x, imatrix, _ = inputs("ik_llama")
    # Q4_K is ported for ik in both variants now (ik/kquants_q45_ik.py); NVFP4 (absent from
    # ik_llama.cpp) has no ik kernel
    assert support("Q4_K", "ik") == (True, True)
    assert support("NVFP4", "ik") == (False, False) and support("NVFP4", "mainline") == (True, True)
    assert not can_quantize("NVFP4", "ik", imatrix=False) and not can_quantize("NVFP4", "ik", imatrix=True)
    assert support("IQ1_S", "mainline") == (False, True)
    assert not can_quantize("IQ1_S", "mainline") and can_quantize("IQ1_S", "mainline", imatrix=True)  # both asked for
    assert can_quantize("NVFP4", "mainline", imatrix=True)
    assert all(can_quantize(t, "ik") for t in IK_TYPES)
    assert "Q6_K" in quantizable_types("ik", True) and "NVFP4" not in quantizable_types("ik", True)
    assert "Q4_K" in quantizable_types("ik", True) and "NVFP4" not in quantizable_types("ik", False)
    with pytest.raises(NotImplementedType, match="NVFP4 with an imatrix as ik does"):
        engine.quantize(x[:2], "NVFP4", imatrix, flavour="ik")
    with pytest.raises(NotImplementedType, match="NVFP4 as ik does"):
        engine.quantize(x[:2], "NVFP4", None, flavour="ik")
    engine.quantize(x[:2], "Q4_K", imatrix, flavour="ik")
