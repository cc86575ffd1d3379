"""The GGUF tokenizers (qtool.eval.tokenizer) against llama.cpp's algorithms: a scalar
transliteration of llm_tokenizer_bpe_session's priority queue, special-token partitioning,
SentencePiece merges and byte fallback, llama.cpp's -f text handling; with QTOOL_LLAMA_BIN and
QTOOL_REF_OUT, token identity with llama-tokenize on the pydoc text for real models."""

from __future__ import annotations

import ast
import heapq
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qtool.eval.tokenizer import BYTE_ENCODER, Tokenizer, load_text, process_escapes
from qtool.gguf_io import GGUFModel
from tests import refs
from tests.eval_fixtures import TEXT, make_model


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    p = make_model(tmp_path_factory.mktemp("tok") / "bpe.gguf")
    return Tokenizer.from_model(GGUFModel(p))


@pytest.fixture(scope="module")
def spm(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    p = make_model(tmp_path_factory.mktemp("tok") / "spm.gguf", arch="gemma3")
    return Tokenizer.from_model(GGUFModel(p))


def bpe_queue(tok: Tokenizer, word: str) -> list[str]:
    """llm_tokenizer_bpe_session::tokenize for one byte-encoded word, transliterated: a priority
    queue of (rank, left) bigrams, stale entries skipped."""
    ranks = {tuple(m.split(" ")): r for r, m in reversed(list(enumerate(tok.vocab.merges)))}
    syms = list(word)
    n = [1] * len(syms)
    text = syms[:]
    nxt = list(range(1, len(syms))) + [-1]
    prv = list(range(-1, len(syms) - 1))
    q: list[tuple[int, int, str]] = []

    def add(a: int, b: int) -> None:
        if a < 0 or b < 0:
            return
        r = ranks.get((text[a], text[b]))
        if r is not None:
            heapq.heappush(q, (r, a, text[a] + text[b]))

    for i in range(1, len(syms)):
        add(i - 1, i)
    while q:
        _, a, s = heapq.heappop(q)
        b = nxt[a]
        if n[a] == 0 or b < 0 or n[b] == 0 or text[a] + text[b] != s:
            continue
        text[a] = s
        n[a] += n[b]
        n[b] = 0
        nxt[a] = nxt[b]
        if nxt[b] >= 0:
            prv[nxt[b]] = a
        add(prv[a], a)
        add(a, nxt[a])
    return [text[i] for i in range(len(syms)) if n[i]]


def test_bpe_merges_match_priority_queue(bpe: Tokenizer) -> None:
    rng = np.random.default_rng(1)
    alphabet = list("thenaorfi ") + ["Ġ"]
    for _ in range(400):
        word = "".join(rng.choice(alphabet, size=int(rng.integers(1, 12))))
        enc = "".join(BYTE_ENCODER[b] for b in word.encode())
        want = [bpe.token_to_id[s] for s in bpe_queue(bpe, enc)]
        assert bpe.bpe_word(enc) == want, word


def test_bpe_pretokenizer_and_roundtrip(bpe: Tokenizer) -> None:
    assert bpe.pretokenize("the 12 end  x's\n\n a") == ["the", " ", "1", "2", " end", " ", " x", "'s", "\n\n", " a"]
    ids = bpe.encode(TEXT)
    assert bpe.decode(ids) == TEXT
    assert bpe.vocab.add_bos is False and ids[0] != bpe.vocab.bos


def test_special_tokens_control_only_with_parse_special(bpe: Tokenizer) -> None:
    s = "a<|im_start|>b"
    assert bpe.token_to_id["<|im_start|>"] not in bpe.encode(s)
    assert bpe.encode(s, parse_special=True) == [bpe.token_to_id["a"], 1, bpe.token_to_id["b"]]


def test_spm_user_defined_bos_and_byte_fallback(spm: Tokenizer) -> None:
    t = spm.token_to_id
    ids = spm.encode("the the\n\nzé")
    # BOS; 'the' (no space prefix): '▁t' (-2) merges first, then 'th', then 'he' + '▁t' -> '▁the';
    # the user-defined '\n\n' is split off before the merges; é falls back to its two bytes
    assert ids == [2, t["th"], t["e"], t["▁the"], t["\n\n"], t["z"], t["<0xC3>"], t["<0xA9>"]]
    assert spm.decode(ids[1:]) == "the the\n\nzé"


def test_spm_highest_score_first(spm: Tokenizer) -> None:
    t = spm.token_to_id
    # '▁the' (-1) beats '▁t' + 'he': greedy merges by score, then resegmentation
    assert spm.encode(" the", add_special=False) == [t["▁the"]]
    assert spm.encode(" an", add_special=False) == [t["▁a"], t["n"]]  # '▁a' (-4.5) merges before 'an' (-6.5)


def test_escapes_and_trailing_newline(tmp_path: Path) -> None:
    assert process_escapes(rb"a\nb\tc\\d\'\"\x41\q\x4") == b"a\nb\tc\\d'\"A\\q\\x4"
    p = tmp_path / "t.txt"
    p.write_bytes(b"x\\ty\n")
    assert load_text(str(p)) == "x\ty"
    assert load_text(str(p), escape=False) == "x\\ty"
    p.write_bytes(b"ab\\x85c\n\n")
    assert load_text(str(p)).encode("utf-8", "surrogateescape") == b"ab\x85c\n"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smol-f16.gguf", "gemma-f16.gguf"])
def test_pydoc_tokens_identical_to_llama_tokenize(name: str, tmp_path: Path) -> None:
    tool, model = refs.llama_bin("llama-tokenize"), refs.ref_out(name)
    if tool is None or model is None:
        pytest.skip(refs.why("QTOOL_LLAMA_BIN and QTOOL_REF_OUT"))
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    f = tmp_path / "pydoc.txt"
    f.write_text(text)
    out = subprocess.run([str(tool), "-m", str(model), "-f", str(f), "--ids", "--log-disable"],
                         capture_output=True, text=True, check=True, env={**os.environ, "LC_ALL": "C"}).stdout
    ref = ast.literal_eval(out.strip())
    tok = Tokenizer.from_model(GGUFModel(model))
    # llama-tokenize keeps the file's last newline, -f in llama-imatrix / llama-perplexity drops it
    ids = tok.encode(load_text(str(f)) + ("\n" if text.endswith("\n") else ""))
    assert ids == ref
