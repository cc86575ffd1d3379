"""Mix options and the parsers for llama-quantize's rule arguments.

Parsers follow tools/quantize/quantize.cpp (mainline) and examples/quantize/quantize.cpp
(ik_llama.cpp): `parse_tensor_type` (--tensor-type NAME=TYPE: the name part is lower-cased, the
type is a GGML type name, case-insensitive), `parse_tensor_type_file` (whitespace-separated
NAME=TYPE words), `parse_layer_prune` (comma-separated ids, sorted, duplicates dropped) and
ik's `parse_custom_quants` (--custom-q "REGEX=TYPE,REGEX=TYPE": split on commas, pattern kept
as typed).

`OPTIONS` is the one table of these options: one row per option with its command-line spelling,
help, the MixOptions field it sets and its parser. The click options of `qtool quantize` and
`qtool mix show`, `build_options` and the keyword arguments of the Python API are made from it;
a new option is one row here (and, if it changes the choice of types, its rule in the planner).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import QtoolError
from ..quants.types import type_names
from .ftypes import FLAVOURS, IK, MAINLINE

if TYPE_CHECKING:
    from .recipe import Recipe


class MixError(QtoolError, ValueError):
    """A rule or option the type choice cannot use, or a failure llama-quantize would report."""


# ik_llama.cpp types that qtool's type table does not list (row-interleaved "repacked" types and
# a few others from ik's ggml.h). The mix can choose them; the engine refuses them.
IK_EXTRA_TYPES: dict[str, int] = {
    "Q4_0_4_4": 31, "Q4_0_4_8": 32, "Q4_0_8_8": 33,
    "Q8_0_X4": 97, "Q8_1_X4": 98, "Q8_2_X4": 99,
    "Q8_K16": 147, "Q8_K32": 148, "Q8_KR8": 149, "Q8_KV": 151,
    "Q4_0_R8": 202, "Q5_0_R4": 206, "Q8_0_R8": 208, "Q2_K_R4": 210, "Q3_K_R4": 211,
    "Q4_K_R4": 212, "Q5_K_R4": 213, "Q6_K_R4": 214, "IQ2_XXS_R4": 216, "IQ2_XS_R4": 217,
    "IQ3_XXS_R4": 218, "IQ1_S_R4": 219, "IQ4_NL_R4": 220, "IQ3_S_R4": 221, "IQ2_S_R4": 222,
    "IQ4_XS_R8": 223, "IQ1_M_R4": 229, "BF16_R16": 230, "Q6_0_R4": 233, "IQ2_BN_R4": 335,
    "IQ2_K_R4": 337, "IQ3_K_R4": 338, "IQ4_K_R4": 339, "IQ5_K_R4": 340, "IQ4_KS_R4": 344,
    "IQ5_KS_R4": 352, "MXFP4_R8": 353, "Q8_K_R16": 397, "Q8_KV_R8": 398, "Q8_K_R8": 399,
}
# ggml_type_name spellings that differ from the upper-cased qtool name
_IK_ALIASES = {"Q4_0_4X4": "Q4_0_4_4", "Q4_0_4X8": "Q4_0_4_8", "Q4_0_8X8": "Q4_0_8_8"}


def valid_type_names(flavour: str = MAINLINE) -> list[str]:
    """GGML type names a rule may name in this flavour."""
    names = type_names(flavour)
    if flavour == IK:
        names = names + [n for n in IK_EXTRA_TYPES if n not in names]
    return names


def parse_ggml_type(name: str, flavour: str = MAINLINE) -> str:
    """A GGML type name as typed (any case) -> qtool's upper-case name; MixError lists valid ones.

    Mainline's parse_ggml_type compares case-insensitively; ik_llama.cpp's compares exactly with
    ggml_type_name ("q4_K", "iq4_k_r4"): qtool accepts any case for both.
    """
    up = name.strip().upper()
    if flavour == IK:
        up = _IK_ALIASES.get(up, up)
    valid = valid_type_names(flavour)
    if up not in valid:
        raise MixError(f"invalid ggml_type {name!r}; valid types: {', '.join(n.lower() for n in valid)}")
    return up


@dataclass(frozen=True)
class TypeRule:
    """One REGEX=TYPE rule. source says where it came from (shown in reasons)."""

    pattern: str
    type: str
    source: str = "--tensor-type"

    def compile(self) -> re.Pattern[str]:
        try:
            return re.compile(self.pattern)
        except re.error as e:
            raise MixError(f"{self.source}: invalid regular expression {self.pattern!r}: {e}") from None

    def describe(self) -> str:
        return f"{self.source} {self.pattern}={self.type.lower()}"


def parse_tensor_type(arg: str, flavour: str = MAINLINE, source: str = "--tensor-type") -> TypeRule:
    """--tensor-type NAME=TYPE: split at the first '=', lower-case the name (as quantize.cpp does)."""
    where = source.rstrip(":")  # a file's rules have the source "--tensor-type-file NAME:"
    if "=" not in arg:
        raise MixError(f"{where}: malformed tensor type {arg!r} (expected REGEX=TYPE)")
    name, qt = arg.split("=", 1)
    if not name:
        raise MixError(f"{where}: missing tensor name in {arg!r}")
    if not qt:
        raise MixError(f"{where}: missing quantization type in {arg!r}")
    return TypeRule(name.lower(), parse_ggml_type(qt, flavour), source)


def parse_tensor_type_file(path: str | Path, flavour: str = MAINLINE) -> list[TypeRule]:
    """--tensor-type-file: NAME=TYPE words separated by spaces or newlines."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise MixError(f"--tensor-type-file: failed to open file '{path}': {e.strerror}") from None
    return [parse_tensor_type(w, flavour, source=f"--tensor-type-file {Path(path).name}:")
            for w in text.split()]


