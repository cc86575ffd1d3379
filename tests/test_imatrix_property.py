"""Property tests for both codecs (hypothesis), a fuzz test of both readers, and (where a local
llama-imatrix build exists) random merges and conversions compared with llama-imatrix itself."""

from __future__ import annotations

import random
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qtool.imatrix import (
    ImatrixData,
    ImatrixEntry,
    ImatrixError,
    combine,
    compute_statistics,
    decode_dat,
    decode_gguf,
    decode_imatrix,
    encode_dat,
    encode_gguf,
    entry_weights,
)
from qtool.imatrix.data import name_bytes
from qtool.imatrix.stats import format_llama
from tests.imatrix_helpers import LLAMA_IMATRIX, Warnings, dat_bytes, imatrix_gguf, parse_llama_log, quiet, ref_bytes

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _name(max_bytes: int) -> st.SearchStrategy[str]:
    """Names as stored bytes (any bytes but NUL, UTF-8 or not), as qtool keeps them (surrogate escapes)."""
    return (st.binary(min_size=1, max_size=max_bytes).filter(lambda b: b"\0" not in b)
            .map(lambda b: b.decode("utf-8", "surrogateescape")))


_F32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def legacy_data(draw: st.DrawFn) -> ImatrixData:
    names = draw(st.lists(_name(24), min_size=1, max_size=5, unique=True))
    entries = {}
    for n in names:
        nval = draw(st.integers(1, 12))
        vals = draw(hnp.arrays(np.float32, nval, elements=_F32))
        entries[n] = ImatrixEntry(vals.reshape(1, -1), [draw(st.integers(0, 2**31 - 1))])
    trailer = draw(st.booleans())
    datasets = draw(st.lists(_name(16), max_size=1)) if trailer else []
    chunk = draw(st.integers(0, 2**31 - 1)) if trailer else 0
    return ImatrixData(entries, datasets, chunk, 0, legacy=True, has_metadata=trailer)


@st.composite
def collected_data(draw: st.DrawFn, non_negative: bool = False, max_count: int = 2**24) -> ImatrixData:
    names = draw(st.lists(_name(55), min_size=1, max_size=5, unique=True))  # + ".in_sum2" < 64 bytes
    entries = {}
    elems = st.floats(0, float(np.float32(1e30)), width=32) if non_negative else _F32
    for n in names:
        n_mat, n_per_row = draw(st.integers(1, 4)), draw(st.integers(1, 8))
        sums = draw(hnp.arrays(np.float32, (n_mat, n_per_row), elements=elems))
        counts = draw(st.lists(st.integers(0, max_count), min_size=n_mat, max_size=n_mat))
        entries[n] = ImatrixEntry(sums, counts)
    datasets = draw(st.lists(st.text(max_size=12), max_size=3))
    return ImatrixData(entries, datasets, draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1)))


def same_entries(a: dict[str, ImatrixEntry], b: dict[str, ImatrixEntry]) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[n].counts, b[n].counts) and a[n].sums.shape == b[n].sums.shape
        and np.array_equal(a[n].sums.view(np.int32), b[n].sums.view(np.int32)) for n in a)


# ---------------------------------------------------------------- codecs

@SETTINGS
@given(legacy_data())
def test_dat_codec_roundtrip_legacy(d: ImatrixData) -> None:
    raw = encode_dat(d)
    back = decode_dat(raw)
    assert list(back.entries) == list(d.entries)  # file order kept
    assert same_entries(back.entries, d.entries)
    assert (back.datasets, back.chunk_count, back.has_metadata, back.legacy) == (
        d.datasets, d.chunk_count, d.has_metadata, True)
    assert encode_dat(back) == raw


@SETTINGS
@given(legacy_data())
def test_dat_codec_matches_independent_writer(d: ImatrixData) -> None:
    trailer = (d.chunk_count, name_bytes(d.datasets[0]) if d.datasets else b"") if d.has_metadata else None
    raw = dat_bytes([(name_bytes(n), int(e.counts[0]), e.sums) for n, e in d.entries.items()], trailer)
    assert encode_dat(d) == raw and same_entries(decode_imatrix(raw).entries, d.entries)


@SETTINGS
@given(collected_data())
def test_gguf_codec_roundtrip(d: ImatrixData) -> None:
    raw = encode_gguf(d, quiet)
    back = decode_gguf(raw)
    assert list(back.entries) == sorted(d.entries, key=name_bytes)
    assert same_entries(back.entries, d.entries)
    assert (back.datasets, back.chunk_count, back.chunk_size, back.has_metadata, back.legacy) == (
        d.datasets, d.chunk_count, d.chunk_size, True, False)
    assert encode_gguf(back, quiet) == raw
    assert decode_imatrix(raw).entries.keys() == d.entries.keys()


