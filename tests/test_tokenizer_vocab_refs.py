"""qtool's tokenizer against llama.cpp on real vocabularies.

With QTOOL_GGML_SRC: the vocab-only GGUFs of real models in llama.cpp's models/ folder
(ggml-vocab-NAME.gguf) with their cases (.gguf.inp) and expected token ids (.gguf.out), tokenized
as tests/test-tokenizer-0.cpp does (add_special=false, parse_special=false); vocabularies qtool
does not support must be refused with TokenizerError, so that the supported set is pinned; the
pre-tokenizer regexes and name table, and the Unicode table, compared with llama.cpp's source.
With QTOOL_LLAMA_BIN too (slow): pydoc text and a generated Unicode stress text, token for token
against llama-tokenize. Without references: the llama.cpp behaviours these comparisons found.

QTOOL_GGML_SRC may name the llama.cpp source tree or its ggml/src folder (as the other tests use
it); models/ and src/ are looked up from either.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qtool.eval import tokenizer as tkz
from qtool.eval import unicode_data as ud
from qtool.eval.tokenizer import BYTE_ENCODER, Tokenizer, TokenizerError, Vocab, process_escapes, regex_split
from qtool.gguf_io import GGUFModel
from tests import refs

SEP = b"\n__ggml_vocab_test__\n"

# vocab name -> whether qtool supports it (every ggml-vocab-*.gguf with .inp/.out must be listed)
SUPPORTED = {
    "llama-bpe": True, "qwen2": True, "qwen35": True, "gpt-2": True, "starcoder": True, "refact": True,
    "llama-spm": True, "phi-3": True, "deepseek-llm": True, "deepseek-coder": True, "falcon": True,
    "mpt": True, "command-r": True, "gemma-4": True, "bert-bge": False,
}
# every vocab file, with or without cases: whether qtool builds a tokenizer for it
LOADS = {**SUPPORTED, "aquila": True, "baichuan": True, "gpt-neox": True, "nomic-bert-moe": False}


ROOT = refs.llama_cpp_root()


def _root() -> Path:
    if ROOT is None:
        pytest.skip(refs.why("QTOOL_GGML_SRC"))
    return ROOT


def _vocab(name: str) -> Path:
    p = _root() / "models" / f"ggml-vocab-{name}.gguf"
    if not p.exists():
        pytest.skip(f"{p} is missing")
    return p


def read_cases(vocab: Path) -> dict[str, list[int]]:
    """test-tokenizer-0.cpp read_tests: inputs split at the separator, one output line per input,
    kept in a std::map (a repeated input keeps its last expectation)."""
    raw = Path(f"{vocab}.inp").read_bytes()
    inp: list[bytes] = []
    pos = 0
    while pos < len(raw):
        nxt = raw.find(SEP, pos)
        if nxt < 0:
            inp.append(raw[pos:])
            break
        inp.append(raw[pos:nxt])
        pos = nxt + len(SEP)
    out = Path(f"{vocab}.out").read_bytes().split(b"\n")
    if out and out[-1] == b"":  # std::getline: no line after the final newline
        out.pop()
    assert len(inp) == len(out), vocab
    return {i.decode("utf-8", "surrogateescape"): [int(t) for t in o.split()] for i, o in zip(inp, out, strict=True)}


# -- llama.cpp's models/ggml-vocab-* -----------------------------------------------------------------


def test_every_vocab_with_cases_is_listed() -> None:
    models = _root() / "models"
    names = {p.name[len("ggml-vocab-"):-len(".gguf")] for p in models.glob("ggml-vocab-*.gguf")}
    assert names <= set(LOADS), sorted(names - set(LOADS))
    with_cases = {n for n in names if (models / f"ggml-vocab-{n}.gguf.out").exists()}
    assert with_cases == set(SUPPORTED) & names


@pytest.mark.parametrize("name", sorted(set(LOADS) - set(SUPPORTED)))
def test_vocab_without_cases_loads_or_is_refused(name: str) -> None:
    model = GGUFModel(_vocab(name))
    if LOADS[name]:
        Tokenizer.from_model(model)
    else:
        with pytest.raises(TokenizerError):
            Tokenizer.from_model(model)


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_vocab_cases_identical_to_llama_cpp(name: str) -> None:
    path = _vocab(name)
    if not SUPPORTED[name]:
        with pytest.raises(TokenizerError):
            Tokenizer.from_model(GGUFModel(path))
        return
    tok = Tokenizer.from_model(GGUFModel(path))
    cases = read_cases(path)
    got = {text: tok.encode(text, add_special=False, parse_special=False) for text in cases}
    bad = [(text, got[text], want) for text, want in cases.items() if got[text] != want]
    assert not bad, f"{len(bad)}/{len(cases)} cases differ; first: {bad[0]!r}"


# -- qtool's tables against llama.cpp's source ---------------------------------------------------------


def _c_regex_groups(src: str) -> dict[str, tuple[str, ...]]:
    """llm_tokenizer_bpe's switch: LLAMA_VOCAB_PRE_TYPE_X -> its regex strings."""
    a = src.index("struct llm_tokenizer_bpe : llm_tokenizer {")
    body = src[a:src.index("std::vector<std::string> regex_exprs;", a)]
    groups: dict[str, tuple[str, ...]] = {}
    for g in body.split("break;"):
        cases = re.findall(r"case LLAMA_VOCAB_PRE_TYPE_(\w+):", g) + (["DEFAULT"] if "default:" in g else [])
        m = re.search(r"regex_exprs = \{(.*?)\};", g, re.S)
        if m:
            lits = [re.sub(r",\s*(//.*)?$", "", s.strip()) for s in m.group(1).split("\n")]
            rx = tuple(ast.literal_eval(s) for s in lits if s and not s.startswith("//"))
            groups.update(dict.fromkeys(cases, rx))
    return groups