def parse_custom_q(arg: str, flavour: str = IK) -> list[TypeRule]:
    """ik's --custom-q "REGEX=TYPE,REGEX=TYPE": comma-separated, split at the first '='."""
    rules = []
    for item in arg.split(","):
        if "=" not in item:
            raise MixError(f"--custom-q: invalid custom quantization input {arg!r}")
        pat, qt = item.split("=", 1)
        try:
            t = parse_ggml_type(qt, flavour)
        except MixError as e:
            raise MixError(f"--custom-q: invalid quantization type {qt!r} in {item!r}: {e}") from None
        rules.append(TypeRule(pat, t, "--custom-q"))
    return rules


def parse_prune_layers(arg: str) -> list[int]:
    """--prune-layers L0,L1,...: non-negative ids, sorted, duplicates removed."""
    ids = []
    for part in arg.split(","):
        m = re.match(r"\s*([+-]?\d+)", part)
        val = int(m.group(1)) if m else -1
        if val < 0:
            raise MixError(f"--prune-layers: invalid layer id {part!r}")
        ids.append(val)
    return sorted(set(ids))


def filter_imatrix_names(names: list[str], include: list[str] | None = None,
                        exclude: list[str] | None = None) -> list[str]:
    """--include-weights / --exclude-weights (substring matches) as quantize.cpp's prepare_imatrix.

    Mainline refuses both together (usage error). The mix sees an imatrix only if entries are
    left (`has_imatrix`), so filtering everything out changes the Q4_0 / IQ4_XS / ... mixes.
    """
    if include and exclude:
        raise MixError("--include-weights and --exclude-weights cannot be used together")
    kept = list(names)
    for sub in exclude or []:
        kept = [n for n in kept if sub not in n]
    if include:
        kept = [n for n in kept if any(sub in n for sub in include)]
    return kept