@SETTINGS
@given(collected_data())
def test_gguf_codec_matches_independent_writer(d: ImatrixData) -> None:
    raw = imatrix_gguf({n: (e.sums, e.counts.astype(np.float32)) for n, e in d.entries.items()}, d.datasets,
                       d.chunk_count, d.chunk_size)
    assert encode_gguf(d, quiet) == raw


@SETTINGS
@given(collected_data(non_negative=True, max_count=10**6), st.sampled_from([1, 3, 256, 512, 1000]))
def test_collected_to_dat(d: ImatrixData, chunk_size: int) -> None:
    """save_imatrix_legacy: sorted, entries without counts dropped, ncall = ceil(max count / chunk size),
    weights (value / ncall) within 1 ulp of sum / count (exactly 1 where the count is 0)."""
    d.chunk_size = chunk_size
    d.chunk_count %= 2**31  # int32 in a .dat file
    d.datasets = [x.replace("\0", "") for x in d.datasets]
    kept = [n for n in sorted(d.entries, key=name_bytes) if d.entries[n].counts.any()]
    assume(kept)
    back = decode_dat(encode_dat(d, quiet))
    assert list(back.entries) == kept
    assert back.chunk_count == d.chunk_count and back.datasets == [x for x in d.datasets[-1:] if x]  # "": none
    for n in kept:
        e, b = d.entries[n], back.entries[n]
        assert b.counts.tolist() == [-(-int(e.counts.max()) // chunk_size)]
        w0, w1 = entry_weights(d, n), entry_weights(back, n).reshape(e.sums.shape)
        assert np.all(w1[e.counts == 0] == 1)
        u = np.abs(w0.view(np.int32).astype(np.int64) - w1.view(np.int32))
        assert u.max() <= 1


@SETTINGS
@given(legacy_data())
def test_dat_gguf_dat_cycle_stable(d: ImatrixData) -> None:
    """After one conversion, dat -> gguf -> dat is a fixed point (chunk size 512)."""
    for e in d.entries.values():
        e.sums = np.abs(e.sums) % np.float32(1e30)
        e.counts = np.minimum(e.counts, 10**6)
    assume(any(int(e.counts[0]) for e in d.entries.values()))
    once = encode_dat(combine([d]), quiet)
    twice = encode_dat(combine([decode_gguf(encode_gguf(combine([decode_dat(once)]), quiet))]), quiet)
    assert twice == once


# ---------------------------------------------------------------- fuzz

FUZZ_SOURCES = ["moe-a.gguf", "moe-b.gguf", "moe-a-resave.gguf", "odd-moe.gguf", "odd-c1000.gguf", "odd.dat",
                "moe-a-conv.dat", "odd-rt.dat"]
_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF]
_WORDS = [b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f",
          b"\x00\x00\x80\xff", b"\xff\xff\xff\xff\xff\xff\xff\xff", b"\x00\x00\x00\x00\x00\x00\x00\x80",
          b"\x00\x00\x00\x00"]


def mutate(raw: bytes, rng: random.Random) -> bytes:
    """One random mutation: bit flips, byte or word overwrites, truncation, insertion or deletion.

    Positions fall in the first 512 bytes (headers, names, lengths) half of the time.
    """
    b = bytearray(raw)

    def pos() -> int:
        n = len(b)
        return rng.randrange(min(n, 512)) if rng.random() < 0.5 else rng.randrange(n)

    kind = rng.randrange(7)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            b[pos()] ^= 1 << rng.randrange(8)
    elif kind == 1:
        for _ in range(rng.randint(1, 4)):
            b[pos()] = rng.choice(_INTERESTING)
    elif kind == 2:
        p, w = pos(), rng.choice(_WORDS)
        b[p:p + len(w)] = w
    elif kind == 3:
        del b[rng.randrange(len(b)):]
    elif kind == 4:
        p = pos()
        b[p:p] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 4, 8, 13])))
    elif kind == 5:
        p = pos()
        del b[p:p + rng.choice([1, 4, 8, 32])]
    else:  # splice a piece of another reference file
        other = ref_bytes(rng.choice(FUZZ_SOURCES))
        s = rng.randrange(len(other))
        p = pos()
        b[p:p + rng.randint(1, 64)] = other[s:s + rng.randint(1, 64)]
    return bytes(b)