def _c_pre_names(src: str) -> dict[str, tuple[str, dict[str, bool]]]:
    """llama_vocab::impl::load's if-chain: tokenizer.ggml.pre name -> (pre type, flags set)."""
    a = src.index('} else if (tokenizer_pre == "default") {')
    body = src[a:src.index('throw std::runtime_error(format("unknown pre-tokenizer type', a)]
    out: dict[str, tuple[str, dict[str, bool]]] = {}
    for m in re.finditer(r"if \(\s*((?:tokenizer_pre == \"[^\"]+\"\s*(?:\|\|\s*)?)+)\)\s*\{(.*?)\}", body, re.S):
        block = m.group(2)
        typ = re.search(r"pre_type = LLAMA_VOCAB_PRE_TYPE_(\w+);", block)
        assert typ, block
        flags = {"ignore_merges": "ignore_merges = true" in block, "add_bos": "add_bos = true" in block,
                 "no_bos": "special_bos_id = LLAMA_TOKEN_NULL" in block,
                 "escape_whitespaces": "escape_whitespaces = true" in block}
        for name in re.findall(r'tokenizer_pre == "([^"]+)"', m.group(1)):
            out[name] = (typ.group(1), flags)
    return out


# llama.cpp pre-tokenizers that need hand-written code qtool does not have (refused)
NOT_PORTED = {"kimi-k2", "afmoe", "tiny_aya", "cohere2moe", "superbpe", "whitespace"}


def test_pre_tokenizers_are_llama_cpp_s() -> None:
    src = (_root() / "src" / "llama-vocab.cpp").read_text()
    groups, names = _c_regex_groups(src), _c_pre_names(src)
    assert set(names) - set(tkz.PRE_TOKENIZERS) == NOT_PORTED, "llama.cpp has pre-tokenizers qtool does not know"
    for name, pre in tkz.PRE_TOKENIZERS.items():
        off = dict.fromkeys(("ignore_merges", "add_bos", "no_bos", "escape_whitespaces"), False)
        typ, flags = names[name] if name != "default" else ("DEFAULT", off)
        assert tkz._PRE_REGEXES[pre.regexes] == groups[typ], name
        assert {k: getattr(pre, k) for k in flags} == flags, name


def test_unicode_table_is_llama_cpp_s() -> None:
    src = (_root() / "src" / "unicode-data.cpp").read_text()
    body = src[src.index("unicode_ranges_flags"):src.index("unicode_set_whitespace")]
    ranges = [(int(a, 16), int(b, 16)) for a, b in re.findall(r"\{0x([0-9A-F]+), 0x([0-9A-F]+)\}", body)]
    assert [tuple(int(x, 16) for x in t.split(":")) for t in ud.RANGES.split()] == ranges
    ws = src[src.index("unicode_set_whitespace"):src.index("unicode_map_lowercase")]
    assert {int(x, 16) for x in re.findall(r"0x([0-9A-F]+)", ws)} == ud.WHITESPACE


# -- token identity with llama-tokenize on longer texts -------------------------------------------------


