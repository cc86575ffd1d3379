"""`qtool mix convert`: rules between qtool's recipe TOML, llama-quantize's --tensor-type-file and
ik_llama.cpp's --custom-q string.

Precedence, checked in the sources: both tools take the FIRST matching rule. Mainline
llama.cpp (src/llama-quant.cpp, llama_tensor_get_type: `for (pattern, qtype) in
tensor_type_patterns: if regex_search(...) { ...; manual = true; break; }`) and ik_llama.cpp
(src/llama-quantize.cpp, llama_tensor_get_type: `for (auto& rule : q_rules) if
(std::regex_search(name, pattern)) { custom_type = rule.second; break; }`) both stop at the
first match, and qtool's recipes do too, so converting keeps the rules in their order. What does
differ, and what conversion has to respect:

- llama-quantize lower-cases the NAME part of every --tensor-type / --tensor-type-file word
  (quantize.cpp parse_tensor_type: std::transform(..., tolower)), so `\\D` becomes `\\d`; ik keeps
  --custom-q patterns as typed. Going to a tensor-type file, `\\D` `\\W` `\\S` outside a character
  class are rewritten `[^\\d]` `[^\\w]` `[^\\s]` (same meaning, lower case); any other upper-case
  character cannot be kept and is refused.
- --tensor-type-file splits on white space and each word at its first '='; --custom-q splits on
  ',' and each item at its first '='. A pattern with white space / ',' / '=' cannot be written in
  that format and is refused (naming the rule).
- The flavour semantics differ (docs/mix.md): in ik_llama.cpp a --custom-q rule replaces the
  mix's choice after the mix ran (its layer counters advance) and --pure ignores the rules; in
  mainline a matching rule skips the mix (counters do not advance) and --pure keeps the rules.
  A recipe's base ftype and [options] have no place in the two text formats: they are reported
  as the command-line options to pass.

Input leniency: a custom-q file may be the shell-script form people share (one rule per line,
`#` comment lines, blank lines, a trailing comma); `--custom-q` and quotes around it are stripped.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .ftypes import IK, MAINLINE
from .options import MixError, TypeRule, parse_ggml_type, parse_tensor_type
from .recipe import Recipe, parse_recipe

RECIPE, TENSOR_TYPE_FILE, CUSTOM_Q = "recipe", "tensor-type-file", "custom-q"
FORMATS = (RECIPE, TENSOR_TYPE_FILE, CUSTOM_Q)
_EXT = {".toml": RECIPE, ".txt": TENSOR_TYPE_FILE, ".cq": CUSTOM_Q, ".sh": CUSTOM_Q}


def format_for_path(path: str | os.PathLike[str]) -> str | None:
    """The rule format of a file from its extension: .toml recipe, .txt tensor-type file, .cq / .sh
    custom-q string; None when the extension says nothing."""
    return _EXT.get(os.path.splitext(os.fspath(path))[1].lower())


@dataclass
class RuleSet:
    """Rules in precedence order (first match wins) plus what only a recipe can hold."""

    rules: list[TypeRule]
    flavour: str = MAINLINE
    base: str | None = None
    description: str = ""
    options: dict[str, object] = field(default_factory=dict)


@dataclass
class Converted:
    """The converted text and the notes to show (lost options, flavour differences)."""

    text: str
    rules: list[TypeRule]
    notes: list[str] = field(default_factory=list)


# --- reading --------------------------------------------------------------------------------------


def parse_custom_q_text(text: str, flavour: str = IK) -> list[TypeRule]:
    """A --custom-q string, or its shared shell-script form (rules on lines, '#' comments)."""
    s = text.strip()
    if s.startswith("--custom-q"):
        s = s[len("--custom-q"):].strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        s = s[1:-1]
    items: list[str] = []
    for line in s.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        items += [x.strip() for x in line.split(",") if x.strip()]
    rules = []
    for item in items:
        if "=" not in item:
            raise MixError(f"--custom-q: invalid custom quantization input {item!r} (expected REGEX=TYPE)")
        pat, qt = item.split("=", 1)
        try:
            t = parse_ggml_type(qt, flavour)
        except MixError as e:
            raise MixError(f"--custom-q: invalid quantization type {qt!r} in {item!r}: {e}") from None
        r = TypeRule(pat, t, "--custom-q")
        r.compile()
        rules.append(r)
    return rules


def parse_tensor_type_text(text: str, flavour: str = MAINLINE, name: str = "file") -> list[TypeRule]:
    """A --tensor-type-file's words (NAME=TYPE, names lower-cased as llama-quantize does)."""
    rules = [parse_tensor_type(w, flavour, source=f"--tensor-type-file {name}:") for w in text.split()]
    for r in rules:
        r.compile()
    return rules