@dataclass
class MixOptions:
    """Everything besides the tensors, the model and the ftype that decides the tensor types.

    Option names are llama-quantize's. tensor_types: --tensor-type / --tensor-type-file rules in
    command-line order (first match wins). custom_q: ik_llama.cpp's --custom-q rules. recipe: a
    loaded --recipe (its rules come after tensor_types; its options fill the ones left unset).
    has_imatrix: an importance matrix with at least one entry is used (it changes some mixes).
    imatrix_names: the imatrix's entry names, if known (for the missing-entry checks).
    The ik_* type options are ik_llama.cpp's --attn-q-type ... --ffn-up-type.
    """

    flavour: str = MAINLINE
    pure: bool = False
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    leave_output_tensor: bool = False
    tensor_types: list[TypeRule] = field(default_factory=list)
    custom_q: list[TypeRule] = field(default_factory=list)
    recipe: Recipe | None = None
    prune_layers: list[int] = field(default_factory=list)
    allow_requantize: bool = False
    has_imatrix: bool = False
    imatrix_names: frozenset[str] | None = None
    keep_split: bool = False
    dry_run: bool = False
    strict: bool = False  # rule diagnostics (a rule with no effect) are errors
    no_fallback: bool = False  # a row-length fallback is an error
    # ik_llama.cpp only
    per_layer_token_embedding_type: str | None = None
    ffn_gate_inp_type: str | None = None
    attn_q_type: str | None = None
    attn_k_type: str | None = None
    attn_v_type: str | None = None
    attn_qkv_type: str | None = None
    attn_output_type: str | None = None
    ffn_gate_type: str | None = None
    ffn_down_type: str | None = None
    ffn_up_type: str | None = None
    ignore_imatrix_rules: bool = False

    @property
    def uses_imatrix(self) -> bool:
        return self.has_imatrix or bool(self.imatrix_names)


# --- the option table ----------------------------------------------------------------------------

FLAG, VALUE, MULTI = "flag", "value", "multi"


@dataclass(frozen=True)
class Option:
    """One row of the option table.

    name: the API's keyword argument and the click parameter. flag: the command-line spelling
    (llama-quantize's). kind: FLAG (a switch), VALUE (one string) or MULTI (repeatable). field:
    the MixOptions field it sets, None for an option of the quantize run itself (the imatrix,
    --override-kv), which `qtool.api.quantize_file` takes as its own arguments. parse(value,
    flavour) turns what the user gave into the field's value (None: as given); a ValueError
    becomes a MixError naming `flag`. cli: on the command line (`qtool quantize`, and `qtool mix
    show` for fields); recipe: settable in a recipe's [options]; extend: adds to the field's list
    (rules keep their order) instead of replacing it.
    """

    name: str
    flag: str
    help: str
    kind: str = VALUE
    field: str | None = None
    parse: Callable[[Any, str], Any] | None = None
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    existing_file: bool = False
    default: Any = None
    cli: bool = True
    recipe: bool = False
    extend: bool = False

    def is_set(self, value: Any) -> bool:
        """Whether the value was given (None, "" and an empty sequence mean not given)."""
        if value is None:
            return False
        if self.kind == MULTI:
            return isinstance(value, str) or len(value) > 0
        return not (self.kind == VALUE and value == "")

    def convert(self, value: Any, flavour: str) -> Any:
        """The field's value for what the user gave; MixError (option=flag) if it is not valid."""
        if self.kind == MULTI and isinstance(value, str):
            value = [value]  # one rule given as a string, not as a list of them
        if self.kind == FLAG:
            return bool(value)
        if self.parse is None:
            return list(value) if self.kind == MULTI else value
        try:
            return self.parse(value, flavour)
        except ValueError as e:
            if isinstance(e, MixError) and e.option is not None:
                raise
            msg = e.message if isinstance(e, MixError) else str(e)
            raise MixError(msg if msg.startswith(self.flag) else f"{self.flag}: {msg}", option=self.flag) from e


def _flavour(value: str, _: str) -> str:
    if value not in FLAVOURS:
        raise MixError(f"unknown flavour {value!r}; valid: {', '.join(FLAVOURS)}")
    return str(value)


def _type(value: str, flavour: str) -> str:
    return parse_ggml_type(value, flavour)


def _tensor_types(values: Iterable[str], flavour: str) -> list[TypeRule]:
    return [parse_tensor_type(a, flavour) for a in values]


def _tensor_type_files(paths: Iterable[str | Path], flavour: str) -> list[TypeRule]:
    return [r for p in paths for r in parse_tensor_type_file(p, flavour)]


def _custom_q(values: Iterable[str], flavour: str) -> list[TypeRule]:
    return [r for a in values for r in parse_custom_q(a, flavour)]


