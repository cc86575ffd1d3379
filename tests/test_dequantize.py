"""`qtool dequantize`: llama-quantize's F16 / BF16 / F32 of a quantized model, byte for byte, and
`qtool quantize --recover-grid` back to the original quants."""

from __future__ import annotations

import lzma
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qtool.cli import cli
from qtool.gguf_io import GGUFModel, GGUFStreamWriter, OutTensor, kv_str, kv_u32
from qtool.quants import dequantize
from qtool.quants.types import get_type

from .refs import llama_bin, why


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.output


@pytest.fixture(scope="module")
def q4km(tiny256: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("deq") / "q4km.gguf"
    code, out = _run("quantize", "-q", "-t", "1", str(tiny256), str(p), "Q4_K_M")
    assert code == 0, out
    return p


def _tensors(path: Path) -> dict[str, tuple[str, bytes]]:
    with GGUFModel(path) as m:
        return {t.name: (t.qtype.name, bytes(np.asarray(m.tensor_data(t)))) for t in m.tensors}


def test_dequantize_values_types_and_kvs(q4km: Path, tmp_path: Path) -> None:
    out = tmp_path / "f16.gguf"
    code, text = _run("dequantize", "-q", str(q4km), str(out))
    assert code == 0, text
    with GGUFModel(q4km) as a, GGUFModel(out) as b:
        assert b.kv("general.file_type") == 1
        assert b.kv("general.quantization_version") == 2
        src = {t.name: t for t in a.tensors}
        for t in b.tensors:
            s = src[t.name]
            if len(t.shape) < 2 or s.qtype.name in ("F16",):
                assert t.qtype.name == s.qtype.name  # 1-D tensors keep their type, as llama-quantize
                continue
            assert t.qtype.name == "F16"
            want = dequantize(np.asarray(a.tensor_data(s)), s.qtype, s.n_per_row).astype(np.float16)
            got = np.asarray(b.tensor_data(t)).view(np.float16).reshape(want.shape)
            assert np.array_equal(got.view(np.uint16), want.view(np.uint16)), t.name


@pytest.mark.parametrize("to", ["F16", "BF16", "F32"])
def test_same_bytes_as_llama_quantize(q4km: Path, tmp_path: Path, to: str) -> None:
    exe = llama_bin("llama-quantize")
    if exe is None:
        pytest.skip(why("QTOOL_LLAMA_BIN"))
    ref = tmp_path / "ref.gguf"
    subprocess.run([str(exe), "--allow-requantize", str(q4km), str(ref), to], check=True, capture_output=True)
    out = tmp_path / "ours.gguf"
    code, text = _run("dequantize", "-q", "--to", to.lower(), str(q4km), str(out))
    assert code == 0, text
    assert out.read_bytes() == ref.read_bytes()


def test_recover_grid_round_trip(q4km: Path, tmp_path: Path) -> None:
    """Q4_K_M -> F16 -> Q4_K_M --recover-grid gives the original tensors back: byte for byte for every
    type but Q6_K; Q6_K tensors decode to exactly the original values, and their bytes differ only
    where two encodings decode alike and the values cannot choose (sign ties, docs/dequantize.md)."""
    f16 = tmp_path / "f16.gguf"
    assert _run("dequantize", "-q", str(q4km), str(f16))[0] == 0
    back = tmp_path / "back.gguf"
    code, text = _run("quantize", "-q", "--recover-grid", "-t", "1", str(f16), str(back), "Q4_K_M")
    assert code == 0, text
    plain = tmp_path / "plain.gguf"
    assert _run("quantize", "-q", "-t", "1", str(f16), str(plain), "Q4_K_M")[0] == 0
    a, b, p = _tensors(q4km), _tensors(back), _tensors(plain)
    assert a.keys() == b.keys()
    for k, (t, data) in a.items():
        assert b[k][0] == t
        if t != "Q6_K":
            assert b[k][1] == data, k
            continue
        qt = get_type(t)
        n = qt.block_size
        va = dequantize(np.frombuffer(data, np.uint8).reshape(-1, qt.type_size), qt, n)
        vb = dequantize(np.frombuffer(b[k][1], np.uint8).reshape(-1, qt.type_size), qt, n)
        assert np.array_equal(va.astype(np.float16).view(np.uint16), vb.astype(np.float16).view(np.uint16)), k
        blocks_a = np.frombuffer(data, np.uint8).reshape(-1, qt.type_size)
        same = (blocks_a == np.frombuffer(b[k][1], np.uint8).reshape(-1, qt.type_size)).all(axis=1).mean()
        same_plain = (blocks_a == np.frombuffer(p[k][1], np.uint8).reshape(-1, qt.type_size)).all(axis=1).mean()
        assert same >= 0.8 and same >= same_plain, (k, same, same_plain)
    assert sum(a[k] == b[k] for k in a) > sum(a[k] == p[k] for k in a)


def test_refusals(q4km: Path, tmp_path: Path) -> None:
    code, text = _run("dequantize", str(q4km), str(q4km))
    assert code == 1 and "is the input file" in text
    code, text = _run("dequantize", "--to", "q4_0", str(q4km), str(tmp_path / "x.gguf"))
    assert code == 2 and "--to" in text
    assert not (tmp_path / "x.gguf").exists()


def test_undequantizable_type_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "q81.gguf"
    qt = get_type("Q8_1")
    kvs = [kv_str("general.architecture", "llama"), kv_u32("llama.block_count", 1)]
    with GGUFStreamWriter(src, kvs, [OutTensor("blk.0.attn_q.weight", (64, 2), qt)]) as w:
        w.write_tensor_chunk(np.zeros(2 * qt.row_bytes(64), dtype=np.uint8))
    out = tmp_path / "out.gguf"
    code, text = _run("dequantize", str(src), str(out))
    assert code == 1 and "cannot dequantize" in text and "q8_1" in text, text
    assert not out.exists()


def test_entry_point_help() -> None:
    r = subprocess.run([sys.executable, "-m", "qtool", "dequantize", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--to" in r.stdout


def test_grid_note_in_dry_run_and_stats(tiny256: Path, tmp_path: Path) -> None:
    """`quantize --dry-run` and `stats` say when the float model is a dequantized quant; a real F16
    model gets no note."""
    from qtool.dequantize import detect_model_grid, grid_note

    q41 = tmp_path / "q41.gguf"
    assert _run("quantize", "-q", "--pure", "-t", "1", str(tiny256), str(q41), "Q4_1")[0] == 0
    f16 = tmp_path / "f16.gguf"
    assert _run("dequantize", "-q", str(q41), str(f16))[0] == 0
    found = detect_model_grid(f16)
    assert found and {t for _, t in found} == {"Q4_1"}
    assert grid_note(tiny256) is None
    r = CliRunner().invoke(cli, ["quantize", "--dry-run", str(f16), "Q4_K_M"])
    assert r.exit_code == 0 and "dequantized quant" in r.output and "q4_1's grid" in r.output
    r = CliRunner().invoke(cli, ["stats", str(f16), "-t", "q4_0", "--include", "blk.0.attn_q"])
    assert r.exit_code == 0 and "dequantized quant" in r.output
    r = CliRunner().invoke(cli, ["quantize", "--dry-run", str(tiny256), "Q4_K_M"])
    assert r.exit_code == 0 and "dequantized quant" not in r.output


def test_combine_from_several_quants_cli(tiny256: Path, q4km: Path, tmp_path: Path) -> None:
    """`dequantize --from A --from B OUT`: the combined estimate is F16, closer to the model than the
    better single dequant; sources of another model are refused with nothing written."""
    q5 = tmp_path / "q5km.gguf"
    assert _run("quantize", "-q", "-t", "1", str(tiny256), str(q5), "Q5_K_M")[0] == 0
    out = tmp_path / "comb.gguf"
    code, text = _run("dequantize", "--json", "--from", str(q5), "--from", str(q4km), str(out))
    assert code == 0, text
    with GGUFModel(tiny256) as m0, GGUFModel(out) as mc, GGUFModel(q5) as m5:
        t = next(t for t in m0.tensors if t.name == "blk.0.attn_q.weight")  # Q5_K and Q4_K
        truth = dequantize(np.asarray(m0.tensor_data(t)).reshape(t.shape[1], -1), t.qtype, t.shape[0])
        tc = next(x for x in mc.tensors if x.name == t.name)
        assert tc.qtype.name == "F16"
        comb = dequantize(np.asarray(mc.tensor_data(tc)).reshape(t.shape[1], -1), "F16", t.shape[0])
        t5 = next(x for x in m5.tensors if x.name == t.name)
        one = dequantize(np.asarray(m5.tensor_data(t5)).reshape(t.shape[1], -1), t5.qtype, t.shape[0])
        assert t5.qtype.name == "Q5_K"
        assert np.sqrt(np.mean((comb - truth) ** 2)) < np.sqrt(np.mean((one - truth) ** 2))
    code, text = _run("dequantize", "--from", str(q5), str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf"))
    assert code == 2 and "only OUT.gguf" in text
    other = tmp_path / "other.gguf"  # another model: rows of 320
    src = tmp_path / "t320.gguf"
    src.write_bytes(lzma.open(Path(__file__).parent / "data" / "quantize" / "tiny-320.gguf.xz").read())
    assert _run("quantize", "-q", "-t", "1", str(src), str(other), "Q8_0")[0] == 0
    code, text = _run("dequantize", "--from", str(q5), "--from", str(other), str(tmp_path / "c.gguf"))
    assert code == 1 and "not a quant of the same model" in text, text
    assert not (tmp_path / "c.gguf").exists()


# --- the fast path: qtool.quants.to_float (dequantize straight to F16 / BF16 / F32 bytes) --------

def _f16_edge_values() -> np.ndarray:
    """float32 values around every fp16: each fp16 (as float32), the ties halfway to its neighbour
    and one float32 ulp either side of them, tiny and huge values, NaNs with payloads, -0."""
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    f = h[np.isfinite(h)].astype(np.float32)
    with np.errstate(over="ignore"):  # 65504's neighbour is inf (the tie then inf too)
        up = np.nextafter(f.astype(np.float16), np.float16(np.inf)).astype(np.float32)
        tie = ((f.astype(np.float64) + up.astype(np.float64)) / 2).astype(np.float32)
    near = [tie, np.nextafter(tie, np.float32(np.inf)), np.nextafter(tie, np.float32(-np.inf))]
    bits = np.array([0x7FC00000, 0xFFC00001, 0x7F800001, 0xFF812345, 0x7F800000, 0xFF800000, 0x80000000,
                     0x00000001, 0x80400000, 0x33000000, 0x33000001, 0xB3000001, 0x387FFFFF, 0x38800000,
                     0x477FEFFF, 0x477FF000, 0xC77FF000, 0x47800000, 0x4F000000], dtype=np.uint32)
    return np.concatenate([f, *near, bits.view(np.float32)]).astype(np.float32)


def test_fast_fp16_cast_is_ggml_rounding() -> None:
    """fp32_to_fp16_bits == the exact cast (round to nearest even, NaN -> 0x7E00 | sign) on every
    fp16 neighbourhood, NaNs, infs, subnormals; also where a chunk holds a few tiny values among
    normal ones (fixed one by one) or no special value at all (the fast path alone)."""
    from qtool.quants.rounding import fp16_bits_ggml
    from qtool.quants.to_float import CHUNK, fp32_to_fp16_bits

    x = _f16_edge_values()
    assert np.array_equal(fp32_to_fp16_bits(x), fp16_bits_ggml(x))
    assert fp16_bits_ggml(np.array([np.float32("nan")]))[0] == 0x7E00  # not numpy's payload-keeping cast
    rng = np.random.default_rng(5)
    y = (rng.standard_normal(3 * CHUNK + 77) * 0.05).astype(np.float32)
    y[rng.integers(0, y.size, 40)] = 0
    normal = np.where(np.abs(y) < 2**-14, np.float32(0), y)
    ties = (np.arange(4096, dtype=np.float32) + np.float32(0.5)) * np.float32(2**-11) + np.float32(1)
    for v in (normal, y, np.concatenate([ties, -ties]), np.where(np.abs(y) < 1e-2, y * np.float32(1e-3), y)):
        got = fp32_to_fp16_bits(v.reshape(-1, 1))
        assert got.shape == (v.size, 1)
        assert np.array_equal(got.reshape(-1), fp16_bits_ggml(v))


@pytest.mark.parametrize("qtype", ["Q8_0", "Q5_0", "Q4_0", "Q4_1", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q3_K",
                                   "Q2_K", "IQ4_NL", "F16", "BF16", "F32"])
@pytest.mark.parametrize("to", ["F16", "BF16", "F32"])
def test_dequantize_to_is_dequantize_then_cast(qtype: str, to: str) -> None:
    """dequantize_to(bytes) == quantize(dequantize(bytes), to), over more than one chunk of rows:
    blocks of quantized weights (the fast paths), a few of them random bytes (any scale: zero,
    negative, subnormal, inf and NaN fp16 scales; those chunks take the exact path)."""
    from qtool.quants import quantize
    from qtool.quants.to_float import CHUNK, dequantize_to

    qt = get_type(qtype)
    n_per_row = 512
    nrows = 2 * CHUNK // n_per_row + 3
    rng = np.random.default_rng(sum(map(ord, qtype)))
    x = (rng.standard_normal((nrows, n_per_row)) * 0.02).astype(np.float32)
    x[rng.random(x.shape) < 0.01] = 0
    x[-1] *= np.float32(1e-5)  # a row of tiny values: subnormal fp16 results
    raw = np.ascontiguousarray(quantize(x, qt))
    blk = raw.reshape(-1, qt.type_size) if qt.block_size > 1 else raw.reshape(-1, 2 * qt.type_size)
    bad = rng.permutation(blk.shape[0] // 3)[:16]  # in the first third: the other chunks stay clean
    blk[bad] = rng.integers(0, 256, blk[bad].shape, dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN / inf scales
        want = quantize(dequantize(raw, qt, n_per_row), to)
        got = dequantize_to(raw, qt, n_per_row, to)
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert np.array_equal(got, want)


@pytest.mark.parametrize("ftype", ["Q8_0", "Q5_0", "Q4_0"])
def test_table_types_same_bytes_as_llama_quantize(tiny256: Path, tmp_path: Path, ftype: str) -> None:
    """The q * d types (F16 through a table per scale exponent) against llama-quantize's F16."""
    exe = llama_bin("llama-quantize")
    if exe is None:
        pytest.skip(why("QTOOL_LLAMA_BIN"))
    q = tmp_path / "q.gguf"
    assert _run("quantize", "-q", "--pure", "-t", "1", str(tiny256), str(q), ftype)[0] == 0
    ref = tmp_path / "ref.gguf"
    subprocess.run([str(exe), "--allow-requantize", str(q), str(ref), "F16"], check=True, capture_output=True)
    for t in ("1", "2"):
        out = tmp_path / f"ours{t}.gguf"
        code, text = _run("dequantize", "-q", "-t", t, str(q), str(out))
        assert code == 0, text
        assert out.read_bytes() == ref.read_bytes()