def read_rules(path: str | os.PathLike[str], fmt: str | None = None, flavour: str | None = None) -> RuleSet:
    """Read rules from a file in one of FORMATS (default: from the extension)."""
    fmt = fmt or format_for_path(path)
    if fmt not in FORMATS:
        raise MixError(f"{os.fspath(path)}: cannot tell the rule format from the extension; give --from "
                       f"({', '.join(FORMATS)})", option="--from")
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise MixError(f"{os.fspath(path)}: cannot read: {e.strerror}", path=os.fspath(path)) from None
    except UnicodeDecodeError:
        raise MixError(f"{os.fspath(path)}: not a text file", path=os.fspath(path)) from None
    if fmt == RECIPE:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise MixError(f"{os.fspath(path)}: not valid TOML: {e}") from None
        r: Recipe = parse_recipe(data, source=Path(path).name)
        if flavour is not None and flavour != r.flavour:
            raise MixError(f"{os.fspath(path)}: the recipe is for the {r.flavour} flavour, not {flavour}")
        return RuleSet(list(r.rules), r.flavour, r.base, r.description, dict(r.options))
    if fmt == TENSOR_TYPE_FILE:
        fl = flavour or MAINLINE
        return RuleSet(parse_tensor_type_text(text, fl, Path(path).name), fl)
    fl = flavour or IK
    return RuleSet(parse_custom_q_text(text, fl), fl)


# --- writing --------------------------------------------------------------------------------------

_UPPER_CLASS = {"D": r"[^\d]", "W": r"[^\w]", "S": r"[^\s]"}


