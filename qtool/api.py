"""Python API of `qtool quantize` and `qtool mix show`: plan a model's types, quantize a file.

    import qtool
    p = qtool.plan("model-f16.gguf", "Q4_K_M")                  # per-tensor types and reasons
    r = qtool.quantize_file("model-f16.gguf", "model-Q4_K_M.gguf", "Q4_K_M",
                            imatrix="imatrix.gguf", tensor_type=["ffn_down=q6_k"])
    print(r.size_out, r.bpw_out, r.seconds)

Everything llama-quantize decides before writing (the ftype, each tensor's type, the imatrix
weights, the output's key/value pairs) is computed here from pure library functions; the CLI
only parses arguments and prints. Errors a user can cause raise QuantizeError (a clear message,
no file written); the output is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from .errors import QtoolError
from .gguf_io import KV, GGUFError, GGUFModel, check_output, kv_f32, kv_i32, kv_str, kv_u32, make_kv
from .gguf_io.reader import (
    T_ARRAY,
    T_BOOL,
    T_FLOAT32,
    T_FLOAT64,
    T_INT8,
    T_INT16,
    T_INT32,
    T_INT64,
    T_STRING,
    T_UINT8,
    T_UINT16,
    T_UINT32,
    T_UINT64,
)
from .imatrix import ImatrixError, QuantizeImatrix, prepare_imatrix, read_imatrix
from .imatrix.check import ImatrixCheck, check_imatrix, preflight_warnings
from .mix import MixError, MixOptions, Plan, check_plan, specs_from_gguf
from .mix import plan as mix_plan
from .mix.ftypes import FType, FTypeError, implied_flavour, parse_ftype
from .mix.model import ModelInfo
from .mix.options import MIX_OPTIONS, OPTIONS, build_options, filter_imatrix_names
from .pool import resolve_workers
from .quants import can_quantize, get_type
from .quants.types import IK, MAINLINE
from .runner import QuantizeError, RunResult, TensorJob, gpu_job, output_kvs, run_jobs, work_items

__all__ = ["OPTIONS", "KVOverride", "QuantizeError", "QuantizeResult", "build_options", "default_output",
           "imatrix_check", "parse_override_kv", "plan", "plan_model", "quantize_file", "split_output_path"]


# --- --override-kv --------------------------------------------------------------------------------

@dataclass(frozen=True)
class KVOverride:
    """One --override-kv KEY=TYPE:VALUE (TYPE int, float, bool or str), as llama.cpp parses it."""

    key: str
    tag: str  # "int" | "float" | "bool" | "str"
    value: int | float | bool | str

    def to_kv(self, flavour: str = MAINLINE) -> KV:
        """The pair llama-quantize writes (gguf_set_val_*): int as u32 of |v| (mainline) or as i32 of
        v (ik_llama.cpp: gguf_set_val_i32(val_i64)), float as f32."""
        if self.tag == "int":
            if flavour == IK:
                v = int(self.value) & 0xFFFFFFFF
                return kv_i32(self.key, v - (1 << 32) if v >= 1 << 31 else v)
            return kv_u32(self.key, abs(int(self.value)) & 0xFFFFFFFF)
        if self.tag == "float":
            return kv_f32(self.key, float(self.value))
        if self.tag == "bool":
            return make_kv(self.key, T_BOOL, bool(self.value))
        return kv_str(self.key, str(self.value))


def parse_override_kv(arg: str) -> KVOverride:
    """common/common.cpp string_parse_kv_override: KEY=int:N, KEY=float:F, KEY=bool:true|false, KEY=str:S.

    Stricter than llama.cpp where it would write something surprising: an empty key, an int that
    is not an integer or does not fit the uint32 llama-quantize writes (|N| < 2^32), a float
    that is not a number are refused (llama.cpp's atol/atof would give 0 or wrap)."""
    key, sep, rest = arg.partition("=")
    if not sep or len(key.encode()) >= 128:
        raise QuantizeError(f"--override-kv: malformed KV override {arg!r} (expected KEY=TYPE:VALUE, TYPE one of "
                            "int, float, bool, str)", option="--override-kv")
    if not key.strip():
        raise QuantizeError(f"--override-kv: empty key in {arg!r}", option="--override-kv")
    if rest.startswith("int:"):
        text = rest[4:].strip()
        try:
            v = int(text, 10)
        except ValueError:
            raise QuantizeError(f"--override-kv: {text!r} is not an integer in {arg!r}",
                                option="--override-kv") from None
        if abs(v) > 0xFFFFFFFF:
            raise QuantizeError(f"--override-kv: {v} is out of range in {arg!r} (llama-quantize writes int "
                                "overrides as uint32: |N| < 2^32)", option="--override-kv")
        return KVOverride(key, "int", v)
    if rest.startswith("float:"):
        text = rest[6:].strip()
        try:
            f = float(text)
        except ValueError:
            raise QuantizeError(f"--override-kv: {text!r} is not a number in {arg!r}", option="--override-kv") from None
        return KVOverride(key, "float", f)
    if rest.startswith("bool:"):
        if rest[5:] not in ("true", "false"):
            raise QuantizeError(f"--override-kv: invalid boolean value in {arg!r} (true or false)",
                                option="--override-kv")
        return KVOverride(key, "bool", rest[5:] == "true")
    if rest.startswith("str:"):
        if len(rest[4:].encode()) > 127:
            raise QuantizeError(f"--override-kv: malformed KV override {arg!r}, value cannot exceed 127 chars",
                                option="--override-kv")
        return KVOverride(key, "str", rest[4:])
    raise QuantizeError(f"--override-kv: invalid type in {arg!r} (expected KEY=TYPE:VALUE, TYPE one of "
                        "int, float, bool, str)", option="--override-kv")


_INT_TYPES = frozenset((T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_UINT64, T_INT64))
_TAG_FITS = {"int": _INT_TYPES, "float": frozenset((T_FLOAT32, T_FLOAT64)), "bool": frozenset((T_BOOL,)),
             "str": frozenset((T_STRING,))}


def check_overrides(overrides: Sequence[KVOverride], kvs: Sequence[KV]) -> None:
    """Overrides that would write a file llama.cpp cannot load are refused before any work: a key
    the input has with another value type (llama.cpp's loader rejects the mismatch), and keys
    the format itself constrains (general.alignment: a power of two)."""
    have = {kv.key: kv for kv in kvs}
    for o in overrides:
        kv = have.get(o.key)
        if kv is not None and kv.vtype not in _TAG_FITS[o.tag]:
            raise QuantizeError(f"--override-kv {o.key}={o.tag}:{o.value}: the input has {o.key} as "
                                f"{_VTYPE_NAMES.get(kv.vtype, kv.vtype)}; give it as "
                                f"{_tag_for(kv.vtype)}", option="--override-kv")
        if o.key == "general.alignment":
            v = o.value
            if o.tag != "int" or not isinstance(v, int) or v <= 0 or v & (v - 1):
                raise QuantizeError(f"--override-kv general.alignment={o.tag}:{o.value}: the alignment must be an "
                                    "int power of two (e.g. int:32)", option="--override-kv")
        if o.key.startswith("split."):
            raise QuantizeError(f"--override-kv {o.key}: split keys are written by the splitter, not overridable",
                                option="--override-kv")


_VTYPE_NAMES = {T_UINT8: "uint8", T_INT8: "int8", T_UINT16: "uint16", T_INT16: "int16", T_UINT32: "uint32",
                T_INT32: "int32", T_UINT64: "uint64", T_INT64: "int64", T_FLOAT32: "float32", T_FLOAT64: "float64",
                T_BOOL: "bool", T_STRING: "string", T_ARRAY: "array"}


def _tag_for(vtype: int) -> str:
    for tag, types in _TAG_FITS.items():
        if vtype in types:
            return f"{tag}:..."
    return "nothing (arrays cannot be overridden)"


def _as_overrides(items: Iterable[str | KVOverride]) -> list[KVOverride]:
    return [o if isinstance(o, KVOverride) else parse_override_kv(o) for o in items]


# --- options ---------------------------------------------------------------------------------------

def _option_keywords(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Make fn's **option_kwargs visible: MIX_OPTIONS as keyword-only parameters of its signature
    (help(), IDEs) and a list of them in its docstring, both from the option table."""
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params += [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=None) for o in MIX_OPTIONS]
    setattr(fn, "__signature__", sig.replace(parameters=params))  # noqa: B010 (mypy: no such attribute)
    lines = [f"        {o.name} ({o.flag}{' ' + o.metavar if o.metavar else ''}): {o.help}" for o in MIX_OPTIONS]
    fn.__doc__ = (fn.__doc__ or "") + "\n\n    Options (qtool.mix.options.OPTIONS):\n" + "\n".join(lines) + "\n"
    return fn


def default_output(input_path: str, ftype_name: str, keep_split: bool = False) -> str:
    """llama-quantize's output name when only INPUT and TYPE are given: `<input dir>/ggml-model-<FTYPE>.gguf`."""
    pos = max(input_path.rfind("/"), input_path.rfind("\\"))
    fpath = input_path[:pos + 1] if pos >= 0 else ""
    return fpath + "ggml-model-" + ftype_name + ("" if keep_split else ".gguf")


def split_output_path(output: str, split_no: int = 0, n_split: int = 1) -> str:
    """The file llama-quantize --keep-split writes for part split_no of OUTPUT: the name without
    its .gguf suffix, then llama_split_path's `-%05d-of-%05d.gguf` (also for a single part)."""
    base = output[:-5] if output.endswith(".gguf") else output
    return f"{base}-{split_no + 1:05d}-of-{n_split:05d}.gguf"


# --- plan ------------------------------------------------------------------------------------------

def _open(path: str | os.PathLike[str], flavour: str) -> GGUFModel:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise QuantizeError(f"{p}: no such file")
    if os.path.isdir(p):
        raise QuantizeError(f"{p}: is a directory, not a GGUF file")
    try:
        return GGUFModel(p, flavour=flavour)
    except GGUFError as e:
        raise _quantize_error(e) from e


def _quantize_error(e: QtoolError) -> QuantizeError:
    """The QuantizeError the API raises for a user error of a layer below, with its option and path."""
    return e if isinstance(e, QuantizeError) else QuantizeError(e.message, option=e.option, path=e.path)


def _model_info(model: GGUFModel, overrides: Sequence[KVOverride]) -> tuple[list[Any], ModelInfo]:
    """Tensor specs and hyperparameters as llama.cpp's loader sees them (through --override-kv)."""
    check_overrides(overrides, model.kvs)
    tensors, _ = specs_from_gguf(model)
    kv: dict[str, Any] = {}
    for e in model.kvs:
        kv.setdefault(e.key, e.value)
    for o in overrides:
        kv[o.key] = o.value
    return tensors, ModelInfo.from_kv(kv)


def plan_model(model: GGUFModel, ftype: str | int | FType | None, opts: MixOptions,
               overrides: Sequence[KVOverride] = ()) -> Plan:
    """The type plan of an opened model (MixError / FTypeError for bad options)."""
    tensors, info = _model_info(model, overrides)
    return mix_plan(tensors, info, ftype, opts)


def _implied(ftype: str | int | None, options: MixOptions | None, kw: dict[str, Any]) -> dict[str, Any]:
    """option_kwargs with flavour="ik" added when no flavour was given (neither as a keyword nor
    through `options`) and FTYPE is, by name, an ftype only ik_llama.cpp has (IQ4_K, ...)."""
    if "flavour" in kw or options is not None or not isinstance(ftype, str):
        return kw
    fl = implied_flavour([ftype])
    return {**kw, "flavour": fl} if fl else kw


@_option_keywords
def plan(model: str | os.PathLike[str], ftype: str | int | None = None, *,
         imatrix: str | os.PathLike[str] | None = None,
         options: MixOptions | None = None, override_kv: Sequence[str | KVOverride] = (),
         **option_kwargs: Any) -> Plan:
    """What `qtool mix show` / `quantize --dry-run` print: the Plan for MODEL and FTYPE.

    option_kwargs are llama-quantize's options (the rows of qtool.mix.options.OPTIONS, listed
    below): tensor_type=["ffn_down=q6_k"], pure=True, recipe="mix.toml", flavour="ik", ...; they
    start from a copy of `options`, which is never changed. With `imatrix`, mixes that change
    when an imatrix is used are planned as with one. Raises QuantizeError for any user error
    (its `option` names the offending option).
    """
    try:
        opts = dataclasses.replace(build_options(options, **_implied(ftype, options, option_kwargs)), dry_run=True)
        overrides = _as_overrides(override_kv)
        if imatrix is not None:
            qi = _load_imatrix(os.fspath(imatrix), (), ())
            opts = dataclasses.replace(opts, has_imatrix=qi.has_imatrix)
        with _open(model, opts.flavour) as m:
            return plan_model(m, ftype, opts, overrides)
    except (MixError, FTypeError, ImatrixError) as e:
        raise _quantize_error(e) from e


@_option_keywords
def imatrix_check(imatrix: str | os.PathLike[str], model: str | os.PathLike[str], ftype: str | int | None = None, *,
                  include_weights: Sequence[str] = (), exclude_weights: Sequence[str] = (),
                  options: MixOptions | None = None, override_kv: Sequence[str | KVOverride] = (),
                  **option_kwargs: Any) -> ImatrixCheck:
    """`qtool imatrix check`: does IMATRIX cover what quantizing MODEL to FTYPE needs?

    The plan is made as `quantize --imatrix IMATRIX` would make it (FTYPE None and no recipe: Q8_0,
    i.e. every tensor a quantized ftype converts). Returns an ImatrixCheck (qtool.imatrix.check):
    errors (a type that requires an imatrix without an entry, size mismatches, missing metadata),
    warnings (missing entries, experts never routed, with counts), the datasets and chunks. Raises
    QuantizeError only for what stops the check itself (unreadable files, bad options).
    """
    path = os.fspath(imatrix)
    try:
        opts = build_options(options, **_implied(ftype, options, option_kwargs))
        if not os.path.exists(path):
            raise ImatrixError(f"{path}: no such imatrix file")
        data = read_imatrix(path)
        names = filter_imatrix_names(list(data.entries), list(include_weights), list(exclude_weights))
        opts = dataclasses.replace(opts, dry_run=True, has_imatrix=bool(names), imatrix_names=frozenset(names))
        auto = ftype is None and (opts.recipe is None or opts.recipe.base is None)
        with _open(model, opts.flavour) as m:
            p = plan_model(m, "Q8_0" if auto else ftype, opts, _as_overrides(override_kv))
        res = check_imatrix(p, data, path, include_weights, exclude_weights)
        res.ftype = None if auto else p.ftype.name
        return res
    except (MixError, FTypeError, ImatrixError) as e:
        raise _quantize_error(e) from e


# --- quantize --------------------------------------------------------------------------------------

@dataclass
class QuantizeResult:
    """What a quantization run did: the plan, the sizes and the time (RunResult), the warnings."""

    input: str
    output: str
    ftype: str
    plan: Plan
    nthreads: int
    run: RunResult | None = None  # None for a dry run
    warnings: list[str] = field(default_factory=list)
    imatrix: str | None = None
    imatrix_entries: int = 0
    dry_run: bool = False

    @property
    def size_in(self) -> int:
        return self.run.size_in if self.run else 0

    @property
    def size_out(self) -> int:
        return self.run.size_out if self.run else 0

    @property
    def bpw_out(self) -> float:
        return self.run.bpw_out if self.run else 0.0

    @property
    def seconds(self) -> float:
        return self.run.seconds if self.run else 0.0

    def to_json(self) -> dict[str, Any]:
        """The document `qtool quantize --json` prints."""
        r = self.run
        return {
            "input": self.input, "output": None if self.dry_run else self.output, "ftype": self.ftype,
            "file_type": self.plan.file_type, "flavour": self.plan.flavour, "nthreads": self.nthreads,
            "imatrix": self.imatrix, "imatrix_entries": self.imatrix_entries, "dry_run": self.dry_run,
            "n_tensors": len(self.plan), "n_fallback": self.plan.n_fallback,
            "size_in": r.size_in if r else None, "size_out": r.size_out if r else None,
            "bpw_in": r.bpw_in if r else None, "bpw_out": r.bpw_out if r else None,
            "seconds": r.seconds if r else None, "warnings": self.warnings,
            "tensors": r.tensors if r else [],
        }


def _load_imatrix(path: str, include: Sequence[str], exclude: Sequence[str]) -> QuantizeImatrix:
    if not os.path.exists(path):
        raise ImatrixError(f"{path}: no such imatrix file")
    return prepare_imatrix(read_imatrix(path), path, include, exclude)


def _mapped_layers(p: Plan) -> dict[int, str] | None:
    """--prune-layers' original layer -> new layer string (what remap_imatrix needs)."""
    mapped: dict[int, str] = {}
    import re

    for d in p:
        a = re.match(r"blk\.(\d+)\.", d.source_name)
        b = re.match(r"blk\.(\d+)\.", d.name)
        if a and b:
            mapped[int(a.group(1))] = b.group(1)
    return mapped or None


@_option_keywords
def quantize_file(input: str | os.PathLike[str], output: str | os.PathLike[str] | None = None,
                  ftype: str | int | None = None, *, nthreads: int | None = None,
                  imatrix: str | os.PathLike[str] | None = None,
                  include_weights: Sequence[str] = (), exclude_weights: Sequence[str] = (),
                  override_kv: Sequence[str | KVOverride] = (), options: MixOptions | None = None,
                  dry_run: bool = False, on_plan: Callable[[Plan, list[str]], None] | None = None,
                  on_progress: Callable[[str, int], None] | None = None,
                  warn: Callable[[str], None] | None = None, recover_grid: bool = False,
                  device: str = "cpu", **option_kwargs: Any) -> QuantizeResult:
    """Quantize INPUT to OUTPUT as `llama-quantize [options] INPUT OUTPUT FTYPE NTHREADS` does.

    output None: llama-quantize's default name. nthreads None or <= 0: all cores. option_kwargs:
    llama-quantize's type-choice options (listed below), applied to a copy of `options` (which is
    never changed). on_plan(plan, warnings) is called before anything is written (e.g. to size a
    progress bar); on_progress(tensor name, values done) while writing. Raises QuantizeError for
    user errors (its `option` names the offending option, if one); nothing is written then, and a
    crash or KeyboardInterrupt leaves no output file. recover_grid: where a float tensor lies on
    its output type's grid (it was dequantized from that type), write the blocks it came from
    (`quantize --recover-grid`, docs/dequantize.md). device "cuda": tensors whose type has a GPU
    kernel are quantized on the CUDA devices (qtool.gpu; the same bytes), the others on the CPU.
    """
    src = os.fspath(input)
    if device not in ("cpu", "cuda"):
        raise QuantizeError(f"unknown device {device!r} (cpu, cuda)", option="--device")
    if device == "cuda" and not dry_run:  # before any work: CuPy and a GPU must be there
        from .gpu.cuda import cupy_module

        cupy_module()
    imatrix = os.fspath(imatrix) if imatrix is not None else None
    try:
        opts = build_options(options, **_implied(ftype, options, option_kwargs))
        overrides = _as_overrides(override_kv)
        if ftype is None:
            if opts.recipe is None or opts.recipe.base is None:
                raise QuantizeError("no TYPE given (and no --recipe with a base type)")
            ftype = opts.recipe.base
        ft = parse_ftype(ftype, opts.flavour)
        out = os.fspath(output) if output is not None else default_output(src, ft.name, opts.keep_split)
        if opts.keep_split:  # one part: split inputs are refused below
            out = split_output_path(out)
        if not dry_run:  # before any work: never an input, a directory or a device
            check_output(out, [src] + ([imatrix] if imatrix else []))
        qi: QuantizeImatrix | None = None
        if imatrix is not None:
            if not os.path.exists(imatrix):
                raise ImatrixError(f"{imatrix}: no such imatrix file")
            im_data = read_imatrix(imatrix)  # kept for the pre-flight check (per-expert counts)
            qi = prepare_imatrix(im_data, imatrix, include_weights, exclude_weights)
            opts = dataclasses.replace(opts, has_imatrix=qi.has_imatrix, imatrix_names=frozenset(qi.weights))
        elif include_weights or exclude_weights:
            raise QuantizeError("--include-weights / --exclude-weights need --imatrix",
                                option="--include-weights" if include_weights else "--exclude-weights")
        opts = dataclasses.replace(opts, dry_run=dry_run)
        with _open(src, opts.flavour) as model:
            inputs = [p.path for p in model.parts] + ([imatrix] if imatrix else [])
            if not dry_run:
                out = check_output(out, inputs)
            if opts.keep_split and len(model.parts) > 1:
                raise QuantizeError("--keep-split with a split input is not supported yet: leave it out to write "
                                    "one file")
            p = plan_model(model, ft, opts, overrides)
            warnings = check_plan(p, opts)
            if qi is not None:  # imatrix pre-flight, before any tensor is processed
                pre = check_imatrix(p, im_data, qi.path, include_weights, exclude_weights)
                if pre.errors and not dry_run:
                    raise QuantizeError("imatrix pre-flight (`qtool imatrix check`): " + "; ".join(pre.errors),
                                        option="--imatrix")
                warnings += [f"imatrix: {e}" for e in pre.errors] + preflight_warnings(pre)
            if qi is None and any(d.requires_imatrix and d.allows_quantization for d in p):  # dry run only
                warnings.append("quantizing with this plan will require an imatrix")
            ik_only = sorted({d.type.lower() for d in p if d.quantize and get_type(d.type).flavour == IK})
            if ik_only:
                warnings.append(f"the output uses ik_llama.cpp's own type(s) {', '.join(ik_only)}: it needs "
                                "ik_llama.cpp to run (mainline llama.cpp cannot load it)")
            n = resolve_workers(nthreads, None, warnings.append)
            res = QuantizeResult(src, out, ft.name, p, n, warnings=warnings, imatrix=imatrix,
                                 imatrix_entries=len(qi.weights) if qi else 0, dry_run=dry_run)
            if not dry_run:
                _check_rows(p)
            # with an imatrix, tensors it has no entry for go without one: both variants must exist,
            # except for types that need an imatrix (check_plan refused them without one)
            def _has_kernel(t: str) -> bool:
                qt = get_type(t)  # an interleaved repack of a type that needs one needs one too
                if qt.needs_imatrix or (qt.repack_of is not None and get_type(qt.repack_of).needs_imatrix):
                    return can_quantize(t, p.flavour, True)
                return can_quantize(t, p.flavour, None if qi is not None else False)

            missing = sorted({d.type for d in p if d.quantize and not _has_kernel(d.type)})
            if missing and not dry_run:
                names = ", ".join(t.lower() + (" (with an imatrix)" if can_quantize(t, p.flavour, False) else "")
                                  for t in missing)
                how = " as ik_llama.cpp does" if p.flavour == "ik" else ""
                raise QuantizeError(f"qtool's engine cannot produce type(s) {names}{how} yet (needed by {ft.name} "
                                    "for this model); `qtool mix show` prints the plan, `qtool types` lists what the "
                                    "engine has")
            if on_plan is not None:
                on_plan(p, warnings)
            if dry_run:
                return res
            jobs = _jobs(model, p, qi, warn)
            if device == "cuda":
                _note_cpu_tensors(jobs, p.flavour, recover_grid, warn)
            n = res.nthreads = min(n, max(1, work_items(jobs)))
            kv_over = [o.to_kv(p.flavour) for o in overrides]
            if qi is not None:
                # the counts are u32 in mainline's file, i32 in ik_llama.cpp's (its quantize.cpp)
                kv_int = kv_i32 if p.flavour == "ik" else kv_u32
                kv_over += [kv_str(k, str(v)) if t == "str" else kv_int(k, cast(int, v)) for k, t, v in qi.kv()]
            block = (f"{model.arch}.block_count", p.block_count) if p.block_count is not None else None
            kvs = output_kvs(model.kvs, p.file_type, kv_over, block, p.flavour)
            res.run = run_jobs(model, out, jobs, kvs, n, p.flavour, on_progress, inputs, recover_grid=recover_grid,
                               device=device)
            return res
    except (MixError, FTypeError, ImatrixError, GGUFError) as e:
        raise _quantize_error(e) from e


def _note_cpu_tensors(jobs: list[TensorJob], flavour: str, recover_grid: bool,
                      warn: Callable[[str], None] | None) -> None:
    """--device cuda: say once which converted tensors run on the CPU (no GPU kernel for their type
    and imatrix variant), so no tensor silently takes the slow path."""
    cpu = [j for j in jobs if j.converts and not gpu_job(j, flavour, recover_grid)]
    if cpu and warn is not None:
        kinds = sorted({f"{j.out_type.name.lower()}{' (imatrix)' if j.imatrix is not None else ''}" for j in cpu})
        warn(f"--device cuda: {len(cpu)} tensor(s) of type(s) {', '.join(kinds)} have no GPU kernel and run on "
             "the CPU")
    from .gpu.pipeline import raw_input

    cpu_in = [j for j in jobs if j.converts and gpu_job(j, flavour, recover_grid) and not raw_input(j.info.qtype)]
    if cpu_in and warn is not None:
        kinds = sorted({j.info.qtype.name.lower() for j in cpu_in})
        warn(f"--device cuda: {len(cpu_in)} tensor(s) stored as type(s) {', '.join(kinds)} have no GPU dequantize "
             "kernel: dequantized on the CPU, then quantized on the GPU")


def _check_rows(p: Plan) -> None:
    """A forced type (--token-embedding-type, --output-tensor-type) gets no fallback in llama.cpp:
    a row length that is not a multiple of its block size aborts llama-quantize (GGML_ASSERT in
    gguf_set_tensor_type). Refuse it before anything is written."""
    for d in p:
        if not d.quantize:
            continue
        qt = get_type(d.type)
        if d.shape[0] % qt.block_size:
            raise QuantizeError(f"{d.name}: row length {d.shape[0]} is not a multiple of the block size "
                                f"{qt.block_size} of {d.type.lower()} ({d.reason}); choose a type with "
                                "a block size that divides it")


def _jobs(model: GGUFModel, p: Plan, qi: QuantizeImatrix | None,
          warn: Callable[[str], None] | None) -> list[TensorJob]:
    """One TensorJob per planned tensor, with its imatrix rows (float32[n_expert, n_per_row])."""
    by_name = {t.name: t for t in model.tensors}
    mapped = _mapped_layers(p) if p.pruned else None
    jobs = []
    for d in p:
        info = by_name[d.source_name]
        w: np.ndarray | None = None
        if qi is not None and d.quantize:
            n_exp = info.shape[2] if len(info.shape) > 2 else 1
            w = qi.lookup(d.name, info.n_per_row, n_exp, mapped, warn)
        jobs.append(TensorJob(info, d.name, get_type(d.type), d.reason, w))
    return jobs
