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
