"""Tokenizers from GGUF metadata, token for token equal to llama.cpp's (src/llama-vocab.cpp).

- `gpt2` (byte-level BPE) and `gemma4` (BPE on raw UTF-8 with spaces as U+2581): the pre-tokenizer
  regexes of `llm_tokenizer_bpe` chosen by `tokenizer.ggml.pre`, applied one after the other as
  `unicode_regex_split` does, GPT-2 byte encoding, merges by rank through a priority queue (ties:
  leftmost), as llm_tokenizer_bpe_session.
- `llama` (SentencePiece-style, Gemma): `llm_tokenizer_spm_session`, spaces escaped to U+2581,
  greedy merges of the highest-scoring pair (ties: leftmost), resegmentation through the merge
  history, byte fallback to <0xXX> tokens.

Both first split the text at special tokens as `tokenizer_st_partition` does (longest token
first; user-defined tokens always, control / unknown ones only with parse_special; lstrip /
rstrip attributes), and add BOS / EOS as `llama_vocab::impl::tokenize` with add_special=true.

The regexes are llama.cpp's strings, run as llama.cpp runs them: a regex with Unicode categories
(\\p{L} ...) on the "collapsed" text (every codepoint above 127 replaced by one byte for its
category in llama.cpp's own Unicode table, unicode_data.py; whitespace by \\x0b), with the
categories rewritten to those bytes; any other regex on the codepoints with non-ASCII whitespace
replaced by \\x0b. Both run with ASCII semantics (std::regex ECMAScript in the C locale); the
hand-written splitters llama.cpp uses for the gpt2 / llama3 / qwen2 / qwen35 / newline regexes
match exactly what those regexes match.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import QtoolError
from . import unicode_data as ud

# llama_token_type (GGUF tokenizer.ggml.token_type)
TT_UNDEFINED, TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = 0, 1, 2, 3, 4, 5, 6
# llama_token_attr bits
A_UNKNOWN, A_UNUSED, A_NORMAL, A_CONTROL, A_USER_DEFINED, A_BYTE = 1, 2, 4, 8, 16, 32
A_LSTRIP, A_RSTRIP = 128, 256
_TYPE_ATTR = {TT_UNKNOWN: A_UNKNOWN, TT_UNUSED: A_UNUSED, TT_NORMAL: A_NORMAL, TT_CONTROL: A_CONTROL,
              TT_USER_DEFINED: A_USER_DEFINED, TT_BYTE: A_BYTE}

# llm_tokenizer_bpe: the regexes of each pre-tokenizer type, verbatim (C string escapes = Python's)
_PRE_REGEXES: dict[str, tuple[str, ...]] = {
    "llama3": (  # llama3
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
        "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
    "jais2": (  # jais2
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
        "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s{512}(?!\\S)|\\s{256}(?!\\S)|\\s{128}(?!\\S)"
        "|\\s{64}(?!\\S)|\\s{32}(?!\\S)|\\s{16}(?!\\S)|\\s{8}(?!\\S)|\\s{4}(?!\\S)|\\s{1,2}(?!\\S)|\\s{1}",
    ),
    "dbrx": (  # dbrx, smaug
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
        "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
    "deepseek_llm": (  # deepseek_llm
        "[\r\n]",
        "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",  # noqa: E501
        "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
        "\\s+$",
        "[一-龥ࠀ-一가-퟿]+",
        "\\p{N}+",
    ),
    "deepseek3_llm": (  # deepseek3_llm, hunyuan_dense, joyai_llm, hy_v4
        "\\p{N}{1,3}",
        "[一-龥぀-ゟ゠-ヿ]+",
        "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
        "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
    ),
    "spark2_5": (  # spark2_5
        "\\p{N}{1,3}",
        "[一-龥぀-ゟ゠-ヿ]+",
        "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
        "| ?[\\p{P}\\p{S}]+|[\r\n]|\\s+(?!\\S)|\\s+",
        "\\p{N}",
    ),
    "youtu": (  # youtu
        "[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥぀-ゟ゠-ヿ]+",
        "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?:'[sS]"
        "|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
        "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?:'[sS]"
        "|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*"
        "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
    "deepseek_coder": (  # deepseek_coder
        "[\r\n]",
        "\\s?\\p{L}+",
        "\\s?\\p{P}+",
        "[一-龥ࠀ-一가-퟿]+",
        "\\p{N}",
    ),
    "falcon": (  # falcon
        "[\\p{P}\\$\\+<=>\\^~\\|`]+",
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
        "[0-9][0-9][0-9]",
    ),
    "starcoder": (  # starcoder, refact, command_r, smollm, codeshell, exaone, minerva, mellum2
        "\\p{N}",
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
    ),
    "gpt2": (  # gpt2, mpt, olmo, jais, trillion, granite_docling
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
    ),
    "qwen2": (  # stablelm2, qwen2, hunyuan, solar_open
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
        "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
    "qwen35": (  # qwen35
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+"
        "|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
    "poro": (  # poro, bloom, gpt3_finnish
        " ?[^(\\s|.,!?…。，、।۔،)]+",
    ),
    "chatglm4": (  # chatglm4
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
        "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
    "viking": (  # viking
        " ?[^(\\s|.,!?…。，、।۔،)]+",
        "\\p{N}",
    ),
    "tekken": (  # tekken
        "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+"
        "|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}"
        "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
    "chameleon": (  # chameleon
        "<sentinel:[0-9]+>",
        "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
        "([\\t\\n]|    |  )",
        "\\p{N}",
        "[\\p{P}!-/:-@\\[-`{-~]",
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
    ),
    "gpt4o": (  # gpt4o, minimax_m2
        "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]"
        "|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
        "|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]"
        "|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+"
        "|\\s+(?!\\S)|\\s+",
    ),
    "granite_emb_multi": (  # granite_emb_multi
        "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}\\p{M}])([^a-z]))*((?=[\\p{L}\\p{M}])([^A-Z]))+(?:'[sS]|'[tT]"
        "|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
        "|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}\\p{M}])([^a-z]))+((?=[\\p{L}\\p{M}])([^A-Z]))*(?:'[sS]|'[tT]"
        "|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*"
        "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
    "bailingmoe": (  # bailingmoe
        "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
        "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",
    ),
    "seed_coder": (  # seed_coder
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}"
        "| ?[^\\s\\p{L}\\p{N}\\r\\n]+|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
    "ufakzeka": (  # ufakzeka
        "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
    "grok_2": (  # grok_2
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
        "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
    "laguna": (  # laguna
        "[^\\n]+|[\\n]+",
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
        "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
    "exaone_moe": (  # exaone_moe
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
        "|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?"
        "|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",
    ),
    "gemma4": (  # gemma4
        "[^\\n]+|[\\n]+",
    ),
    "sarvam_moe": (  # sarvam_moe
        "[^\\n]+|[\\n]+",
    ),
    "minicpm5": (  # minicpm5
        "\\p{N}{1,3}",
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+"
        "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
    "default": (  # default
        "[\\p{P}\\$\\+<=>\\^~\\|]+",
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
        "\\p{N}+",
        "[0-9][0-9][0-9]",
    ),
}


@dataclass(frozen=True)
class PreTokenizer:
    """What llama_vocab::impl::load sets for one tokenizer.ggml.pre name."""

    regexes: str  # key of _PRE_REGEXES
    ignore_merges: bool = False
    add_bos: bool = False  # the default of tokenizer.ggml.add_bos_token
    no_bos: bool = False  # special_bos_id = LLAMA_TOKEN_NULL
    escape_whitespaces: bool = False  # spaces -> U+2581 before the pre-tokenizer (and no byte encoding)


def _names(regexes: str, names: str, **kw: bool) -> dict[str, PreTokenizer]:
    return {n: PreTokenizer(regexes, **kw) for n in names.split()}


# llama_vocab::impl::load: tokenizer.ggml.pre -> pre-tokenizer (those not listed are refused, as are
# llama.cpp's hand-written ones qtool lacks: kimi-k2, afmoe, tiny_aya, cohere2moe, superbpe, whitespace)
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    **_names("default", "default"),
    **_names("minicpm5", "minicpm5", ignore_merges=True),
    **_names("llama3", "llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano",
             ignore_merges=True, add_bos=True),
    **_names("deepseek_llm", "deepseek-llm"),
    **_names("deepseek_coder", "deepseek-coder"),
    **_names("deepseek3_llm", "deepseek-v3 hunyuan-dense hy_v4 joyai-llm"),
    **_names("spark2_5", "spark2_5"),
    **_names("youtu", "youtu", ignore_merges=True),
    **_names("falcon", "falcon"),
    **_names("gpt2", "mpt gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum modern-bert "
             "jina-v1-en jina-v2-code roberta-bpe olmo jais exaone4 trillion granite-docling"),
    **_names("starcoder", "starcoder refact command-r smollm codeshell exaone minerva-7b mellum2"),
    **_names("jais2", "jais-2"),
    **_names("gemma4", "gemma4 granite-embed-multi-311m", escape_whitespaces=True),
    **_names("sarvam_moe", "sarvam-moe", escape_whitespaces=True),
    **_names("qwen2", "qwen2 deepseek-r1-qwen kormo f2llmv2 stablelm2 megrez hunyuan solar-open"),
    **_names("qwen35", "qwen35"),
    **_names("dbrx", "dbrx smaug-bpe"),
    **_names("poro", "poro-chat bloom gpt3-finnish"),
    **_names("chatglm4", "chatglm-bpe", no_bos=True),
    **_names("chatglm4", "glm4 glm5", no_bos=True, ignore_merges=True),
    **_names("viking", "viking"),
    **_names("tekken", "tekken", ignore_merges=True, add_bos=True),
    **_names("chameleon", "chameleon", add_bos=True),
    **_names("gpt4o", "gpt-4o llama4 kanana2 talkie minimax-m2"),
    **_names("granite_emb_multi", "granite-embed-multi-97m", ignore_merges=True),
    **_names("bailingmoe", "bailingmoe bailingmoe2 llada-moe"),
    **_names("seed_coder", "seed-coder"),
    **_names("ufakzeka", "ufakzeka"),
    **_names("grok_2", "grok-2"),
    **_names("laguna", "laguna"),
    **_names("exaone_moe", "exaone-moe"),
}

# -- unicode_regex_split --------------------------------------------------------------------------

# unicode.cpp k_ucat_enum / k_ucat_cpt / k_ucat_map
_UCAT = {"\\p{N}": ud.NUMBER, "\\p{L}": ud.LETTER, "\\p{P}": ud.PUNCTUATION, "\\p{M}": ud.ACCENT_MARK,
         "\\p{S}": ud.SYMBOL, "\\p{Lu}": ud.LETTER, "\\p{Ll}": ud.LETTER, "\\p{Lt}": ud.LETTER,
         "\\p{Lm}": ud.LETTER, "\\p{Lo}": ud.LETTER}
_UCAT_CPT = {ud.NUMBER: 0xD1, ud.LETTER: 0xD2, ud.PUNCTUATION: 0xD3, ud.ACCENT_MARK: 0xD4, ud.SYMBOL: 0xD5}
_UCAT_MAP = {ud.NUMBER: "0-9", ud.LETTER: "A-Za-z", ud.PUNCTUATION: "!-#%-*,-/:-;?-@\\[-\\]_\\{\\}",
             ud.ACCENT_MARK: "", ud.SYMBOL: "\\$\\+<->^`\\|\\~"}


@lru_cache(maxsize=1)
def _cpt_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per codepoint: the collapsed character (unicode_regex_split's text_collapsed) and the
    character std::wregex sees (non-ASCII whitespace as \\x0b)."""
    starts, flags = zip(*((int(a, 16), int(b, 16)) for a, b in (t.split(":") for t in ud.RANGES.split())),
                        strict=True)
    f = np.repeat(np.asarray(flags[:-1], np.uint16), np.diff(np.asarray(starts)))
    cat = np.full(256, 0xD0, np.uint32)
    for k, v in _UCAT_CPT.items():
        cat[k] = v
    cp = np.arange(len(f), dtype=np.uint32)
    ws = np.zeros(len(f), bool)
    ws[list(ud.WHITESPACE)] = True
    collapsed = np.where(cp < 128, cp, np.where(ws, 0x0B, cat[f & 0xFF]))
    wide = np.where((cp > 0x7F) & ws, 0x0B, cp)
    return collapsed.astype(np.uint32), wide.astype(np.uint32)


