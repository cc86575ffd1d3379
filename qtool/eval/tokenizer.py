"""Tokenizers from GGUF metadata, token for token equal to llama.cpp's (src/llama-vocab.cpp).

- `gpt2` (byte-level BPE): the pre-tokenizer regexes of `llm_tokenizer_bpe` chosen by
  `tokenizer.ggml.pre` (default, gpt2, smollm/starcoder family, llama3, qwen2), applied one after
  the other as `unicode_regex_split` does, GPT-2 byte encoding, merges by rank (ties: leftmost).
- `llama` (SentencePiece-style, Gemma): `llm_tokenizer_spm_session`, spaces escaped to U+2581,
  greedy merges of the highest-scoring pair (ties: leftmost), resegmentation through the merge
  history, byte fallback to <0xXX> tokens.

Both first split the text at special tokens as `tokenizer_st_partition` does (longest token
first; user-defined tokens always, control / unknown ones only with parse_special), and add
BOS / EOS as `llama_vocab::impl::tokenize` with add_special=true.

The pre-tokenizer patterns run on the `regex` package (Unicode \\p{L} / \\p{N}); whitespace is
llama.cpp's own set (unicode_set_whitespace), written out, since `\\s` differs between engines.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import regex  # type: ignore[import-untyped]

from ..errors import QtoolError

# llama_token_type / LLAMA_TOKEN_ATTR mapping (llama-vocab.cpp token_to_attr)
TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = 1, 2, 3, 4, 5, 6

# unicode-data.cpp unicode_set_whitespace
_WS = "\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
_S = f"[{_WS}]"
_NS = f"[^{_WS}]"

# unicode.cpp unicode_regex_split_custom_gpt2 (the GPT-2 pattern with a final \s+)
_GPT2 = (rf"'s|'t|'re|'ve|'m|'ll|'d| ?\p{{L}}+| ?\p{{N}}+| ?[^{_WS}\p{{L}}\p{{N}}]+|{_S}+(?!{_NS})|{_S}+")
_LLAMA3 = (rf"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|\p{{N}}{{1,3}}"
           rf"| ?[^{_WS}\p{{L}}\p{{N}}]+[\r\n]*|{_S}*[\r\n]+|{_S}+(?!{_NS})|{_S}+")
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")

# llm_tokenizer_bpe: tokenizer.ggml.pre -> the regexes applied in turn
PRE_TOKENIZERS: dict[str, list[str]] = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
    "gpt2": [_GPT2], "mpt": [_GPT2], "olmo": [_GPT2], "jais": [_GPT2], "trillion": [_GPT2],
    "smollm": [r"\p{N}", _GPT2], "starcoder": [r"\p{N}", _GPT2], "refact": [r"\p{N}", _GPT2],
    "command-r": [r"\p{N}", _GPT2], "codeshell": [r"\p{N}", _GPT2], "exaone": [r"\p{N}", _GPT2],
    "minerva-7b": [r"\p{N}", _GPT2],
    "llama3": [_LLAMA3], "llama-bpe": [_LLAMA3], "dbrx": [_LLAMA3], "smaug-bpe": [_LLAMA3],
    "qwen2": [_QWEN2], "stablelm2": [_QWEN2], "hunyuan": [_QWEN2],
}
_IGNORE_MERGES = {"llama3", "llama-bpe"}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (unicode.cpp unicode_byte_to_utf8_map)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=False)}


BYTE_ENCODER = _bytes_to_unicode()
_SURROGATES = regex.compile("[\udc80-\udcff]")


class TokenizerError(QtoolError):
    """A GGUF file whose tokenizer metadata qtool cannot use."""


@dataclass
class Vocab:
    """The tokenizer keys of a GGUF file."""

    model: str
    pre: str
    tokens: list[str]
    types: np.ndarray
    scores: np.ndarray | None
    merges: list[str]
    bos: int | None
    eos: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool

    @classmethod
    def from_kv(cls, kv: Any) -> Vocab:
        """From a getter `kv(key, default)` (GGUFModel.kv); defaults as llama_vocab::impl::load."""
        model = str(kv("tokenizer.ggml.model", ""))
        toks = kv("tokenizer.ggml.tokens")
        if not model or toks is None:
            raise TokenizerError("the model has no tokenizer (tokenizer.ggml.model / tokens missing)")
        n = len(toks)
        types = np.asarray(kv("tokenizer.ggml.token_type", np.full(n, TT_NORMAL)), dtype=np.int32)
        sc = kv("tokenizer.ggml.scores")
        bos, eos = kv("tokenizer.ggml.bos_token_id"), kv("tokenizer.ggml.eos_token_id")
        if model == "llama":
            dflt_bos, dflt_eos, dflt_space = True, False, True
            bos = 1 if bos is None else bos
            eos = 2 if eos is None else eos
        else:
            dflt_bos, dflt_eos, dflt_space = False, False, False
        return cls(model=model, pre=str(kv("tokenizer.ggml.pre", "default")), tokens=list(toks), types=types,
                   scores=None if sc is None else np.asarray(sc, dtype=np.float32),
                   merges=list(kv("tokenizer.ggml.merges", []) or []),
                   bos=None if bos is None else int(bos), eos=None if eos is None else int(eos),
                   add_bos=bool(kv("tokenizer.ggml.add_bos_token", dflt_bos)),
                   add_eos=bool(kv("tokenizer.ggml.add_eos_token", dflt_eos)),
                   add_space_prefix=bool(kv("tokenizer.ggml.add_space_prefix", dflt_space)))


class Tokenizer:
    """llama.cpp's tokenizer for one vocabulary: `encode(text, add_special=True, parse_special=False)`."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = v = vocab
        if v.model not in ("gpt2", "llama"):
            raise TokenizerError(f"tokenizer model {v.model!r} is not supported (gpt2 and llama are)")
        # llama_vocab::impl::load assigns token_to_id[word] = i in order: the last duplicate wins
        self.token_to_id: dict[str, int] = {}
        for i, t in enumerate(v.tokens):
            self.token_to_id[t] = i
        special = [i for i in range(len(v.tokens)) if v.types[i] in (TT_CONTROL, TT_USER_DEFINED, TT_UNKNOWN)]
        # std::sort by length descending (not stable; equal lengths never match the same place here)
        self._special = sorted(special, key=lambda i: -len(v.tokens[i].encode("utf-8")))
        if v.model == "gpt2":
            if v.pre not in PRE_TOKENIZERS:
                raise TokenizerError(f"BPE pre-tokenizer {v.pre!r} is not supported "
                                     f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})")
            self._regexes = [regex.compile(p) for p in PRE_TOKENIZERS[v.pre]]
            self._ranks: dict[tuple[str, str], int] = {}
            for r, m in enumerate(v.merges):
                a, sep, b = m.partition(" ")
                if not sep:  # llama.cpp: GGML_ASSERT on a merge without a space
                    raise TokenizerError(f"malformed BPE merge #{r}: {m!r}")
                self._ranks.setdefault((a, b), r)
            self._word_cache: dict[str, list[int]] = {}
        else:
            if v.scores is None:
                raise TokenizerError("SentencePiece vocabulary without tokenizer.ggml.scores")
            self._spm_cache: dict[str, list[int]] = {}

    @classmethod
    def from_model(cls, model: Any) -> Tokenizer:
        return cls(Vocab.from_kv(model.kv))

    # -- special tokens -------------------------------------------------------------------------

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """tokenizer_st_partition: text fragments (str) and special token ids (int)."""
        frags: list[str | int] = [text]
        v = self.vocab
        for sid in self._special:
            if not parse_special and v.types[sid] in (TT_CONTROL, TT_UNKNOWN):
                continue
            tok = v.tokens[sid]
            if not tok or tok not in text:
                continue
            out: list[str | int] = []
            for f in frags:
                if isinstance(f, int) or tok not in f:
                    out.append(f)
                    continue
                pieces = f.split(tok)
                for k, p in enumerate(pieces):
                    if k:
                        out.append(sid)
                    if p:
                        out.append(p)
            frags = out
        return frags

    # -- public ---------------------------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """llama_tokenize(text, add_special, parse_special)."""
        v = self.vocab
        out: list[int] = []
        frags = self._partition(text, parse_special) if text else []
        if v.model == "llama":
            if add_special and v.add_bos:
                assert v.bos is not None
                out.append(v.bos)
            prev_special = True
            for f in frags:
                if isinstance(f, int):
                    out.append(f)
                    prev_special = True
                    continue
                t = (" " if v.add_space_prefix and prev_special else "") + f
                out.extend(self._spm(t.replace(" ", "\u2581")))
                prev_special = False
            if add_special and v.add_eos:
                assert v.eos is not None
                out.append(v.eos)
        else:
            if add_special and v.add_bos:
                assert v.bos is not None
                out.append(v.bos)
            for f in frags:
                if isinstance(f, int):
                    out.append(f)
                else:
                    self._bpe_text(f, out)
            if add_special and v.add_eos:
                assert v.eos is not None
                out.append(v.eos)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """The text of tokens (for display; special tokens as their text)."""
        v = self.vocab
        if v.model == "gpt2":
            dec = {c: b for b, c in BYTE_ENCODER.items()}
            raw = bytearray()
            for i in ids:
                t = v.tokens[i]
                if v.types[i] in (TT_NORMAL, TT_BYTE) and all(ch in dec for ch in t):
                    raw.extend(dec[ch] for ch in t)
                else:
                    raw.extend(t.encode("utf-8"))
            return raw.decode("utf-8", "replace")
        raw = bytearray()
        for i in ids:
            t = v.tokens[i]
            if v.types[i] == TT_BYTE and len(t) == 6:
                raw.append(int(t[3:5], 16))
            else:
                raw.extend(t.replace("\u2581", " ").encode("utf-8"))
        return raw.decode("utf-8", "replace")

    # -- BPE --------------------------------------------------------------------------------------

    def pretokenize(self, text: str) -> list[str]:
        """unicode_regex_split: each regex splits every piece of the previous one into its
        matches and the text between them."""
        pieces = [text]
        for rx in self._regexes:
            nxt: list[str] = []
            for p in pieces:
                pos = 0
                for m in rx.finditer(p):
                    s, e = m.span()
                    if s > pos:
                        nxt.append(p[pos:s])
                    if e > s:
                        nxt.append(p[s:e])
                    pos = e
                if pos < len(p):
                    nxt.append(p[pos:])
            pieces = nxt
        return pieces

    def _bpe_text(self, text: str, out: list[int]) -> None:
        if _SURROGATES.search(text):  # invalid UTF-8: unicode_cpts_from_utf8 gives U+FFFD
            text = _SURROGATES.sub("\ufffd", text)
        cache = self._word_cache
        for word in self.pretokenize(text):
            ids = cache.get(word)
            if ids is None:
                enc = "".join(BYTE_ENCODER[b] for b in word.encode("utf-8"))
                ids = self.bpe_word(enc)
                if len(cache) < 1_000_000:
                    cache[word] = ids
            out.extend(ids)

    def bpe_word(self, word: str) -> list[int]:
        """llm_tokenizer_bpe_session::tokenize for one pre-tokenized, byte-encoded word."""
        t2i = self.token_to_id
        if self.vocab.pre in _IGNORE_MERGES and word in t2i:
            return [t2i[word]]
        syms = list(word)
        ranks = self._ranks
        while len(syms) > 1:
            best, bi = None, -1
            for i in range(len(syms) - 1):
                r = ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best is None or r < best):
                    best, bi = r, i
            if best is None:
                break
            a, b = syms[bi], syms[bi + 1]
            merged: list[str] = []
            i = 0
            while i < len(syms):
                if i < len(syms) - 1 and syms[i] == a and syms[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(syms[i])
                    i += 1
            syms = merged
        ids: list[int] = []
        for s in syms:
            tid = t2i.get(s)
            if tid is not None:
                ids.append(tid)
                continue
            for ch in s.encode("utf-8"):  # llama.cpp looks up each byte of the symbol's text
                t = t2i.get(chr(ch)) if ch < 0x80 else None
                if t is not None:
                    ids.append(t)
        return ids

    # -- SentencePiece ------------------------------------------------------------------------------

    def _spm(self, text: str) -> list[int]:
        ids = self._spm_cache.get(text)
        if ids is None:
            ids = self._spm_session(text)
            if len(self._spm_cache) < 1_000_000:
                self._spm_cache[text] = ids
        return ids

    def _spm_session(self, text: str) -> list[int]:
        """llm_tokenizer_spm_session::tokenize (symbols are characters; UTF-8 lengths compared)."""
        t2i = self.token_to_id
        scores = self.vocab.scores
        assert scores is not None
        n_tok = len(self.vocab.tokens)
        n = len(text)
        start = list(range(n))  # symbol i covers text[start[i]:start[i]+ln[i]]
        ln = [1] * n
        nxt = [i + 1 for i in range(n)]
        if n:
            nxt[-1] = -1
        prv = [i - 1 for i in range(n)]
        heap: list[tuple[float, int, int, int]] = []
        rev: dict[str, tuple[int, int]] = {}

        def add(left: int, right: int) -> None:
            if left == -1 or right == -1:
                return
            s = text[start[left]:start[left] + ln[left] + ln[right]]
            tid = t2i.get(s)
            if tid is None or tid >= n_tok:
                return
            # priority_queue top = highest score, then smallest left
            heapq.heappush(heap, (-float(scores[tid]), left, right, ln[left] + ln[right]))
            rev[s] = (left, right)

        for i in range(1, n):
            add(i - 1, i)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            if ln[left] == 0 or ln[right] == 0 or ln[left] + ln[right] != size:
                continue
            ln[left] += ln[right]
            ln[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            add(prv[left], left)
            add(left, nxt[left])
        out: list[int] = []

        def reseg(i: int) -> None:
            s = text[start[i]:start[i] + ln[i]]
            tid = t2i.get(s)
            if tid is not None:
                out.append(tid)
                return
            p = rev.get(s)
            if p is None:
                for b in s.encode("utf-8", "surrogateescape"):
                    out.append(self._byte_token(b))
                return
            reseg(p[0])
            reseg(p[1])

        i = 0 if n else -1
        while i != -1:
            reseg(i)
            i = nxt[i]
        return out

    @lru_cache(maxsize=256)  # noqa: B019  (one Tokenizer per model; bounded)
    def _byte_token(self, b: int) -> int:
        """llama_vocab::byte_to_token for SPM: <0xXX>, else the byte as a character."""
        tid = self.token_to_id.get(f"<0x{b:02X}>")
        if tid is None:
            tid = self.token_to_id.get(chr(b))
        if tid is None:
            raise TokenizerError(f"the vocabulary has no token for byte 0x{b:02X}")
        return tid


def load_text(path: str, escape: bool = True) -> str:
    """A prompt file as llama.cpp's common `-f` gives it to llama-imatrix / llama-perplexity: the
    file's bytes with one trailing newline removed and, unless escape is False (`--no-escape`),
    the escapes \\n \\r \\t \\' \\" \\\\ \\xHH processed (common.cpp string_process_escapes),
    decoded as UTF-8 with invalid bytes kept as surrogate escapes (the SentencePiece path
    turns them into byte tokens, the BPE path into U+FFFD, as llama.cpp does)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if escape:
        raw = process_escapes(raw)
    return raw.decode("utf-8", "surrogateescape")


_ESC = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("'"): 39, ord('"'): 34, ord("\\"): 92}


def _strtol2(x: bytes) -> int | None:
    """std::strtol(x, &end, 16) on two bytes, when it consumes both (else None)."""
    s = x.decode("latin-1")
    i = 0
    while i < len(s) and s[i] in " \t\n\v\f\r":
        i += 1
    sign = 1
    if i < len(s) and s[i] in "+-":
        sign = -1 if s[i] == "-" else 1
        i += 1
    digits = s[i:]
    if not digits or any(c not in "0123456789abcdefABCDEF" for c in digits):
        return None
    return sign * int(digits, 16)


def process_escapes(raw: bytes) -> bytes:
    """common.cpp string_process_escapes on bytes."""
    if b"\\" not in raw:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 92 and i + 1 < n:
            i += 1
            e = raw[i]
            if e in _ESC:
                out.append(_ESC[e])
            elif e == ord("x") and i + 2 < n and (v := _strtol2(raw[i + 1:i + 3])) is not None:
                i += 2
                out.append(v & 0xFF)
            else:
                out.append(92)
                out.append(e)
        else:
            out.append(c)
        i += 1
    return bytes(out)
