"""`qtool mix extract`: a recipe (qtool/mix/recipe.py's TOML format) that reproduces a quantized
file's per-tensor types when its source model is quantized with it.

The recipe keeps the file's ftype (general.file_type) as `base` and adds `[[rules]]` for the
tensors whose type differs from what that ftype's own mix would choose. A rule changes
llama-quantize's layer counters (an overridden tensor does not advance them), so the rules are
found by re-planning until nothing differs: the recipe is checked with the same planner
`qtool quantize --recipe` uses before it is returned. `full=True` writes a rule for every
quantized tensor instead. Layer ranges are folded into one anchored regex per tensor kind and
type: `^blk\\.(?:[0-2]|1[0-5])\\.ffn_down\\.weight$`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tomllib

from ..gguf_io import GGUFModel
from ..quants.types import IK, MAINLINE, get_type
from . import MixError, MixOptions, ModelInfo, TensorSpec, parse_ftype, parse_recipe, plan
from .ftypes import FType, ftype_table

FLOAT_NAMES = ("F32", "F16", "BF16")
_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")
MAX_ROUNDS = 64


# --- regex folding -----------------------------------------------------------------------------

def _same_len(lo: str, hi: str) -> list[str]:
    """Regex alternatives matching the decimal strings lo..hi (equal lengths, lo <= hi)."""
    if lo == hi:
        return [lo]
    k = len(lo) - 1
    if k == 0:
        return [f"[{lo}-{hi}]" if int(hi) > int(lo) + 1 else f"[{lo}{hi}]"]
    if lo[0] == hi[0]:
        return [lo[0] + p for p in _same_len(lo[1:], hi[1:])]
    if lo[1:] == "0" * k and hi[1:] == "9" * k:
        return [_same_len(lo[0], hi[0])[0] + "[0-9]" * k]
    out: list[str] = []
    a, b = int(lo[0]), int(hi[0])
    if lo[1:] != "0" * k:
        out += _same_len(lo, lo[0] + "9" * k)
        a += 1
    if hi[1:] != "9" * k:
        mid_hi = b - 1
        tail = _same_len(hi[0] + "0" * k, hi)
    else:
        mid_hi = b
        tail = []
    if a <= mid_hi:
        out += _same_len(str(a) + "0" * k, str(mid_hi) + "9" * k)
    return out + tail


def range_regex(a: int, b: int) -> list[str]:
    """Regex alternatives matching exactly the integers a..b written without leading zeros."""
    out: list[str] = []
    length = len(str(a))
    while a <= b:
        hi = min(b, 10 ** length - 1)
        out += _same_len(str(a), str(hi))
        a, length = hi + 1, length + 1
    return out


def runs(nums: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive integers: [0,1,2,5] -> [(0,2),(5,5)]."""
    out: list[tuple[int, int]] = []
    for n in sorted(set(nums)):
        if out and n == out[-1][1] + 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def layers_regex(layers: list[int]) -> str:
    alts = [p for a, b in runs(layers) for p in range_regex(a, b)]
    return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"


def fold_names(names: list[str]) -> list[str]:
    """Anchored regexes matching exactly `names`: one per tensor kind (the name after blk.N.),
    with the layer numbers folded; names outside the blocks get one exact pattern each."""
    by_kind: dict[str, list[int]] = {}
    order: list[tuple[int, str]] = []
    out_other: list[str] = []
    for n in names:
        m = _BLK.match(n)
        if not m:
            out_other.append("^" + re.escape(n) + "$")
            continue
        kind = m.group(2)
        if kind not in by_kind:
            by_kind[kind] = []
            order.append((int(m.group(1)), kind))
        by_kind[kind].append(int(m.group(1)))
    out = list(out_other)
    for _, kind in sorted(order):
        out.append(r"^blk\." + layers_regex(by_kind[kind]) + r"\." + re.escape(kind) + "$")
    return out


# --- TOML --------------------------------------------------------------------------------------

def _toml_str(s: str) -> str:
    """A TOML string: literal ('...') when possible (regexes keep their backslashes), else basic."""
    if "'" not in s and "\n" not in s:
        return f"'{s}'"
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@dataclass
class Rule:
    pattern: str
    type: str  # lower-case GGML type name
    tensors: list[str]


def recipe_toml(base: str, flavour: str, description: str, rules: list[Rule], header: Sequence[str] = (),
                options: dict[str, object] | None = None) -> str:
    lines = [f"# {h}" for h in header]
    lines += [f"base = {_toml_str(base)}", f"flavour = {_toml_str(flavour)}",
              f"description = {_toml_str(description)}"]
    if options:
        lines += ["", "[options]"]
        for k, v in options.items():
            lines.append(f"{k} = {'true' if v is True else 'false' if v is False else _toml_str(str(v))}")
    for r in rules:
        n = len(r.tensors)
        lines += ["", "[[rules]]", f"pattern = {_toml_str(r.pattern)}", f"type = {_toml_str(r.type)}",
                  f"comment = {_toml_str(f'{n} tensor' + ('s' if n != 1 else ''))}"]
    return "\n".join(lines) + "\n"


# --- extraction --------------------------------------------------------------------------------