def _exercise(d: ImatrixData) -> None:
    """What the commands do with a file that was read: write it, combine it, weights, statistics."""
    (encode_dat if d.legacy else encode_gguf)(d, quiet) if not d.legacy else encode_dat(d)
    c = combine([d])
    encode_gguf(c, quiet)
    if any(e.counts.any() for e in c.entries.values()):
        encode_dat(c, quiet)
    for n in d.entries:
        entry_weights(d, n)
    compute_statistics(d, 512, quiet)


def test_fuzz_readers_raise_only_imatrix_error() -> None:
    """3000 mutated reference files through both readers: a clean ImatrixError or a usable result."""
    rng = random.Random(20240607)
    sources = [ref_bytes(n) for n in FUZZ_SOURCES]
    outcomes = {"error": 0, "ok": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy RuntimeWarnings would mean unguarded float errors
        for i in range(3000):
            raw = mutate(sources[i % len(sources)], rng)
            if rng.random() < 0.2:
                raw = mutate(raw, rng)
            try:
                d = decode_imatrix(raw, f"fuzz{i}")
            except ImatrixError as e:
                assert str(e).startswith(f"fuzz{i}: "), e
                outcomes["error"] += 1
                continue
            # the other reader too: must refuse or read, never crash
            try:
                (decode_dat if raw[:4] == b"GGUF" else decode_gguf)(raw, f"fuzz{i}")
            except ImatrixError:
                pass
            try:
                _exercise(d)
            except ImatrixError:
                pass
            outcomes["ok"] += 1
    assert outcomes["error"] > 1000 and outcomes["ok"] > 300, outcomes


# ---------------------------------------------------------------- random merges vs llama-imatrix

@st.composite
def merge_inputs(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """1-3 inputs over a pool of entries with fixed sizes; GGUF inputs may carry 1 count for E experts."""
    pool = {f"blk.{i}.ffn_down_exps.weight": (draw(st.sampled_from([1, 2, 4])), draw(st.integers(1, 6)))
            for i in range(draw(st.integers(1, 4)))}
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    inputs = []
    for k in range(draw(st.integers(1, 3))):
        names = draw(st.lists(st.sampled_from(sorted(pool)), min_size=1, unique=True))
        if draw(st.booleans()):  # GGUF
            ents = {}
            for n in names:
                e, m = pool[n]
                n_mat = e if draw(st.booleans()) else 1
                counts = draw(st.lists(st.sampled_from([0, 0.5, 1, 2.5, 10.5, 37, 300, 512, 513, 2048, 1e5]),
                                       min_size=n_mat, max_size=n_mat))
                ents[n] = ((rng.gamma(0.5, 2.0, (n_mat, e * m // n_mat)) * 50).astype(np.float32), counts)
            inputs.append((f"in{k}.gguf", imatrix_gguf(ents, [f"d{k}.txt"], draw(st.integers(0, 9)), 512)))
        else:  # legacy
            ents = [(n, draw(st.integers(0, 12)), (rng.gamma(0.5, 2.0, pool[n][0] * pool[n][1]) * 3)
                     .astype(np.float32)) for n in names]
            inputs.append((f"in{k}.dat", dat_bytes(ents, (draw(st.integers(0, 20)), f"d{k}.txt"))))
    return inputs


@pytest.mark.reference
@pytest.mark.skipif(not LLAMA_IMATRIX.exists(), reason="set QTOOL_LLAMA_BIN to run llama-imatrix")
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(inputs=merge_inputs(), chunk=st.sampled_from([512, 256, 1000, 3]), fmt=st.sampled_from(["gguf", "dat"]))
def test_random_merges_match_llama_imatrix(inputs: list[tuple[str, bytes]], chunk: int, fmt: str,
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    d = tmp_path_factory.mktemp("merge")
    args = [str(LLAMA_IMATRIX), "-m", "unused.gguf", "-c", str(chunk), "--output-format", fmt, "-o", f"out.{fmt}"]
    for name, raw in inputs:
        (d / name).write_bytes(raw)
        args += ["--in-file", name]
    r = subprocess.run(args, cwd=d, capture_output=True, timeout=60)
    try:
        c = combine([decode_imatrix(raw, name) for name, raw in inputs], chunk)
        mine = encode_dat(c, quiet) if fmt == "dat" else encode_gguf(c, quiet)
    except ImatrixError as e:
        if "no imatrix entry has any data" in str(e):  # llama-imatrix writes a file of 0 entries
            assert r.returncode == 0 and (d / "out.dat").read_bytes()[:4] == b"\0\0\0\0"
            event("no data to write")
            return
        assert r.returncode != 0, (e, r.stderr[-500:])
        event("both refuse")
        return
    assert r.returncode == 0, r.stderr[-500:]
    assert (d / f"out.{fmt}").read_bytes() == mine
    event(f"same bytes ({fmt}, {len(inputs)} inputs)")


def test_fuzz_mutator_is_deterministic() -> None:
    a = [mutate(ref_bytes("odd.dat"), random.Random(5)) for _ in range(3)]
    assert a[0] == a[1] == a[2] and a[0] != ref_bytes("odd.dat")


def test_exercise_on_reference(tmp_path: Path) -> None:
    for n in FUZZ_SOURCES:
        _exercise(decode_imatrix(ref_bytes(n), n))


@st.composite
def stats_input(draw: st.DrawFn) -> tuple[str, bytes]:
    """One file for --show-statistics: layers 0..3 of a few tensor kinds (same size per kind), some counts 0."""
    kinds = {k: (draw(st.sampled_from([1, 4])), draw(st.integers(1, 40))) for k in
             draw(st.lists(st.sampled_from(["attn_q", "ffn_down_exps", "ffn_up"]), min_size=1, unique=True))}
    names = [(f"blk.{i}.{k}.weight", k) for k in kinds for i in range(4) if draw(st.booleans())]
    names += [("output.weight", "out")] if draw(st.booleans()) else []
    kinds["out"] = (1, 24)
    assume(names)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        ents = {}
        for n, k in names:
            e, m = kinds[k]
            counts = draw(st.lists(st.sampled_from([0, 1, 3, 100, 512, 1024, 7777]), min_size=e, max_size=e))
            s = rng.gamma(0.3, 2.0, (e, m)) * np.asarray(counts, np.float64)[:, None]
            s[rng.random((e, m)) < 0.1] = 0
            ents[n] = (s.astype(np.float32), counts)
        return "s.gguf", imatrix_gguf(ents, ["s.txt"], 3, 512)
    ents = [(n, draw(st.integers(0, 9)), (rng.gamma(0.3, 2.0, kinds[k][0] * kinds[k][1]) * 4).astype(np.float32))
            for n, k in names]
    return "s.dat", dat_bytes(ents, (9, "s.txt"))


def same_up_to_ties(mine: str, theirs: str) -> bool:
    """Equal texts, except that rows with the same tensor kind and the same Σ(Act²) may come in another
    order (llama-imatrix sorts an unordered map's entries with std::sort, which is not stable)."""
    if mine == theirs:
        return True
    a, b = mine.splitlines(), theirs.splitlines()

    def key(row: str) -> tuple[str, ...]:
        cols = row.split("\t")
        return (cols[1], cols[2]) if len(cols) == 13 else (row,)

    return len(a) == len(b) and [key(x) for x in a] == [key(x) for x in b] and sorted(a) == sorted(b)


@pytest.mark.reference
@pytest.mark.skipif(not LLAMA_IMATRIX.exists(), reason="set QTOOL_LLAMA_BIN to run llama-imatrix")
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(src=stats_input())
def test_random_statistics_match_llama_imatrix(src: tuple[str, bytes],
                                               tmp_path_factory: pytest.TempPathFactory) -> None:

    d = tmp_path_factory.mktemp("stats")
    name, raw = src
    (d / name).write_bytes(raw)
    for _ in range(10):  # llama's log thread sometimes exits before it has printed everything: run again
        r = subprocess.run([str(LLAMA_IMATRIX), "-m", "unused.gguf", "--in-file", name, "--show-statistics"], cwd=d,
                           capture_output=True, timeout=60)
        info, errors = parse_llama_log((r.stdout + r.stderr).decode())
        if r.returncode == 0 and "Computing weighted average" in info and info.endswith("\n\n"):
            break  # complete (the text ends with an empty line)
        if r.returncode != 0 and any("cannot compute statistics" in e for e in errors):
            break
    w = Warnings()
    stats = compute_statistics(decode_imatrix(raw, name), 512, w)
    if not stats:
        assert r.returncode != 0 and "cannot compute statistics" in "".join(errors)
        event("no statistics")
        return
    assert r.returncode == 0
    assert same_up_to_ties(format_llama(name, stats), info)
    # llama-imatrix walks an unordered map: the same messages, in another order
    assert sorted(w) == sorted(e for e in errors if not e.startswith("gguf_init_from_reader"))
    event(f"same text ({name})")
