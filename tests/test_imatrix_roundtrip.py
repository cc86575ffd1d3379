"""Round trips between the two formats: where they are byte-identical, and what they lose elsewhere.

dat -> gguf -> dat (llama-imatrix's arithmetic: sums = v * chunk_size, counts = ncall * chunk_size;
back: v' = (sum / count) * ceil(count / chunk_size), float32):
- byte-identical for every .dat file llama-imatrix writes (values (s / c) * n) when the chunk size
  is a power of two (512, 256): the reference files, and 25M sampled values below;
- arbitrary float32 values (a .dat file not written by llama-imatrix): at most 1 ulp off with a
  power-of-two chunk size (about 9% of values change), at most 2 ulp otherwise (about 21-26%);
- entries with ncall 0 are dropped, entries are sorted, the trailer's chunk number becomes
  max(ncall).

gguf -> dat -> gguf: per-column means (llama-quantize's weights) within 1 ulp (identical for
smol), sums within 1 ulp when the counts are whole chunks, but per-expert counts become one count
per entry (ceil(max count / chunk size) chunks), experts without tokens get weight 1 and full
counts, entries without any count are dropped, only the last dataset name is kept. `qtool imatrix
convert` says so in warnings.
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
    combine,
    decode_dat,
    decode_gguf,
    encode_dat,
    encode_gguf,
    entry_weights,
    legacy_losses,
    read_imatrix,
    write_imatrix,
)
from tests.imatrix_helpers import Warnings, quiet, ref, ref_bytes


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in units in the last place of float32 (same-sign finite values)."""
    a, b = np.asarray(a, np.float32).reshape(-1), np.asarray(b, np.float32).reshape(-1)
    assert np.all((a >= 0) == (b >= 0))
    return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))


def dat_gguf_dat(raw: bytes, chunk_size: int = 512) -> bytes:
    g = encode_gguf(combine([decode_dat(raw)], chunk_size), quiet)
    return encode_dat(combine([decode_gguf(g)], chunk_size), quiet)


def legacy(values: np.ndarray, ncall: int) -> ImatrixData:
    return ImatrixData({"t.weight": ImatrixEntry(values.reshape(1, -1), [ncall])}, ["x"], ncall, 0, legacy=True)


# ---------------------------------------------------------------- dat -> gguf -> dat

@pytest.mark.parametrize(("name", "chunk"), [("smol-imatrix-conv.dat", 512), ("smol-imatrix-b-native.dat", 512),
                                             ("moe-a-conv.dat", 512), ("moe-a-c256.dat", 256),
                                             ("moe-a-c256.dat", 512), ("odd-resave.dat", 512),
                                             ("odd-rt.dat", 512)])
def test_dat_gguf_dat_byte_identical_for_llama_written_files(name: str, chunk: int) -> None:
    assert dat_gguf_dat(ref_bytes(name), chunk) == ref_bytes(name)


