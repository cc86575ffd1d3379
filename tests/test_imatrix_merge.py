"""Merge semantics (llama-imatrix --in-file A --in-file B) and llama-quantize's weights.

Hand-computed expectations come from the reference files read independently (gguf-py's
GGUFReader for GGUF, struct for .dat), not from qtool's reader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qtool.cli import cli
from qtool.imatrix import (
    ImatrixData,
    ImatrixEntry,
    ImatrixError,
    combine,
    decode_gguf,
    default_chunk_size,
    entry_weights,
    prepare_imatrix,
    quantize_kv,
    read_imatrix,
    remap_imatrix,
    tensor_weights,
)
from qtool.imatrix.weights import filter_names
from tests.imatrix_helpers import Warnings, imatrix_gguf, parse_dat, read_gguf_py, ref, ref_bytes
from tests.refs import ref_out


def gguf_data(entries: dict[str, tuple[list | np.ndarray, list]], datasets: tuple[str, ...] = ("d",),
              chunk_size: int = 512, source: str | None = None) -> ImatrixData:
    d = ImatrixData({n: ImatrixEntry(np.asarray(s, np.float32), c) for n, (s, c) in entries.items()},
                    list(datasets), 1, chunk_size)
    d.source = source
    return d


def dat_data(entries: dict[str, tuple[list | np.ndarray, int]], source: str | None = None) -> ImatrixData:
    ents = {n: ImatrixEntry(np.asarray(v, np.float32).reshape(1, -1), [c]) for n, (v, c) in entries.items()}
    return ImatrixData(ents, ["x"], 1, 0, legacy=True, source=source)


# ---------------------------------------------------------------- merge

def test_merge_gguf_adds_sums_and_counts() -> None:
    """smol + smol-b: float32 element-wise sums, counts added (checked against gguf-py's reading)."""
    a, _ = read_gguf_py(ref("smol-imatrix.gguf"))
    b, _ = read_gguf_py(ref("smol-imatrix-b.gguf"))
    m = combine([read_imatrix(ref("smol-imatrix.gguf")), read_imatrix(ref("smol-imatrix-b.gguf"))])
    for n, e in m.entries.items():
        assert np.array_equal(e.sums, (np.float32(0) + a[n][0]) + b[n][0])
        assert e.counts.tolist() == [int(a[n][1][0] + b[n][1][0])] == [20480 + 6144]
    assert m.datasets == ["pydoc.txt", "pydoc-b.txt"] and m.chunk_count == 26624 // 512 == 52


def test_merge_broadcasts_one_count_to_experts() -> None:
    """moe-b (one count 300 for a 4-expert entry) then moe-a: 300 goes to every expert, then a's counts add."""
    b, _ = read_gguf_py(ref("moe-b.gguf"))
    a, _ = read_gguf_py(ref("moe-a.gguf"))
    m = combine([read_imatrix(ref("moe-b.gguf")), read_imatrix(ref("moe-a.gguf"))])
    e = m.entries["blk.0.ffn_down_exps.weight"]
    assert e.counts.tolist() == [400, 300, 337, 2348]
    assert np.array_equal(e.sums, (b["blk.0.ffn_down_exps.weight"][0].reshape(4, 64)
                                   + a["blk.0.ffn_down_exps.weight"][0]))
    assert m.entries["blk.1.ffn_down_exps.weight"].counts.tolist() == [532, 600, 5, 8]
    assert m.entries["blk.2.attn_q.weight"].counts.tolist() == [11]  # only in a (10.5 rounded)
    assert m.datasets == ["c.txt", "a.txt", "b.txt"] and m.chunk_count == 2348 // 512


def test_merge_expert_count_mismatch_names_the_tensor() -> None:
    """moe-a then moe-b: 4 expert counts, then 1 (llama-imatrix fails too)."""
    with pytest.raises(ImatrixError, match=r"moe-b\.gguf: mismatched counts size \(experts\) for "
                                           r"blk\.0\.ffn_down_exps\.weight: 1 != 4"):
        combine([read_imatrix(ref("moe-a.gguf")), read_imatrix(ref("moe-b.gguf"))])


def test_merge_shape_mismatch_names_the_tensor() -> None:
    a = gguf_data({"blk.0.attn_q.weight": (np.ones((1, 64)), [512])}, source="a.gguf")
    b = gguf_data({"blk.0.attn_q.weight": (np.ones((1, 32)), [512])}, source="b.gguf")
    with pytest.raises(ImatrixError, match=r"b\.gguf: mismatched sums size for blk\.0\.attn_q\.weight: 32 != 64"):
        combine([a, b])
    d = dat_data({"blk.0.attn_q.weight": (np.ones(48), 2)}, source="c.dat")
    with pytest.raises(ImatrixError, match=r"c\.dat: mismatched sums size for blk\.0\.attn_q\.weight: 48 != 64"):
        combine([a, d])
    e = gguf_data({"x.weight": (np.ones((2, 8)), [1, 1])}, source="e.gguf")
    f = gguf_data({"x.weight": (np.ones((3, 8)), [1, 1, 1])}, source="f.gguf")
    with pytest.raises(ImatrixError, match=r"f\.gguf: mismatched sums size for x\.weight: 24 != 16"):
        combine([e, f])


def test_merge_legacy_weighted_by_chunk_size() -> None:
    """odd.dat then moe-a: legacy values * 512 added to the sums, ncall * 512 to every count."""
    odd, _, _ = parse_dat(ref_bytes("odd.dat"))
    odd_d = {n.decode(): (ncall, v) for n, ncall, v in odd}
    a, _ = read_gguf_py(ref("moe-a.gguf"))
    m = combine([read_imatrix(ref("odd.dat")), read_imatrix(ref("moe-a.gguf"))])
    ncall, v = odd_d["blk.0.attn_q.weight"]
    e = m.entries["blk.0.attn_q.weight"]
    assert e.counts.tolist() == [ncall * 512 + 1500] == [4060]
    assert np.array_equal(e.sums.reshape(-1), (np.float32(0) + v * np.float32(512)) + a["blk.0.attn_q.weight"][0][0])
    # the legacy entry's 256 values become 4 experts when moe-a brings 4 counts
    e = m.entries["blk.0.ffn_down_exps.weight"]
    assert e.counts.tolist() == [1536 + 100, 1536, 1536 + 37, 1536 + 2048]
    assert m.entries["blk.3.attn_k.weight"].counts.tolist() == [0]  # ncall 0
    assert m.datasets == ["odd.txt", "a.txt", "b.txt"] and m.chunk_count == 4284 // 512


@pytest.mark.parametrize("chunk", [512, 1000, 7])
def test_merge_legacy_pair(chunk: int) -> None:
    """Two .dat inputs: values * chunk size summed in float32, counts (ncall_a + ncall_b) * chunk size."""
    va, vb = np.float32([1.5, 2.25, 3.0]), np.float32([0.1, 0.2, 0.3])
    m = combine([dat_data({"t": (va, 3)}), dat_data({"t": (vb, 5)})], chunk)
    cs = np.float32(chunk)
    assert np.array_equal(m.entries["t"].sums.reshape(-1), (np.float32(0) + va * cs) + vb * cs)
    assert m.entries["t"].counts.tolist() == [8 * chunk] and m.chunk_count == 8
    assert not m.legacy and m.chunk_size == chunk and m.datasets == ["x", "x"]


def test_merge_mixed_formats_reference() -> None:
    m = combine([read_imatrix(ref("smol-imatrix-conv.dat")), read_imatrix(ref("smol-imatrix-b.gguf"))])
    from qtool.imatrix import encode_gguf

    assert encode_gguf(m) == ref_bytes("smol-imatrix-merged-mixed.gguf")
    assert all(e.counts.tolist() == [40 * 512 + 6144] for e in m.entries.values())


def test_merge_overflow_names_the_tensor() -> None:
    big = gguf_data({"t.weight": (np.full((1, 4), 3e38), [1])}, source="big.gguf")
    with pytest.raises(ImatrixError, match=r"big\.gguf: t\.weight: the sums overflow float32"):
        combine([big, big])


def test_combine_rejects_bad_chunk_size() -> None:
    for cs in (0, -1, 2**31):
        with pytest.raises(ImatrixError, match="chunk size"):
            combine([dat_data({"t": ([1.0], 1)})], cs)


def test_default_chunk_size() -> None:
    assert default_chunk_size([dat_data({"t": ([1.0], 1)})]) == (512, [])
    a = gguf_data({"t": ([[1.0]], [1])}, chunk_size=256, source="a.gguf")
    b = gguf_data({"t": ([[1.0]], [1])}, chunk_size=1000, source="b.gguf")
    assert default_chunk_size([dat_data({"t": ([1.0], 1)}), a, b]) == (
        256, ["b.gguf has chunk size 1000, using 256 (first input's)"])


def test_cli_merge_warns_on_chunk_size_disagreement(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(imatrix_gguf({"t.weight": (np.ones((1, 8)), [256])}, chunk_size=256))
    (tmp_path / "b.gguf").write_bytes(imatrix_gguf({"t.weight": (np.ones((1, 8)), [512])}, chunk_size=512))
    r = CliRunner().invoke(cli, ["imatrix", "merge", str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf"),
                                 "-o", str(tmp_path / "m.gguf")])
    assert r.exit_code == 0, r.output
    assert "b.gguf has chunk size 512, using 256" in r.stderr
    m = read_imatrix(tmp_path / "m.gguf")
    assert m.chunk_size == 256 and m.entries["t.weight"].counts.tolist() == [768] and m.chunk_count == 3


def test_cli_merge_mismatch_fails_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    r = CliRunner().invoke(cli, ["imatrix", "merge", str(ref("moe-a.gguf")), str(ref("moe-b.gguf")), "-o", str(out)])
    assert r.exit_code == 1
    assert "blk.0.ffn_down_exps.weight" in r.output and "moe-b.gguf" in r.output and "Traceback" not in r.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- weights (tools/quantize/quantize.cpp load_imatrix)

def test_weights_gguf_hand_computed() -> None:
    """sums / (float) lround(count) per expert; experts with count 0 get weight 1."""
    raw, _ = read_gguf_py(ref("moe-a.gguf"))
    d = read_imatrix(ref("moe-a.gguf"))
    s, c = raw["blk.0.ffn_down_exps.weight"]
    assert c.tolist() == [100, 0, 37, 2048]
    w = entry_weights(d, "blk.0.ffn_down_exps.weight")
    assert w.dtype == np.float32 and w.shape == (4, 64)
    assert np.array_equal(w[0], s[0] / np.float32(100)) and np.array_equal(w[2], s[2] / np.float32(37))
    assert np.array_equal(w[3], s[3] / np.float32(2048)) and np.all(w[1] == 1)
    assert np.all(entry_weights(d, "blk.0.ffn_up_exps.weight") == 1)  # no expert saw a token
    s, c = raw["blk.2.attn_q.weight"]
    assert c.tolist() == [10.5] and np.array_equal(entry_weights(d, "blk.2.attn_q.weight")[0], s[0] / np.float32(11))
    s, c = raw["blk.2.attn_k.weight"]
    assert c.tolist() == [2.5] and np.array_equal(entry_weights(d, "blk.2.attn_k.weight")[0], s[0] / np.float32(3))
    assert np.array_equal(d.weights_for("blk.0.ffn_down_exps.weight"), w) and d.weights_for("nope") is None


def test_weights_legacy_hand_computed() -> None:
    """values / (float) ncall; values unchanged where ncall is 0."""
    d = read_imatrix(ref("odd.dat"))
    for name, ncall, v in parse_dat(ref_bytes("odd.dat"))[0]:
        w = entry_weights(d, name.decode())
        assert w.shape == (1, v.size)
        assert np.array_equal(w[0], v / np.float32(ncall) if ncall else v), name


def test_weights_same_from_gguf_and_its_dat_conversion() -> None:
    """Quantizing with smol-imatrix-conv.dat or smol-imatrix.gguf: identical weights (every column)."""
    g, d = read_imatrix(ref("smol-imatrix.gguf")), read_imatrix(ref("smol-imatrix-conv.dat"))
    assert g.entries.keys() == d.entries.keys() and len(g.entries) == 210
    for n in g.entries:
        assert np.array_equal(entry_weights(g, n), entry_weights(d, n))
    # moe-a: 1 ulp at most where an expert saw tokens; experts without tokens stay at 1
    a, c = read_imatrix(ref("moe-a.gguf")), read_imatrix(ref("moe-a-conv.dat"))
    for n in c.entries:
        wa, wc = entry_weights(a, n), entry_weights(c, n).reshape(entry_weights(a, n).shape)
        u = np.abs(wa.view(np.int32).astype(np.int64) - wc.view(np.int32))
        assert u.max() <= 1 and np.array_equal(wa[a.entries[n].counts == 0], wc[a.entries[n].counts == 0])


def test_tensor_weights_experts_sizes_and_token_embd() -> None:
    d = read_imatrix(ref("moe-a.gguf"))
    w = tensor_weights(d, "blk.1.ffn_gate.weight", 2, 32)
    assert w.shape == (2, 32) and np.array_equal(w, entry_weights(d, "blk.1.ffn_gate.weight"))
    assert tensor_weights(d, "blk.9.ffn_gate.weight", 1, 32) is None
    with pytest.raises(ImatrixError, match=r"imatrix size 64 is different from tensor size 32 for blk\.1\.ffn_gate"):
        tensor_weights(d, "blk.1.ffn_gate.weight", 1, 32)
    e = ImatrixData({"token_embd.weight": ImatrixEntry(np.ones((1, 8)), [1])}, ["x"], 1, 512)
    w = Warnings()
    assert tensor_weights(e, "token_embd.weight", 1, 16, warn=w) is None
    assert w == ["imatrix size 8 is different from tensor size 16 for token_embd.weight"]
    assert tensor_weights(e, "token_embd.weight", 2).shape == (2, 4)  # no size given: split by experts


def test_remap_imatrix_prune_layers() -> None:
    """--prune-layers 1: new layer 1 is original layer 2; names look up the original layer's entry."""
    mapped = {0: "0", 1: "", 2: "1", 3: "2"}
    assert remap_imatrix("blk.1.attn_q.weight", mapped) == "blk.2.attn_q.weight"
    assert remap_imatrix("blk.2.ffn_down_exps.weight", mapped) == "blk.3.ffn_down_exps.weight"
    assert remap_imatrix("output.weight", mapped) == "output.weight"
    assert remap_imatrix("blk.1.attn_q.weight", {}) == "blk.1.attn_q.weight"
    with pytest.raises(ImatrixError, match=r"imatrix mapping error for blk\.7\.attn_q\.weight"):
        remap_imatrix("blk.7.attn_q.weight", mapped)
    d = read_imatrix(ref("moe-a.gguf"))
    w = tensor_weights(d, "blk.1.attn_q.weight", 1, 64, mapped={0: "0", 1: "", 2: "1"})
    assert np.array_equal(w, entry_weights(d, "blk.2.attn_q.weight"))


def test_include_exclude_weights() -> None:
    names = ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.1.attn_q.weight", "output.weight"]
    assert filter_names(names, exclude=["attn_q"]) == ["blk.0.ffn_down.weight", "output.weight"]
    assert filter_names(names, include=["blk.1.", "output"]) == ["blk.1.attn_q.weight", "output.weight"]
    assert filter_names(names, include=["nothing"]) == []
    with pytest.raises(ImatrixError, match="cannot be used together"):
        filter_names(names, ["a"], ["b"])
    d = read_imatrix(ref("moe-a.gguf"))
    qi = prepare_imatrix(d, "moe-a.gguf", exclude=["exps"])
    assert sorted(qi.weights) == sorted(n for n in d.entries if "exps" not in n) and qi.has_imatrix
    assert np.array_equal(qi.weights["blk.1.ffn_gate.weight"], entry_weights(d, "blk.1.ffn_gate.weight").reshape(-1))
    assert np.array_equal(qi.lookup("blk.1.ffn_gate.weight", 32, 2), entry_weights(d, "blk.1.ffn_gate.weight"))
    assert qi.lookup("blk.0.ffn_down_exps.weight", 64, 4) is None  # excluded
    qi = prepare_imatrix(d, "moe-a.gguf", include=["nothing"])
    assert not qi.has_imatrix and qi.kv() == []


def test_quantize_kv_keys() -> None:
    d = read_imatrix(ref("moe-a.gguf"))
    assert prepare_imatrix(d, "im/moe-a.gguf").kv() == [
        ("quantize.imatrix.file", "str", "im/moe-a.gguf"), ("quantize.imatrix.dataset", "str", "a.txt"),
        ("quantize.imatrix.entries_count", "u32", 9), ("quantize.imatrix.chunks_count", "u32", 5)]
    odd = read_imatrix(ref("odd.dat"))  # legacy: the trailer's chunk number
    assert prepare_imatrix(odd, "odd.dat").kv()[-1] == ("quantize.imatrix.chunks_count", "u32", 9)
    long = "d/" * 100 + "x.gguf"
    kv = dict((k, v) for k, _, v in quantize_kv(long, [], 3, 0))
    assert kv == {"quantize.imatrix.file": long[:127], "quantize.imatrix.entries_count": 3}  # no dataset, no chunks
    assert quantize_kv("x", ["d"], 0, 5) == []


def test_prepare_imatrix_requires_gguf_metadata_and_finite_weights() -> None:
    raw = imatrix_gguf({"t.weight": (np.ones((1, 8)), [4])})
    d = decode_gguf(raw, "x.gguf")
    d.has_metadata = False
    with pytest.raises(ImatrixError, match=r"x\.gguf: missing imatrix metadata"):
        prepare_imatrix(d, "x.gguf")
    legacy = ImatrixData({"t.weight": ImatrixEntry(np.ones((1, 8)), [2])}, [], 0, 0, legacy=True,
                         has_metadata=False)
    assert prepare_imatrix(legacy, "y.dat").kv() == [("quantize.imatrix.file", "str", "y.dat"),
                                                     ("quantize.imatrix.entries_count", "u32", 1)]
    bad = ImatrixData({"t.weight": ImatrixEntry(np.float32([[1, np.inf]]), [1])}, ["x"], 1, 512)
    with pytest.raises(ImatrixError, match=r"z\.gguf: imatrix contains a non-finite value for t\.weight"):
        prepare_imatrix(bad, "z.gguf")


REF_MODEL_IMATRIX = ref_out("smollm2.imatrix.gguf") or Path("/nonexistent/QTOOL_REF_OUT")
REF_QUANTIZED = ref_out("smollm2-Q4_0-im.gguf") or Path("/nonexistent/QTOOL_REF_OUT")


@pytest.mark.reference
@pytest.mark.skipif(not (REF_MODEL_IMATRIX.exists() and REF_QUANTIZED.exists()), reason="set QTOOL_REF_OUT")
def test_quantize_kv_match_llama_quantize_output() -> None:
    """The quantize.imatrix.* keys llama-quantize wrote into a model quantized with --imatrix."""
    from qtool.gguf_io import GGUFModel

    with GGUFModel(REF_QUANTIZED) as m:
        want = [(kv.key, {4: "u32", 8: "str"}[kv.vtype], kv.value) for kv in m.kvs
                if kv.key.startswith("quantize.imatrix.")]
    qi = prepare_imatrix(read_imatrix(REF_MODEL_IMATRIX), str(REF_MODEL_IMATRIX))
    assert qi.kv() == want and len(want) == 4


def test_stats_imatrix_weights_use_the_package(tmp_path: Path) -> None:
    """`qtool stats --imatrix` reads through qtool.imatrix: same weights, same errors."""
    from qtool.gguf_io import TensorInfo
    from qtool.stats import imatrix_weights as iw

    assert iw.ImatrixError is ImatrixError
    a = read_imatrix(ref("moe-a.gguf"))
    table = iw.read_gguf_imatrix(ref("moe-a.gguf"))
    assert table.keys() == a.entries.keys()
    assert all(np.array_equal(table[n], entry_weights(a, n)) for n in table)
    odd = iw.read_dat_imatrix(ref("odd.dat"))
    assert odd["blk.0.attn_q.weight"].shape == (64,)
    with pytest.raises(ImatrixError, match="legacy"):
        iw.read_gguf_imatrix(ref("odd.dat"))
    with pytest.raises(ImatrixError, match="GGUF"):
        iw.read_dat_imatrix(ref("moe-a.gguf"))
    fn = iw.load_weights(ref("moe-a.gguf"))
    w = fn(TensorInfo("blk.0.ffn_down_exps.weight", (64, 32, 4), 0, 0, 0))
    assert w.shape == (4, 64) and np.array_equal(w, entry_weights(a, "blk.0.ffn_down_exps.weight"))
    assert fn(TensorInfo("token_embd.weight", (64, 10), 0, 0, 0)) is None
    with pytest.raises(ImatrixError, match=r"blk\.2\.attn_k\.weight has 16 values, the tensor's rows have 64"):
        fn(TensorInfo("blk.2.attn_k.weight", (64, 10), 0, 0, 0))
    (tmp_path / "odd.dat").write_bytes(ref_bytes("odd.dat")[:700])
    with pytest.raises(ImatrixError, match=r"odd\.dat: truncated or corrupt: .* at offset"):
        iw.load_weights(tmp_path / "odd.dat")