@dataclass
class Extracted:
    """The recipe text and what it was built from."""

    toml: str
    base: str
    flavour: str
    rules: list[Rule]
    n_tensors: int
    verified: bool
    mismatches: list[str] = field(default_factory=list)  # tensors the recipe does not reproduce
    notes: list[str] = field(default_factory=list)


def model_kv(model: GGUFModel) -> dict[str, object]:
    """The KV pairs as python values (arrays as lists), as ModelInfo.from_kv wants them."""
    out: dict[str, object] = {}
    for kv in model.kvs:
        v = kv.value
        out[kv.key] = v.tolist() if isinstance(v, np.ndarray) else v
    return out


def source_specs(model: GGUFModel) -> list[TensorSpec]:
    """The tensors as the source model had them, as far as the file tells: float tensors keep
    their type, quantized ones are taken to have been F16."""
    specs = []
    for t in model.tensors:
        src = t.qtype.name if t.qtype.name in FLOAT_NAMES else "F16"
        specs.append(TensorSpec(t.name, tuple(t.shape), src, t.part, t.offset))
    return specs


def detect_flavour(model: GGUFModel) -> str:
    """ik when a tensor has a type only ik_llama.cpp knows, else mainline."""
    return IK if any(t.qtype.flavour == IK for t in model.tensors) else MAINLINE


def base_ftype(model: GGUFModel, flavour: str) -> FType:
    """The file's ftype (general.file_type), or the plain ftype of its most common quantized type."""
    ft = model.kv("general.file_type")
    if ft is not None:
        try:
            f = parse_ftype(int(ft) & ~1024, flavour)
        except ValueError:
            pass
        else:  # the enum's own name (Q4_K_M), not an alias that shares its id (Q4_K)
            try:
                return parse_ftype(f.key, flavour)
            except ValueError:
                return f
    counts: dict[str, int] = {}
    for t in model.tensors:
        if t.qtype.quantized:
            counts[t.qtype.name] = counts.get(t.qtype.name, 0) + t.n_elements
    if counts:
        common = max(counts, key=lambda k: counts[k])
        for f in ftype_table(flavour):
            if f.default_type == common:
                return f
    return parse_ftype("F16", flavour)


def _plan_types(specs: list[TensorSpec], info: ModelInfo, toml: str, flavour: str,
                has_imatrix: bool) -> dict[str, str]:
    recipe = parse_recipe(tomllib.loads(toml), "extracted recipe")
    p = plan(specs, info, None, MixOptions(flavour=flavour, recipe=recipe, has_imatrix=has_imatrix))
    return {d.name: d.type for d in p}


def extract_recipe(path: str, flavour: str | None = None, base: str | None = None, full: bool = False
                   ) -> Extracted:
    """Build (and check) the recipe reproducing the per-tensor types of the GGUF file at path."""
    model = GGUFModel(path, flavour=flavour or MAINLINE)
    try:
        fl = flavour or detect_flavour(model)
        ft = parse_ftype(base, fl) if base else base_ftype(model, fl)
        kv = model_kv(model)
        info = ModelInfo.from_kv(kv)
        has_imatrix = any(k.startswith("quantize.imatrix.") for k in kv)
        specs = source_specs(model)
        actual = {t.name: t.qtype.name for t in model.tensors}
        n_tensors = len(model.tensors)
    finally:
        model.close()
    notes = []
    if has_imatrix:
        notes.append("the file was made with an importance matrix: quantize with one (--imatrix) to reproduce it")
    header = [f"extracted by qtool mix extract from {path}"]

    def build(overridden: set[str]) -> tuple[str, list[Rule]]:
        by_type: dict[str, list[str]] = {}
        for t in specs:  # file order
            if t.name in overridden:
                by_type.setdefault(actual[t.name], []).append(t.name)
        rules = []
        for typ, names in by_type.items():
            pats = fold_names(names)
            for p in pats:
                rx = re.compile(p)
                rules.append(Rule(p, typ.lower(), [n for n in names if rx.search(n)]))
        rules.sort(key=lambda r: _first_index(r.tensors[0], specs))
        desc = f"types of {path.rsplit('/', 1)[-1]}: {ft.name} with {len(rules)} rule(s)"
        return recipe_toml(ft.name, fl, desc, rules, header), rules

    quantized = {t.name for t in specs if get_type(actual[t.name]).quantized or actual[t.name] != t.type}
    overridden: set[str] = set(quantized) if full else set()
    mismatches: list[str] = []
    verified = False
    toml, rules = build(overridden)
    for _ in range(MAX_ROUNDS):
        try:
            got = _plan_types(specs, info, toml, fl, has_imatrix)
        except MixError as e:  # the ftype's own mix fails on this model: name every tensor
            if overridden >= quantized:
                notes.append(f"the planner refuses this recipe: {e}")
                break
            overridden |= quantized
            toml, rules = build(overridden)
            continue
        mismatches = [n for n in actual if got.get(n) != actual[n]]
        if not mismatches:
            verified = True
            break
        new = set(mismatches) - overridden
        if not new:  # a rule cannot fix these (e.g. tensors llama-quantize never quantizes)
            break
        overridden |= new
        toml, rules = build(overridden)
    return Extracted(toml, ft.name, fl, rules, n_tensors, verified, mismatches, notes)


def _first_index(name: str, specs: list[TensorSpec]) -> int:
    for i, t in enumerate(specs):
        if t.name == name:
            return i
    return len(specs)
