"""`plan()`: the type of every tensor for an ftype and options; `check_plan()`: llama-quantize's refusals."""

from __future__ import annotations

import dataclasses

from ..quants.types import get_type
from .decision import Plan
from .ftypes import IK, MAINLINE, FType, parse_ftype
from .ik import IK_FTYPES_NEED_IMATRIX, plan_ik
from .mainline import plan_mainline
from .model import ModelInfo, TensorSpec
from .options import MixError, MixOptions, TypeRule


def effective_options(opts: MixOptions) -> MixOptions:
    """opts with its recipe's options filled in where the command line left them unset."""
    r = opts.recipe
    if r is None:
        return opts
    if r.flavour != opts.flavour:
        raise MixError(f"recipe {r.path} is for the {r.flavour} flavour, but {opts.flavour} was asked for")
    changes = {}
    for k, v in r.options.items():
        cur = getattr(opts, k)
        if cur is None or cur is False:
            changes[k] = v
    return dataclasses.replace(opts, **changes) if changes else opts


def rule_list(opts: MixOptions) -> list[TypeRule]:
    """All REGEX=TYPE rules in precedence order (first match wins).

    mainline: --tensor-type (and --tensor-type-file) in command-line order, then --custom-q,
    then the recipe's rules. ik: --custom-q, then --tensor-type, then the recipe's rules.
    """
    recipe_rules = list(opts.recipe.rules) if opts.recipe else []
    if opts.flavour == IK:
        return list(opts.custom_q) + list(opts.tensor_types) + recipe_rules
    return list(opts.tensor_types) + list(opts.custom_q) + recipe_rules


def resolve_ftype(ftype: str | int | FType | None, opts: MixOptions) -> FType:
    if isinstance(ftype, FType):
        return ftype
    if ftype is None:
        if opts.recipe is None or opts.recipe.base is None:
            raise MixError("no TYPE given and no recipe with a base type")
        ftype = opts.recipe.base
    try:
        return parse_ftype(ftype, opts.flavour)
    except ValueError as e:
        raise MixError(str(e)) from None


def plan(tensors: list[TensorSpec], info: ModelInfo, ftype: str | int | FType | None,
         opts: MixOptions | None = None) -> Plan:
    """Decide the output type of every tensor, as llama-quantize (or ik_llama.cpp's) would.

    tensors: the input's tensors in file order. ftype: what the user typed as TYPE (a name, any
    case, or a numeric id), an FType, or None to use the recipe's base. Returns a Plan whose
    decisions are in llama-quantize's write order. Raises MixError where llama-quantize fails
    while choosing types (bad regex, no fallback for a row length, unparsable layer number).
    """
    opts = effective_options(opts or MixOptions())
    ft = resolve_ftype(ftype, opts)
    rules = rule_list(opts)
    for r in rules:
        r.compile()
    if opts.flavour == MAINLINE:
        return plan_mainline(tensors, info, ft, opts, rules)
    if opts.flavour == IK:
        return plan_ik(tensors, info, ft, opts, rules)
    raise MixError(f"unknown flavour {opts.flavour!r}")


def check_plan(p: Plan, opts: MixOptions) -> list[str]:
    """Raise MixError for what llama-quantize refuses to do; return the warnings it prints.

    Refused: a target that needs an importance matrix when none is used (mainline: checked for
    every quantizable tensor before anything is written; ik: IQ1/IQ2/Q2_K_S ftypes up front),
    an imatrix without an entry for such a tensor, requantizing a quantized tensor without
    --allow-requantize, and converting a tensor type that cannot be dequantized.
    Warned: tensors for which the imatrix has no entry; rules that decide no tensor (refused with
    --strict) and row-length fallbacks with their cost (refused with --no-fallback), see diagnostics.py.
    """
    from .diagnostics import check_fallbacks, check_rules

    opts = effective_options(opts)
    warnings = list(p.warnings)
    warnings += check_rules(p, opts.strict)  # before anything else: --strict / --no-fallback refuse
    fb = check_fallbacks(p, opts.no_fallback)
    if fb is not None:
        warnings.append(fb)
    has_im = opts.uses_imatrix
    if p.flavour == IK and not has_im and not opts.ignore_imatrix_rules and p.ftype.key in IK_FTYPES_NEED_IMATRIX:
        raise MixError(f"{p.ftype.name} needs an importance matrix (--imatrix): please do not use IQ1_S, "
                       f"IQ1_M, IQ2_S, IQ2_XXS, IQ2_XS or Q2_K_S quantization without one")
    if not has_im and not opts.dry_run and not (p.flavour == IK and opts.ignore_imatrix_rules):
        for d in p:
            if d.allows_quantization and d.requires_imatrix:
                raise MixError(f"this quantization requires an importance matrix (--imatrix): "
                               f"tensor {d.name} would be {d.type.lower()}")
    for d in p:
        if not d.quantize:
            continue
        if opts.imatrix_names is not None:
            if d.imatrix_name not in opts.imatrix_names:
                warnings.append(f"did not find imatrix weights for {d.name}")
                if d.requires_imatrix and not opts.dry_run:
                    raise MixError(f"Missing importance matrix for tensor {d.name} in a very low-bit "
                                   f"quantization ({d.type.lower()}): the result would be garbage")
        try:
            src = get_type(d.src_type)
        except KeyError:
            src = None
        if src is not None and not src.quantized and src.name not in ("F32", "F16", "BF16"):
            raise MixError(f"cannot dequantize/convert tensor type {d.src_type.lower()} ({d.name})")
        if d.requantize and not opts.allow_requantize and not opts.dry_run:
            raise MixError(f"requantizing from type {d.src_type.lower()} is disabled ({d.name} -> "
                           f"{d.type.lower()}); use --allow-requantize")
    return warnings