@pytest.mark.parametrize("name", ["smol-imatrix-b-native.dat", "moe-a-c256.dat"])
def test_dat_gguf_dat_byte_identical_by_cli(name: str, tmp_path: Path) -> None:
    run = CliRunner()
    r = run.invoke(cli, ["imatrix", "convert", str(ref(name)), str(tmp_path / "x.gguf")])
    assert r.exit_code == 0, r.output
    r = run.invoke(cli, ["imatrix", "convert", str(tmp_path / "x.gguf"), str(tmp_path / "x.dat")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "x.dat").read_bytes() == ref_bytes(name)


def test_dat_gguf_dat_llama_values_exact_power_of_two_chunks() -> None:
    """Values v = fl(m * n) as save_imatrix_legacy writes them survive fl(fl(v * cs / (n * cs)) * n) exactly."""
    rng = np.random.default_rng(7)
    for n in [*range(1, 200), *rng.integers(200, 2**24, 100).tolist()]:
        m = np.exp(rng.uniform(-40, 40, 2000)).astype(np.float32)
        v = m * np.float32(n)
        for cs in (512, 256, 1):
            out = decode_dat(encode_dat(combine([legacy(v, n)], cs), quiet)).entries["t.weight"].sums
            assert np.array_equal(out.reshape(-1), v), (n, cs)


@pytest.mark.parametrize(("chunk", "max_ulp", "share"), [(512, 1, (0.05, 0.15)), (256, 1, (0.05, 0.15)),
                                                          (1000, 2, (0.15, 0.35)), (3, 2, (0.15, 0.35)),
                                                          (768, 2, (0.15, 0.35))])
def test_dat_gguf_dat_arbitrary_values_bounded(chunk: int, max_ulp: int, share: tuple[float, float]) -> None:
    """Arbitrary stored values: measured max |ulp| and the share of values that change."""
    rng = np.random.default_rng(chunk)
    worst, changed, total = 0, 0, 0
    for n in (1, 2, 3, 5, 7, 9, 40, 100, 12345):
        v = (rng.gamma(0.5, 2.0, 20000) * n).astype(np.float32)
        out = decode_dat(encode_dat(combine([legacy(v, n)], chunk), quiet)).entries["t.weight"].sums
        u = ulps(out, v)
        if n in (1, 2) and chunk in (256, 512):
            assert not u.any()  # division and multiplication by a power of two are exact
        worst, changed, total = max(worst, int(u.max())), changed + int(np.count_nonzero(u)), total + u.size
    assert 1 <= worst <= max_ulp
    assert chunk not in (3, 768) or worst == 2  # the bound is reached
    assert share[0] < changed / total < share[1]


def test_dat_gguf_dat_odd_file_losses() -> None:
    """odd.dat (fabricated: arbitrary values, unsorted, an ncall-0 entry, trailer 9): what changes."""
    src = read_imatrix(ref("odd.dat"))
    out = decode_dat(dat_gguf_dat(ref_bytes("odd.dat")))
    assert dat_gguf_dat(ref_bytes("odd.dat")) == ref_bytes("odd-rt.dat")  # and llama-imatrix does the same
    assert list(out.entries) == sorted(n for n in src.entries if n != "blk.3.attn_k.weight")  # ncall 0: dropped
    assert out.chunk_count == 7 and src.chunk_count == 9  # max ncall, not the trailer's number
    assert out.datasets == src.datasets == ["odd.txt"]
    u = np.concatenate([ulps(out.entries[n].sums, src.entries[n].sums) for n in out.entries])
    assert [int(out.entries[n].counts[0]) for n in out.entries] == [int(src.entries[n].counts[0]) for n in out.entries]
    assert u.max() == 1 and np.count_nonzero(u) == 59 and u.size == 432


# ---------------------------------------------------------------- gguf -> dat -> gguf

@pytest.mark.parametrize(("name", "n_changed"), [("smol-imatrix.gguf", 20093), ("smol-imatrix-b.gguf", 19729),
                                                 ("smol-imatrix-merged.gguf", 15228)])
def test_gguf_dat_gguf_smol(name: str, n_changed: int) -> None:
    """Whole-chunk counts, no experts: counts and weights identical, sums within 1 ulp (13% of them)."""
    g = read_imatrix(ref(name))
    dat = encode_dat(combine([g]), quiet)
    assert name != "smol-imatrix.gguf" or dat == ref_bytes("smol-imatrix-conv.dat")
    rt = combine([decode_dat(dat)])
    assert encode_gguf(rt) != ref_bytes(name)
    assert rt.chunk_count == g.chunk_count and rt.chunk_size == g.chunk_size
    assert rt.datasets == g.datasets[-1:]
    changed = 0
    for n, e in g.entries.items():
        r = rt.entries[n]
        assert np.array_equal(r.counts, e.counts)
        assert np.array_equal(entry_weights(rt, n), entry_weights(g, n))
        u = ulps(r.sums, e.sums)
        assert u.max() <= 1
        changed += int(np.count_nonzero(u))
        rel = np.abs(r.sums.astype(np.float64) - e.sums) / np.abs(e.sums)
        assert rel.max() < 1.2e-7
    assert changed == n_changed


def test_gguf_dat_gguf_moe_losses() -> None:
    """Per-expert counts, partial counts, zero-count experts and entries: what the legacy format loses."""
    a = read_imatrix(ref("moe-a.gguf"))
    rt = combine([decode_dat(encode_dat(combine([a]), quiet))])
    assert encode_gguf(rt) == ref_bytes("moe-a-rt.gguf")  # what llama-imatrix gives too
    assert "blk.0.ffn_up_exps.weight" not in rt.entries  # no count at all: dropped
    assert rt.datasets == ["b.txt"] and rt.chunk_count == 4 and a.chunk_count == 5
    e, r = a.entries["blk.0.ffn_down_exps.weight"], rt.entries["blk.0.ffn_down_exps.weight"]
    assert e.counts.tolist() == [100, 0, 37, 2048] and r.counts.tolist() == [2048]  # one count for 4 experts
    assert r.sums.shape == (1, 4 * 64)
    assert rt.entries["blk.0.attn_q.weight"].counts.tolist() == [1536]  # 1500 -> 3 whole chunks
    assert rt.entries["blk.2.attn_q.weight"].counts.tolist() == [512]  # 11 -> 1 chunk
    worst_ulp, worst_rel = 0, 0.0
    for n, e in a.entries.items():
        if n not in rt.entries:
            continue
        w0 = entry_weights(a, n)
        w1 = entry_weights(rt, n).reshape(w0.shape)
        zero = e.counts == 0
        assert np.all(w1[zero] == 1) and np.all(w0[zero] == 1)  # weight 1 kept, but now with a full count
        u = ulps(w1[~zero], w0[~zero])
        worst_ulp = max(worst_ulp, int(u.max()))
        worst_rel = max(worst_rel, float((np.abs(w1[~zero].astype(np.float64) - w0[~zero]) / w0[~zero]).max()))
    assert worst_ulp == 1 and worst_rel < 1e-7


def test_gguf_counts_above_2_24_round_to_float32() -> None:
    """GGUF stores counts as float32 (as llama-imatrix does): exact up to 2^24 tokens, rounded above."""
    sums = np.ones((2, 4), np.float32)
    d = ImatrixData({"t.weight": ImatrixEntry(sums, [2**24, 2**24 + 1])}, ["x"], 1, 512)
    assert decode_gguf(encode_gguf(d)).entries["t.weight"].counts.tolist() == [2**24, 2**24]


# ---------------------------------------------------------------- the warnings of gguf -> dat

def test_legacy_losses_lists_what_is_lost() -> None:
    lines = legacy_losses(combine([read_imatrix(ref("moe-a.gguf"))]))
    text = "\n".join(lines)
    assert "per-expert token counts of 2 entries" in text and "blk.0.ffn_down_exps.weight" in text
    assert "2 experts without tokens" in text and "not whole chunks" in text
    assert "only the last of 2 dataset names" in text and "'b.txt'" in text
    smol = legacy_losses(combine([read_imatrix(ref("smol-imatrix.gguf"))]))
    assert len(smol) == 1 and "float32" in smol[0]  # nothing structural is lost
    assert any("chunk size (256) is not stored" in x for x in legacy_losses(combine([read_imatrix(ref("moe-a.gguf"))],
                                                                                    256)))


def test_write_imatrix_warns_about_per_expert_counts(tmp_path: Path) -> None:
    """The library's write_imatrix says it too, even where llama-imatrix has nothing to say (no zero count)."""
    d = ImatrixData({"blk.0.ffn_up_exps.weight": ImatrixEntry(np.ones((2, 8)), [1024, 512])}, ["x"], 2, 512)
    w = Warnings()
    assert write_imatrix(d, tmp_path / "x.dat", warn=w) == "dat"
    assert len(w) == 2 and w[0].startswith("GGUF -> .dat loses information: ")
    assert "per-expert token counts of 1 entries (e.g. blk.0.ffn_up_exps.weight)" in w[1]
    out = read_imatrix(tmp_path / "x.dat").entries["blk.0.ffn_up_exps.weight"]
    assert out.counts.tolist() == [2] and np.array_equal(entry_weights(read_imatrix(tmp_path / "x.dat"),
                                                                       "blk.0.ffn_up_exps.weight").reshape(2, 8),
                                                         np.float32([[1 / 1024] * 8, [1 / 512] * 8]))
    w = Warnings()
    write_imatrix(read_imatrix(ref("odd.dat")), tmp_path / "y.dat", warn=w)  # legacy stays legacy: nothing lost
    assert w == [] and (tmp_path / "y.dat").read_bytes() == ref_bytes("odd.dat")


def test_cli_gguf_to_dat_warns_about_per_expert_counts(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["imatrix", "convert", str(ref("moe-a.gguf")), str(tmp_path / "a.dat")])
    assert r.exit_code == 0, r.output
    assert "warning: GGUF -> .dat loses information" in r.stderr
    assert "per-expert token counts" in r.stderr and "has no data - skipping" in r.stderr
    assert (tmp_path / "a.dat").read_bytes() == ref_bytes("moe-a-conv.dat")


def test_cli_dat_to_gguf_does_not_warn(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["imatrix", "convert", str(ref("moe-a-conv.dat")), str(tmp_path / "a.gguf")])
    assert r.exit_code == 0, r.output
    assert "warning" not in r.stderr
    assert (tmp_path / "a.gguf").read_bytes() == ref_bytes("moe-a-rt.gguf")