def _collapse_regex(rx: str) -> str:
    """unicode_regex_split: the regex for the collapsed text (\\p{..} -> its byte and ASCII range)."""
    out: list[str] = []
    inside = False
    i = 0
    while i < len(rx):
        c = rx[i]
        if c == "[" and (i == 0 or rx[i - 1] != "\\"):
            out.append("[")
            inside = True
        elif inside and c == "]" and rx[i - 1] != "\\":
            out.append("]")
            inside = False
        elif c == "\\" and i + 3 < len(rx) and rx[i + 1] == "p" and rx[i + 2] == "{":
            j = rx.find("}", i + 3)
            if j != -1 and j <= i + 10 and rx[i:j + 1] in _UCAT:
                cat = _UCAT[rx[i:j + 1]]
                body = chr(_UCAT_CPT[cat]) + _UCAT_MAP[cat]
                out.append(body if inside else f"[{body}]")
                i = j
            else:
                out.append(c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _ecmascript(rx: str) -> str:
    """The few ECMAScript spellings Python's re reads differently: `$` (end of input only) -> \\Z."""
    out: list[str] = []
    inside = esc = False
    for c in rx:
        if esc:
            esc = False
        elif c == "\\":
            esc = True
        elif c == "[" and not inside:
            inside = True
        elif c == "]" and inside:
            inside = False
        elif c == "$" and not inside:
            out.append("\\Z")
            continue
        out.append(c)
    return "".join(out)


@dataclass(frozen=True)
class _Split:
    rx: re.Pattern[str]
    collapsed: bool  # runs on the collapsed text, else on the wide text


@lru_cache(maxsize=64)
def _compile(rx: str) -> _Split:
    if any(u in rx for u in _UCAT):
        if any(ord(c) >= 128 for c in rx):
            raise TokenizerError(f"regex with Unicode categories and non-ASCII characters: {rx!r}")
        return _Split(re.compile(_ecmascript(_collapse_regex(rx)), re.ASCII), True)
    return _Split(re.compile(_ecmascript(rx), re.ASCII), False)


def regex_split(text: str, regexes: Sequence[str]) -> list[str]:
    """unicode_regex_split without the byte encoding: each regex splits every piece of the
    previous one into its matches and the text between them."""
    if not text:
        return []
    collapsed_t, wide_t = _cpt_tables()
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    views: dict[bool, str] = {}
    spans = [(0, len(text))]
    for r in regexes:
        sp = _compile(r)
        if sp.collapsed not in views:
            tab = collapsed_t if sp.collapsed else wide_t
            views[sp.collapsed] = tab[cps].astype("<u4").tobytes().decode("utf-32-le")
        view = views[sp.collapsed]
        nxt: list[tuple[int, int]] = []
        for s0, e0 in spans:
            pos = 0
            for m in sp.rx.finditer(view[s0:e0]):
                s, e = m.span()
                if s > pos:
                    nxt.append((s0 + pos, s0 + s))
                if e > s:
                    nxt.append((s0 + s, s0 + e))
                pos = e
            if pos < e0 - s0:
                nxt.append((s0 + pos, e0))
        spans = nxt
    return [text[s:e] for s, e in spans]


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
_SURROGATES = re.compile("[\udc80-\udcff]")
_C_SPACE = " \t\n\v\f\r"  # isspace() in the C locale

# llama_vocab::impl::load: tokens that get the CONTROL attribute by their text
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
              "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
              "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
              "<｜end▁of▁sentence｜>", "[e~[")
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_FIM_KEYS = {"fim_pre": ("fim_pre", "prefix"), "fim_suf": ("fim_suf", "suffix"), "fim_mid": ("fim_mid", "middle"),
             "fim_pad": ("fim_pad",), "fim_rep": ("fim_rep",), "fim_sep": ("fim_sep",)}