def _prune_layers(value: str | Iterable[int], _: str) -> list[int]:
    if isinstance(value, str):
        return parse_prune_layers(value)
    return sorted(set(int(x) for x in value))


def _recipe(value: str | Path | Recipe, _: str) -> Recipe:
    from .recipe import Recipe, load_recipe  # recipe.py imports this module

    return value if isinstance(value, Recipe) else load_recipe(value)


def _ik_type(name: str, tensor: str) -> Option:
    """ik_llama.cpp's --attn-q-type ... (its custom quant scheme): API and recipes only for now."""
    return Option(name, "--" + name.replace("_", "-"), f"Type of the {tensor} tensors (ik_llama.cpp).",
                  field=name, parse=_type, metavar="TYPE", cli=False, recipe=True)


OPTIONS: tuple[Option, ...] = (
    Option("flavour", "--flavour", "Whose ftypes, rules and kernels: mainline llama.cpp's or ik_llama.cpp's.",
           field="flavour", parse=_flavour, choices=FLAVOURS, default=MAINLINE),
    Option("pure", "--pure", "No k-quant mixture: every tensor gets the default type.", FLAG, "pure", recipe=True),
    Option("output_tensor_type", "--output-tensor-type", "Type of output.weight.", field="output_tensor_type",
           parse=_type, metavar="TYPE", recipe=True),
    Option("token_embedding_type", "--token-embedding-type", "Type of the token embeddings.",
           field="token_embedding_type", parse=_type, metavar="TYPE", recipe=True),
    Option("leave_output_tensor", "--leave-output-tensor", "Leave output.weight un(re)quantized.", FLAG,
           "leave_output_tensor", recipe=True),
    Option("tensor_type", "--tensor-type", "Type of the tensors matching REGEX (first match wins; repeatable).",
           MULTI, "tensor_types", _tensor_types, metavar="REGEX=TYPE", extend=True),
    Option("tensor_type_file", "--tensor-type-file", "REGEX=TYPE words separated by spaces or newlines.",
           MULTI, "tensor_types", _tensor_type_files, metavar="FILE", existing_file=True, extend=True),
    Option("custom_q", "--custom-q", "ik_llama.cpp's comma-separated rules.", MULTI, "custom_q", _custom_q,
           metavar="REGEX=TYPE,...", extend=True),
    Option("recipe", "--recipe", "A base type and ordered rules (docs/mix.md).", field="recipe", parse=_recipe,
           metavar="FILE.toml", existing_file=True),
    Option("prune_layers", "--prune-layers", "Drop these layers.", field="prune_layers", parse=_prune_layers,
           metavar="L0,L1,..."),
    Option("keep_split", "--keep-split", "Keep the input's split files (changes the order).", FLAG, "keep_split"),
    Option("allow_requantize", "--allow-requantize", "Allow requantizing quantized tensors.", FLAG,
           "allow_requantize"),
    Option("strict", "--strict", "A rule that decides no tensor (matches none, always shadowed by an earlier "
           "rule, or ignored) is an error, not a warning.", FLAG, "strict"),
    Option("no_fallback", "--no-fallback", "Refuse (listing them) tensors whose row length does not fit their type "
           "instead of giving them a fallback type.", FLAG, "no_fallback"),
    # ik_llama.cpp only (its --attn-q-type ... --ffn-up-type, --ignore-imatrix-rules)
    _ik_type("per_layer_token_embedding_type", "per-layer token_embd"),
    _ik_type("ffn_gate_inp_type", "ffn_gate_inp"),
    _ik_type("attn_q_type", "attn_q"),
    _ik_type("attn_k_type", "attn_k"),
    _ik_type("attn_v_type", "attn_v"),
    _ik_type("attn_qkv_type", "attn_qkv"),
    _ik_type("attn_output_type", "attn_output"),
    _ik_type("ffn_gate_type", "ffn_gate"),
    _ik_type("ffn_down_type", "ffn_down"),
    _ik_type("ffn_up_type", "ffn_up"),
    Option("ignore_imatrix_rules", "--ignore-imatrix-rules", "Ignore ik_llama.cpp's importance matrix rules.",
           FLAG, "ignore_imatrix_rules", cli=False),
    # options of the quantize run itself (qtool.api.quantize_file's own arguments)
    Option("imatrix", "--imatrix",
           "Importance matrix (.gguf or legacy .dat, as written by llama-imatrix / qtool imatrix).",
           metavar="FILE"),
    Option("include_weights", "--include-weights",
           "Use imatrix weights only for tensors whose name contains NAME (repeatable).", MULTI, metavar="NAME"),
    Option("exclude_weights", "--exclude-weights",
           "Don't use imatrix weights for tensors whose name contains NAME (repeatable).", MULTI, metavar="NAME"),
    Option("override_kv", "--override-kv", "Override model metadata (TYPE int, float, bool, str); repeatable.",
           MULTI, metavar="KEY=TYPE:VALUE"),
    Option("device", "--device", "Where to quantize: the CPU engine, or CUDA GPUs through CuPy (pip install "
           "'qtool[cuda]'; same bytes; tensors whose type has no GPU kernel run on the CPU, listed once).",
           choices=("cpu", "cuda"), default="cpu"),
    # budgeted mixes (qtool/mix/solve.py): with a target, TYPE may be left out
    Option("target_bpw", "--target-bpw", "Solve a mix for this budget in bits per weight (all tensors' data bytes "
           "over all weights, as llama-quantize counts them); TYPE may then be left out.", metavar="BPW"),
    Option("target_size", "--target-size", "Solve a mix for this budget of tensor data: 2.5GiB, 800MB (powers "
           "of 1000), 123456789 (bytes).", metavar="SIZE"),
    Option("types", "--types", "Candidate types of --target-bpw / --target-size (default: the k-quants and "
           "i-quants the engine makes, plus q8_0); comma-separated or repeated.", MULTI, metavar="T1,T2,..."),
    Option("sensitivity", "--sensitivity", "Per-tensor weight of the predicted error for --target-bpw / "
           "--target-size: by role and layer as llama.cpp's mixes favour them, or flat.",
           choices=("role", "flat"), default="role"),
    Option("sample_rows", "--sample-rows", "Rows of each tensor the errors of --target-bpw / --target-size are "
           "measured on (0: all).", metavar="N", default=64),
)
OPTION_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
OPTION_BY_FLAG: dict[str, Option] = {o.flag: o for o in OPTIONS}
MIX_OPTIONS: tuple[Option, ...] = tuple(o for o in OPTIONS if o.field is not None)
"""The options that set MixOptions fields: `build_options`' keyword arguments."""
RECIPE_OPTIONS: dict[str, Option] = {o.field: o for o in OPTIONS if o.recipe and o.field is not None}
"""A recipe's [options] keys (MixOptions field names) and their rows."""
_LIST_FIELDS = ("tensor_types", "custom_q", "prune_layers")  # copied, never shared with the caller