@functools.lru_cache(maxsize=1)
def stress_text(seed: int = 7, n: int = 6000) -> str:
    """Unicode the pre-tokenizers treat differently: llama.cpp's table vs Python's, every kind of
    whitespace, contractions, digits of several scripts, marks, emoji, special-token texts."""
    import regex  # type: ignore[import-untyped]

    rng = np.random.default_rng(seed)
    starts = [int(t.split(":")[0], 16) for t in ud.RANGES.split()]
    flags = [int(t.split(":")[1], 16) for t in ud.RANGES.split()]
    odd = [cp for a, b, f in zip(starts, starts[1:], flags, strict=False) for cp in range(a, min(b, a + 50))
           if not 0xD800 <= cp < 0xE000 and any(bool(f & bit) != bool(regex.match(rf"\p{{{c}}}", chr(cp)))
                                                  for c, bit in (("L", 4), ("N", 2), ("P", 32), ("S", 64), ("M", 16)))]
    ws = [0x9, 0xA, 0xB, 0xC, 0xD, 0x20, 0x85, 0xA0, 0x1680, 0x2000, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
          0x1C, 0x1D, 0x1E, 0x1F, 0x180E, 0x200B, 0xFEFF]
    words = ["the", "The", "don't", "WE'LL", "it's", "'s", "'S", "x", "12345", "1234567890", "٣٤٥", "Ⅻ", "½",
             "foo_bar", "a.b", "--", "...", "$", "+=", "<|endoftext|>", "<s>", "</s>", "<unk>", "<|im_start|>",
             "<|end|>", "\\n", "\\x41"]
    marks = [0x301, 0x308, 0x93F, 0x94D, 0xE31, 0x200D, 0xFE0F, 0x1F600, 0x1F468, 0x4E2D, 0xAC00, 0x3042, 0x30A2]
    letters = ["é", "ñ", "Ω", "Ж", "ж", "ß", "İ", "ǅ", "ﬁ", "Ｋ", "ｋ", "ℌ", "𝔘", "١", "߀", "𐒠"]
    parts: list[str] = []
    for _ in range(n):
        k = int(rng.integers(0, 9))
        if k == 0:
            parts.append(chr(int(rng.choice(odd))))
        elif k == 1:
            parts.append(chr(int(rng.choice(ws))) * int(rng.integers(1, 4)))
        elif k == 2:
            cp = int(rng.integers(0x80, 0x30000))
            parts.append(chr(0x4E00 if 0xD800 <= cp < 0xE000 else cp))
        elif k == 3:
            parts.append(str(rng.choice(words)))
        elif k == 4:
            parts.append(" " * int(rng.integers(1, 6)))
        elif k == 5:
            parts.append("\n" * int(rng.integers(1, 3)) + ("\r" if rng.random() < 0.3 else ""))
        elif k == 6:
            parts.append(chr(int(rng.integers(0x21, 0x7F))))
        elif k == 7:
            parts.append(chr(int(rng.choice(marks))))
        else:
            parts.append(str(rng.choice(letters)))
    return "".join(parts)


def _llama_tokenize(vocab: Path, f: Path, parse_special: bool) -> list[int]:
    tool = refs.llama_bin("llama-tokenize")
    if tool is None:
        pytest.skip(refs.why("QTOOL_LLAMA_BIN"))
    cmd = [str(tool), "-m", str(vocab), "-f", str(f), "--ids", "--log-disable"]
    out = subprocess.run(cmd + ([] if parse_special else ["--no-parse-special"]), capture_output=True, text=True,
                         check=True, env={**os.environ, "LC_ALL": "C"}).stdout
    return list(ast.literal_eval(out.strip()))


def _same_as_llama_tokenize(name: str, text: str, tmp_path: Path, parse_special: bool) -> None:
    vocab = _vocab(name)
    f = tmp_path / "text.txt"
    f.write_bytes(text.encode("utf-8"))
    ref = _llama_tokenize(vocab, f, parse_special)
    tok = Tokenizer.from_model(GGUFModel(vocab))
    # llama-tokenize -f: the file verbatim (last newline kept), escapes processed, BOS if the vocab wants it
    ids = tok.encode(process_escapes(f.read_bytes()).decode("utf-8", "surrogateescape"), True, parse_special)
    first = next((i for i, (a, b) in enumerate(zip(ids, ref, strict=False)) if a != b), min(len(ids), len(ref)))
    assert ids == ref, f"{len(ids)} vs {len(ref)} tokens, first difference at {first}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama-bpe", "qwen2"])
def test_pydoc_identical_to_llama_tokenize(name: str, tmp_path: Path) -> None:
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))[:200_000]
    _same_as_llama_tokenize(name, text, tmp_path, parse_special=False)