class TokenizerError(QtoolError):
    """A GGUF file whose tokenizer metadata qtool cannot use."""


@dataclass
class Vocab:
    """The tokenizer keys of a GGUF file (defaults as llama_vocab::impl::load)."""

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
    name: str = ""  # general.name (per-token attributes depend on it)
    arch: str = ""  # general.architecture
    special_keys: frozenset[str] = field(default_factory=frozenset)  # tokenizer.ggml.*_token_id keys present

    @classmethod
    def from_kv(cls, kv: Any) -> Vocab:
        """From a getter `kv(key, default)` (GGUFModel.kv)."""
        model = str(kv("tokenizer.ggml.model", ""))
        toks = kv("tokenizer.ggml.tokens")
        if not model or toks is None:
            raise TokenizerError("the model has no tokenizer (tokenizer.ggml.model / tokens missing)")
        n = len(toks)
        types = np.asarray(kv("tokenizer.ggml.token_type", np.full(n, TT_NORMAL)), dtype=np.int32)
        sc = kv("tokenizer.ggml.scores")
        pre = str(kv("tokenizer.ggml.pre", "") or "")
        if model == "gemma4":
            pre = "gemma4"
        bos: int | None
        eos: int | None
        if model == "llama":
            bos, eos, add_bos, add_space = 1, 2, True, True
        elif model in ("gpt2", "gemma4"):
            bos, eos = (11, 11) if model == "gpt2" else (None, None)
            p = PRE_TOKENIZERS.get(pre or "default")
            add_bos, add_space = p is not None and p.add_bos, False
            if p is not None and p.no_bos:
                bos = None
        else:
            bos, eos, add_bos, add_space = None, None, False, False
        bos = bos if bos is not None and bos < n else None  # "default special token out of vocab range"
        eos = eos if eos is not None and eos < n else None
        kb, ke = kv("tokenizer.ggml.bos_token_id"), kv("tokenizer.ggml.eos_token_id")
        if kb is not None and 0 <= int(kb) < n:
            bos = int(kb)
        if ke is not None and 0 <= int(ke) < n:
            eos = int(ke)
        add_bos = bool(kv("tokenizer.ggml.add_bos_token", add_bos))
        pt = PRE_TOKENIZERS.get(pre or "default")
        if model in ("gpt2", "gemma4") and pt is not None and pt.regexes == "gemma4":
            add_bos = True  # llama.cpp's Gemma 4 override
        keys = frozenset(k for k in ("eot", "eom", "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep",
                                     "prefix", "suffix", "middle")
                         if kv(f"tokenizer.ggml.{k}_token_id") is not None)
        return cls(model=model, pre=pre, tokens=list(toks), types=types,
                   scores=None if sc is None else np.asarray(sc, dtype=np.float32),
                   merges=list(kv("tokenizer.ggml.merges", []) or []), bos=bos, eos=eos, add_bos=add_bos,
                   add_eos=bool(kv("tokenizer.ggml.add_eos_token", False)),
                   add_space_prefix=bool(kv("tokenizer.ggml.add_space_prefix", add_space)),
                   name=str(kv("general.name", "") or ""), arch=str(kv("general.architecture", "") or ""),
                   special_keys=keys)


