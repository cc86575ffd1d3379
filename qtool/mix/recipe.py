"""Recipes: a base ftype plus ordered regex rules, in a TOML file (`--recipe FILE.toml`).

    # my-mix.toml
    base = "Q4_K_M"                 # the ftype (TYPE on the command line overrides it)
    flavour = "mainline"            # optional: "mainline" (default) or "ik"
    description = "Q4_K_M, ffn_down one step up"   # optional

    [options]                       # optional; llama-quantize's options, '-' written '_'
    output_tensor_type = "q8_0"
    token_embedding_type = "q8_0"
    pure = false
    leave_output_tensor = false

    [[rules]]                       # first matching rule wins
    pattern = 'ffn_down'            # regex, searched anywhere in the tensor name (re.search)
    type = "q6_k"

    [[rules]]
    pattern = 'blk\\.(0|1)\\.attn_v'
    type = "q8_0"

Rules act like --tensor-type rules (mainline flavour) or --custom-q rules (ik flavour) and
come after the ones given on the command line. Options fill only what the command line left
unset. docs/mix.md has the full precedence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from .ftypes import FLAVOURS, MAINLINE, parse_ftype
from .options import MixError, TypeRule, parse_ggml_type

_TYPE_OPTIONS = (
    "output_tensor_type", "token_embedding_type", "per_layer_token_embedding_type",
    "ffn_gate_inp_type", "attn_q_type", "attn_k_type", "attn_v_type", "attn_qkv_type",
    "attn_output_type", "ffn_gate_type", "ffn_down_type", "ffn_up_type",
)
_BOOL_OPTIONS = ("pure", "leave_output_tensor")
_TOP_KEYS = {"base", "flavour", "description", "options", "rules"}


@dataclass
class Recipe:
    """A parsed recipe. options: {MixOptions field: value}; rules in file order."""

    base: str | None
    flavour: str = MAINLINE
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    rules: list[TypeRule] = field(default_factory=list)
    path: str = ""


def parse_recipe(data: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a recipe given as a dict (the parsed TOML document)."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise MixError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; "
                       f"valid: {', '.join(sorted(_TOP_KEYS))}")
    flavour = data.get("flavour", MAINLINE)
    if flavour not in FLAVOURS:
        raise MixError(f"{source}: flavour must be one of {', '.join(FLAVOURS)}, not {flavour!r}")
    base = data.get("base")
    if base is not None:
        if not isinstance(base, str):
            raise MixError(f"{source}: base must be a string such as \"Q4_K_M\"")
        try:
            base = parse_ftype(base, flavour).name
        except ValueError as e:
            raise MixError(f"{source}: base: {e}") from None
    desc = data.get("description", "")
    if not isinstance(desc, str):
        raise MixError(f"{source}: description must be a string")

    options: dict[str, Any] = {}
    raw_opts = data.get("options", {})
    if not isinstance(raw_opts, dict):
        raise MixError(f"{source}: [options] must be a table")
    for k, v in raw_opts.items():
        key = k.replace("-", "_")
        if key in _TYPE_OPTIONS:
            if not isinstance(v, str):
                raise MixError(f"{source}: options.{k} must be a type name string")
            options[key] = parse_ggml_type(v, flavour)
        elif key in _BOOL_OPTIONS:
            if not isinstance(v, bool):
                raise MixError(f"{source}: options.{k} must be true or false")
            options[key] = v
        else:
            raise MixError(f"{source}: unknown option {k!r}; valid: "
                           f"{', '.join(_BOOL_OPTIONS + _TYPE_OPTIONS)}")

    rules: list[TypeRule] = []
    raw_rules = data.get("rules", [])
    if not isinstance(raw_rules, list):
        raise MixError(f"{source}: rules must be an array of tables ([[rules]])")
    for i, r in enumerate(raw_rules, 1):
        if not isinstance(r, dict):
            raise MixError(f"{source}: rule {i} must be a table with pattern and type")
        extra = set(r) - {"pattern", "type", "comment"}
        if extra:
            raise MixError(f"{source}: rule {i}: unknown key(s) {', '.join(sorted(extra))} "
                           f"(valid: pattern, type, comment)")
        pat, typ = r.get("pattern"), r.get("type")
        if not isinstance(pat, str) or not pat:
            raise MixError(f"{source}: rule {i}: pattern must be a non-empty string")
        if not isinstance(typ, str):
            raise MixError(f"{source}: rule {i}: type must be a type name string")
        try:
            qt = parse_ggml_type(typ, flavour)
        except MixError as e:
            raise MixError(f"{source}: rule {i}: {e}") from None
        rule = TypeRule(pat, qt, f"recipe rule {i}:")
        rule.compile()
        rules.append(rule)
    return Recipe(base=base, flavour=flavour, description=desc, options=options, rules=rules,
                  path=source)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe TOML file; MixError says what is wrong and where."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise MixError(f"--recipe: cannot read {p}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise MixError(f"--recipe {p}: not valid TOML: {e}") from None
    return parse_recipe(data, source=p.name)