@pytest.mark.slow
@pytest.mark.parametrize("parse_special", [False, True])
@pytest.mark.parametrize("name", sorted(n for n, ok in LOADS.items() if ok))
def test_stress_text_identical_to_llama_tokenize(name: str, parse_special: bool, tmp_path: Path) -> None:
    _same_as_llama_tokenize(name, stress_text(), tmp_path, parse_special)


# -- without references: what the comparisons pinned ------------------------------------------------------


def _kv(d: dict[str, Any]) -> Any:
    return lambda key, default=None: d.get(key, default)


def _bpe_vocab(tokens: list[str], merges: list[str], pre: str = "gpt-2", **kv: Any) -> Vocab:
    toks = [BYTE_ENCODER[b] for b in range(256)] + tokens
    return Vocab.from_kv(_kv({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": toks,
                              "tokenizer.ggml.merges": merges, **kv}))


def test_bpe_merges_by_priority_queue_not_merge_all() -> None:
    # 'ab a' ranks before 'a b': after the first 'a b' merge, 'ab a' takes the second 'a' before
    # the second 'a b' can (llm_tokenizer_bpe_session; merging every 'a b' at once gives ab ab)
    tok = Tokenizer(_bpe_vocab(["ab", "aba"], ["ab a", "a b"]))
    t = tok.token_to_id
    assert tok.encode("abab", add_special=False) == [t["aba"], t["b"]]


def test_llama3_adds_bos_by_default_and_pre_names_are_llama_cpp_s() -> None:
    v = _bpe_vocab([], [], pre="llama-bpe", **{"tokenizer.ggml.bos_token_id": 65})
    assert v.add_bos and v.bos == 65
    assert not _bpe_vocab([], []).add_bos
    with pytest.raises(TokenizerError, match="pre-tokenizer 'gpt2'"):  # llama.cpp's name is gpt-2
        Tokenizer(_bpe_vocab([], [], pre="gpt2"))


def test_regexes_run_on_llama_cpp_s_unicode_table() -> None:
    # U+0558 is a letter to the `regex` package (newer Unicode), unassigned in llama.cpp's table
    assert regex_split("a\u0558b x\u0558", tkz._PRE_REGEXES["gpt2"]) == ["a", "\u0558", "b", " x", "\u0558"]
    # \x1c..\x1f are not whitespace to llama.cpp, U+0085 and U+3000 are
    assert regex_split("a\x1c\x1cb", tkz._PRE_REGEXES["gpt2"]) == ["a", "\x1c\x1c", "b"]
    assert regex_split("a\x85\u3000b", tkz._PRE_REGEXES["gpt2"]) == ["a", "\x85", "\u3000", "b"]
    assert tkz._collapse_regex("[^\\s\\p{L}]+|\\p{N}") == "[^\\s\xd2A-Za-z]+|[\xd10-9]"
    assert tkz._ecmascript("\\s+$|[$]\\$") == "\\s+\\Z|[$]\\$"


def _spm_vocab(name: str) -> Vocab:
    toks = ["<unk>", "<s>", "</s>", "<|user|>", "\u2581", "a"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3, 4, 1, 1] + [6] * 256
    return Vocab.from_kv(_kv({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": toks,
                              "tokenizer.ggml.token_type": types, "tokenizer.ggml.scores": [0.0] * len(toks),
                              "general.name": name}))


def test_phi3_special_tokens_strip_following_spaces() -> None:
    # llama_vocab::impl::load gives Phi-3's special tokens the rstrip attribute (by model name)
    plain, phi = Tokenizer(_spm_vocab("Llama")), Tokenizer(_spm_vocab("Phi-3 mini"))
    assert plain.encode("<|user|>  a", add_special=False) == [3, 4, 4, 4, 5]
    assert phi.encode("<|user|>  a", add_special=False) == [3, 4, 5]


def test_vocab_only_gguf_without_padding_opens(tmp_path: Path) -> None:
    # llama.cpp's models/ggml-vocab-*.gguf end right after the header, unpadded (gguf.cpp accepts it)
    import gguf

    p = tmp_path / "vocab.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list([BYTE_ENCODER[b] for b in range(256)] + ["Ġt"])
    w.add_token_merges(["Ġ t"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    m = GGUFModel(p)
    end = m.parts[0].header.info_end
    p.write_bytes(p.read_bytes()[:end])
    assert end % 32 and not GGUFModel(p).tensors
    assert Tokenizer.from_model(GGUFModel(p)).encode("a t", add_special=False) == [97, 256]