class Tokenizer:
    """llama.cpp's tokenizer for one vocabulary: `encode(text, add_special=True, parse_special=False)`."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = v = vocab
        if v.model not in ("gpt2", "llama", "gemma4"):
            raise TokenizerError(f"tokenizer model {v.model!r} is not supported (gpt2, gemma4 and llama are)")
        # llama_vocab::impl::load: empty tokens get a placeholder text; token_to_id[word] = i in
        # order, so the last duplicate wins
        self.texts = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(v.tokens)]
        self.token_to_id: dict[str, int] = {}
        for i, t in enumerate(self.texts):
            self.token_to_id[t] = i
        self.attrs = self._attributes()
        if v.model == "llama":
            if v.scores is None:
                raise TokenizerError("SentencePiece vocabulary without tokenizer.ggml.scores")
            self._spm_cache: dict[str, list[int]] = {}
        else:
            pre = PRE_TOKENIZERS.get(v.pre or "default")
            if pre is None:
                raise TokenizerError(f"BPE pre-tokenizer {v.pre!r} is not supported "
                                     f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})")
            self.pre = pre
            self._regexes = _PRE_REGEXES[pre.regexes]
            for rx in self._regexes:
                _compile(rx)  # fails early on a regex Python cannot compile
            self._byte_encode = not pre.escape_whitespaces
            self._ranks: dict[tuple[str, str], int] = {}
            for r, m in enumerate(v.merges):
                pos = m.find(" ", 1)  # llama.cpp: word.find(' ', 1); no space -> ("", "")
                key = (m[:pos], m[pos + 1:]) if pos >= 0 else ("", "")
                self._ranks.setdefault(key, r)
            self._word_cache: dict[str, list[int]] = {}

    @classmethod
    def from_model(cls, model: Any) -> Tokenizer:
        return cls(Vocab.from_kv(model.kv))

    # -- special tokens -------------------------------------------------------------------------

    def _attributes(self) -> np.ndarray:
        """llama_vocab::impl::load: token attributes from the types, the text-based CONTROL
        overrides (EOG / FIM tokens), llama.cpp's gpt-oss / gemma4 fixes, the lstrip / rstrip
        rules by model name; and the special-token cache (longest text first)."""
        v, t2i = self.vocab, self.token_to_id
        types = np.asarray(v.types[:len(v.tokens)], dtype=np.int64)
        if len(types) < len(v.tokens):
            raise TokenizerError("tokenizer.ggml.token_type is shorter than the token list")
        lut = np.zeros(8, np.int32)  # other types: LLAMA_TOKEN_ATTR_UNDEFINED
        for k, a in _TYPE_ATTR.items():
            lut[k] = a
        attrs = lut[np.where((types >= 0) & (types < 8), types, 0)]

        def mark(texts: Sequence[str]) -> None:
            for t in texts:
                if t in t2i:
                    attrs[t2i[t]] |= A_CONTROL

        mark(_EOG_TEXTS)
        for kind, texts in _FIM_TEXTS.items():
            # only while the id is not in the metadata; llama.cpp marks the first match in its hash
            # map order, qtool every match (the same unless a vocabulary has two of them)
            if not any(k in v.special_keys for k in _FIM_KEYS[kind]):
                mark(texts)
        for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):  # gpt-oss
            if t in t2i:
                attrs[t2i[t]] = A_USER_DEFINED
        has = set(_EOG_TEXTS) & t2i.keys()
        if "<|end|>" in has and ((("<|call|>" in has or "<|calls|>" in has) and "<|return|>" in has)
                                 or (("<|call|>" in has or "<|calls|>" in has) and "<|flush|>" in has)):
            attrs[t2i["<|end|>"]] = A_USER_DEFINED
        eos_texts = {self.texts[i] for i in (v.eos,) if i is not None}
        if "</s>" in has and ("<|tool_response>" in has or "<|plamo:eos|>" in eos_texts):
            attrs[t2i["</s>"]] = A_NORMAL
        special = [i for i in range(len(v.tokens)) if attrs[i] & (A_CONTROL | A_USER_DEFINED | A_UNKNOWN)]
        # std::sort by byte length, longest first (not stable; equal lengths rarely overlap)
        self._special = sorted(special, key=lambda i: -len(self.texts[i].encode("utf-8", "surrogateescape")))
        name = v.name.encode("utf-8", "replace").lower().decode("utf-8", "replace")  # std::tolower: ASCII only
        if any(s in v.pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
                any(s in v.arch for s in ("nomic-bert-moe", "jina-bert-v3")):
            if "<mask>" in t2i:
                attrs[t2i["<mask>"]] |= A_LSTRIP
        elif "phi-3" in name or "phi3" in name:
            for i in self._special:
                attrs[i] |= A_RSTRIP
            if "</s>" in t2i:
                attrs[t2i["</s>"]] |= A_RSTRIP
            for t in ("<unk>", "<s>", "<|endoftext|>"):
                if t in t2i:
                    attrs[t2i[t]] &= ~A_RSTRIP
        elif "modern-bert" in name and "[MASK]" in t2i:
            attrs[t2i["[MASK]"]] |= A_LSTRIP
        return attrs

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """tokenizer_st_partition: text fragments (str) and special token ids (int)."""
        frags: list[str | int] = [text]
        for sid in self._special:
            attr = int(self.attrs[sid])
            if not parse_special and attr & (A_CONTROL | A_UNKNOWN):
                continue
            tok = self.texts[sid]
            if tok not in text:
                continue
            out: list[str | int] = []
            for f in frags:
                if isinstance(f, int) or tok not in f:
                    out.append(f)
                    continue
                cur = f
                while True:
                    m = cur.find(tok)
                    if m < 0:
                        out.append(cur)
                        break
                    left = cur[:m].rstrip(_C_SPACE) if attr & A_LSTRIP else cur[:m]
                    if left:
                        out.append(left)
                    out.append(sid)
                    cur = cur[m + len(tok):]
                    if cur and attr & A_RSTRIP:
                        cur = cur.lstrip(_C_SPACE)
                    if not cur:
                        break
            frags = out
        return frags

    # -- public ---------------------------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """llama_tokenize(text, add_special, parse_special)."""
        v = self.vocab
        out: list[int] = []
        frags = self._partition(text, parse_special) if text else []
        if add_special and v.add_bos:
            if v.bos is None:
                raise TokenizerError("the vocabulary asks for a BOS token but has none")
            out.append(v.bos)
        if v.model == "llama":
            prev_special = True
            for f in frags:
                if isinstance(f, int):
                    out.append(f)
                    prev_special = True
                    continue
                t = (" " if v.add_space_prefix and prev_special else "") + f
                out.extend(self._spm(t.replace(" ", "\u2581")))
                prev_special = False
        else:
            for f in frags:
                if isinstance(f, int):
                    out.append(f)
                else:
                    self._bpe_text(f.replace(" ", "\u2581") if self.pre.escape_whitespaces else f, out)
        if add_special and v.add_eos:
            if v.eos is None:
                raise TokenizerError("the vocabulary asks for an EOS token but has none")
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
        """unicode_regex_split with this vocabulary's regexes (pieces before the byte encoding)."""
        return regex_split(_SURROGATES.sub("\ufffd", text), self._regexes)

    def _bpe_text(self, text: str, out: list[int]) -> None:
        cache = self._word_cache
        for word in self.pretokenize(text):  # invalid UTF-8: unicode_cpts_from_utf8 gives U+FFFD
            ids = cache.get(word)
            if ids is None:
                enc = "".join(BYTE_ENCODER[b] for b in word.encode("utf-8")) if self._byte_encode else word
                ids = self.bpe_word(enc)
                if len(cache) < 1_000_000:
                    cache[word] = ids
            out.extend(ids)

    def bpe_word(self, word: str) -> list[int]:
        """llm_tokenizer_bpe_session::tokenize for one pre-tokenized (byte-encoded) word: a
        priority queue of (rank, left) bigrams, stale entries skipped."""
        t2i = self.token_to_id
        if word in t2i and (self.pre.ignore_merges
                            or (self.pre.regexes == "gemma4" and not word.strip("\n"))):
            return [t2i[word]]
        ranks = self._ranks
        txt = list(word)
        n = len(txt)
        nxt = list(range(1, n)) + [-1]
        prv = list(range(-1, n - 1))
        heap: list[tuple[int, int, int, str]] = []

        def add(a: int, b: int) -> None:
            if a >= 0 and b >= 0:
                r = ranks.get((txt[a], txt[b]))
                if r is not None:
                    heapq.heappush(heap, (r, a, b, txt[a] + txt[b]))

        for i in range(1, n):
            add(i - 1, i)
        while heap:
            _, a, b, s = heapq.heappop(heap)
            if not txt[a] or not txt[b] or txt[a] + txt[b] != s:
                continue
            txt[a], txt[b] = s, ""
            nxt[a] = nxt[b]
            if nxt[b] >= 0:
                prv[nxt[b]] = a
            add(prv[a], a)
            add(a, nxt[a])
        ids: list[int] = []
        i = 0 if n else -1
        while i != -1:
            s = txt[i]
            tid = t2i.get(s)
            if tid is not None:
                ids.append(tid)
            else:  # llama.cpp looks up each byte of the symbol's text
                for ch in s.encode("utf-8"):
                    t = (t2i.get(chr(ch)) if ch < 0x80 else None) if self._byte_encode else t2i.get(f"<0x{ch:02X}>")
                    if t is not None:
                        ids.append(t)
            i = nxt[i]
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