def build_options(options: MixOptions | None = None, **values: Any) -> MixOptions:
    """MixOptions from llama-quantize's options as the user gave them (keyword = row name, value as
    typed: tensor_type=["ffn_down=q6_k"], output_tensor_type="q8_0", pure=True, recipe="mix.toml").

    Starts from a copy of `options` (never changed) or the defaults; None, "" and () leave an
    option as it is; rules are added after those `options` has. MixError names the offending
    option in its `option` field; TypeError for a keyword that is not a row of MIX_OPTIONS.
    """
    unknown = sorted(set(values) - {o.name for o in MIX_OPTIONS})
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(o.name for o in MIX_OPTIONS)}")
    base = options if options is not None else MixOptions()
    changes: dict[str, Any] = {f: list(getattr(base, f)) for f in _LIST_FIELDS}  # no list shared with `options`
    flavour = base.flavour
    for o in MIX_OPTIONS:  # the flavour row comes first: type names are parsed in its flavour
        v = values.get(o.name)
        if not o.is_set(v):
            continue
        assert o.field is not None
        new = o.convert(v, flavour)
        if o.extend:
            changes[o.field] = changes[o.field] + new
        else:
            changes[o.field] = new
        if o.field == "flavour":
            flavour = new
    return dataclasses.replace(base, **changes)