def lowercase_safe(pattern: str, label: str) -> str:
    """The pattern rewritten so that lower-casing it (as llama-quantize does) keeps its meaning;
    MixError when that is not possible."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            n = pattern[i + 1]
            if n in _UPPER_CLASS and not in_class:
                out.append(_UPPER_CLASS[n])
            elif n.isupper():
                raise MixError(f"{label}: llama-quantize lower-cases tensor-type patterns, and '\\{n}' cannot be "
                               "written in lower case here: keep this rule in a recipe or a --custom-q string")
            else:
                out.append(c + n)
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        if c.isupper():
            raise MixError(f"{label}: llama-quantize lower-cases tensor-type patterns, so the upper-case {c!r} "
                           "would change the rule's meaning: keep it in a recipe or a --custom-q string")
        out.append(c)
        i += 1
    return "".join(out)


def _label(rules: list[TypeRule], i: int) -> str:
    return f"rule #{i + 1} ({rules[i].pattern}={rules[i].type.lower()})"


def to_tensor_type_file(rules: list[TypeRule]) -> str:
    """One NAME=TYPE word per line (the file --tensor-type-file reads)."""
    lines = []
    for i, r in enumerate(rules):
        label = _label(rules, i)
        pat = lowercase_safe(r.pattern, label)
        if re.search(r"\s", pat) or "=" in pat:
            raise MixError(f"{label}: a --tensor-type-file word cannot hold white space or '=' in its pattern")
        lines.append(f"{pat}={r.type.lower()}")
    return "\n".join(lines) + ("\n" if lines else "")


def to_custom_q(rules: list[TypeRule]) -> str:
    """The --custom-q string (one line)."""
    items = []
    for i, r in enumerate(rules):
        if "," in r.pattern or "=" in r.pattern:
            raise MixError(f"{_label(rules, i)}: a --custom-q pattern cannot hold ',' or '=' (ik_llama.cpp splits "
                           "on them): keep this rule in a recipe")
        if re.search(r"\s", r.pattern):
            raise MixError(f"{_label(rules, i)}: white space in a --custom-q pattern does not survive shell quoting "
                           "and line joining: keep this rule in a recipe")
        items.append(f"{r.pattern}={r.type.lower()}")
    return ",".join(items) + "\n"


def _toml_str(s: str) -> str:
    """A TOML literal string when possible (regexes read best without escapes), else a basic one."""
    if "'" not in s and "\n" not in s:
        return f"'{s}'"
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_recipe(rs: RuleSet, source: str = "") -> str:
    """A recipe TOML (parse_recipe reads it back to the same rules)."""
    lines = []
    if source:
        lines.append(f"# converted by `qtool mix convert` from {source}")
    if rs.base:
        lines.append(f"base = {_toml_str(rs.base)}")
    lines.append(f"flavour = {_toml_str(rs.flavour)}")
    if rs.description:
        lines.append(f"description = {_toml_str(rs.description)}")
    if rs.options:
        lines += ["", "[options]"]
        for k, v in rs.options.items():
            lines.append(f"{k} = {'true' if v is True else 'false' if v is False else _toml_str(str(v).lower())}")
    for i, r in enumerate(rs.rules):
        lines += ["", "[[rules]]" + ("                       # first matching rule wins" if i == 0 else ""),
                  f"pattern = {_toml_str(r.pattern)}", f"type = {_toml_str(r.type.lower())}"]
    return "\n".join(lines) + "\n"


def _option_flags(rs: RuleSet) -> list[str]:
    flags = []
    for k, v in rs.options.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            flags.append(flag)
        elif v is not False:
            flags.append(f"{flag} {str(v).lower()}")
    return flags


def convert(rs: RuleSet, to: str, source: str = "") -> Converted:
    """rs written in format `to`, with notes on what the target format cannot hold."""
    notes: list[str] = []
    if to == RECIPE:
        return Converted(to_recipe(rs, source), list(rs.rules), notes)
    if to not in FORMATS:
        raise MixError(f"unknown rule format {to!r}; valid: {', '.join(FORMATS)}", option="--to")
    text = to_tensor_type_file(rs.rules) if to == TENSOR_TYPE_FILE else to_custom_q(rs.rules)
    lost = ([f"TYPE {rs.base}"] if rs.base else []) + _option_flags(rs)
    if lost:
        notes.append(f"a {to} holds only rules: pass {' '.join(lost)} on the command line")
    if to == TENSOR_TYPE_FILE and rs.flavour == IK:
        notes.append("mainline llama-quantize takes --tensor-type-file; with ik_llama.cpp's types use "
                     "`qtool quantize --flavour ik --tensor-type-file ...` or convert to custom-q")
    if to == CUSTOM_Q and rs.flavour == MAINLINE:
        notes.append("ik_llama.cpp applies --custom-q after its own mix (the mix's layer counters still advance) "
                     "and ignores the rules under --pure; mainline skips the mix for a matched tensor: with the "
                     "same ftype the other tensors' types can differ")
    if to == TENSOR_TYPE_FILE:
        changed = [r.pattern for r in rs.rules if r.pattern != r.pattern.lower()]
        if changed:
            notes.append(f"{len(changed)} pattern(s) rewritten in lower case with the same meaning "
                         "(llama-quantize lower-cases tensor-type patterns)")
    return Converted(text, list(rs.rules), notes)


__all__ = ["CUSTOM_Q", "FORMATS", "RECIPE", "TENSOR_TYPE_FILE", "Converted", "RuleSet", "convert", "format_for_path",
           "lowercase_safe", "parse_custom_q_text", "parse_tensor_type_text", "read_rules", "to_custom_q",
           "to_recipe", "to_tensor_type_file"]
