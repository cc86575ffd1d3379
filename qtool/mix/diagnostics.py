"""What a plan says about its own rules and fallbacks: rules with no effect, and row-length fallbacks.

Both are read from the record the planners keep per tensor (`Decision.rule`, `rules_skipped`,
`fallback_from`, `steps`; `Plan.rules`), never re-derived from the rule chains:

- `rule_reports(plan)`: per REGEX=TYPE rule (in precedence order: --tensor-type, its files,
  --custom-q, the recipe; ik: --custom-q first) the tensors it matches and what became of them.
  A rule that decides no tensor is a warning (`rule_warnings`): it matches no tensor, every tensor
  it matches is decided by an earlier rule (first match wins in both llama-quantize and
  ik_llama.cpp), or it is ignored for a reason (a float base type, ik's --pure, an option that
  overrides it, a tensor that is never quantized, a pruned layer). `--strict` makes them errors.
- `fallbacks(plan)`: the tensors whose row length did not fit the chosen type, with the cost of
  the fallback in bytes and bits per weight; `--no-fallback` refuses them (`check_fallbacks`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..quants.types import get_type
from .decision import Decision, Plan
from .options import MixError, TypeRule

OK, UNMATCHED, SHADOWED, IGNORED, NO_EFFECT = "ok", "unmatched", "shadowed", "ignored", "no-effect"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def never_quantized_reason(d: Decision) -> str:
    """Why the planner does not quantize d, from its record ("norm tensor", "1-D tensor ...")."""
    for s in d.steps:
        if s.source == "quantizable" and s.detail.startswith("no: "):
            return s.detail[4:]
    return d.reason.split(": ", 1)[-1]


@dataclass
class RuleReport:
    """One rule and what became of the tensors it matches.

    index: its position in Plan.rules (0-based; shown 1-based). decided: tensors whose type it set.
    shadowed: {earlier rule index: tensors that rule decided}. ignored: {reason: tensors}.
    pruned: source names of pruned tensors it matches. kind: OK (it decides a tensor), UNMATCHED,
    SHADOWED (every match decided by an earlier rule), IGNORED (every match ignored for a reason),
    NO_EFFECT (both). message: the warning, "" when kind is OK.
    """

    index: int
    rule: TypeRule
    decided: list[str] = field(default_factory=list)
    shadowed: dict[int, list[str]] = field(default_factory=dict)
    ignored: dict[str, list[str]] = field(default_factory=dict)
    pruned: list[str] = field(default_factory=list)
    kind: str = OK
    message: str = ""

    @property
    def n_matched(self) -> int:
        return len(self.decided) + sum(map(len, self.shadowed.values())) + sum(map(len, self.ignored.values()))

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index + 1, "source": self.rule.source.rstrip(":"), "pattern": self.rule.pattern,
                "type": self.rule.type, "kind": self.kind, "decided": self.decided,
                "shadowed_by": {str(k + 1): v for k, v in self.shadowed.items()}, "ignored": self.ignored,
                "pruned": self.pruned, "message": self.message}


def rule_label(rules: list[TypeRule], i: int) -> str:
    """'rule #2 (--tensor-type ffn_down=q6_k)'."""
    return f"rule #{i + 1} ({rules[i].describe().replace(': ', ' ')})"


def _examples(names: list[str], k: int = 2) -> str:
    more = f", ... ({len(names)} tensors)" if len(names) > k else ""
    return ", ".join(names[:k]) + more


def rule_reports(p: Plan) -> list[RuleReport]:
    """One RuleReport per rule of the plan, in precedence order."""
    rules = p.rules
    pats = [r.compile() for r in rules]
    reports = [RuleReport(i, r) for i, r in enumerate(rules)]
    for d in p:
        for i, pat in enumerate(pats):
            if not pat.search(d.name):
                continue
            rep = reports[i]
            if not d.allows_quantization:
                rep.ignored.setdefault(f"never quantized: {never_quantized_reason(d)}", []).append(d.name)
            elif d.rules_skipped is not None:
                rep.ignored.setdefault(d.rules_skipped, []).append(d.name)
            elif d.rule is not None and d.rule < i:
                rep.shadowed.setdefault(d.rule, []).append(d.name)
            elif d.rule == i:
                rep.decided.append(d.name)
            else:  # no record says why the rule did not apply: say so rather than guess
                rep.ignored.setdefault("not consulted by the planner", []).append(d.name)
    for name in p.pruned:
        for i, pat in enumerate(pats):
            if pat.search(name):
                reports[i].pruned.append(name)
    for rep in reports:
        _classify(rep, rules, [d.name for d in p])
    return reports


def _classify(rep: RuleReport, rules: list[TypeRule], names: list[str]) -> None:
    label = rule_label(rules, rep.index)
    if rep.decided:
        rep.kind = OK
        return
    shadow = "; ".join(f"{rule_label(rules, j)} decides {_examples(v)}" for j, v in sorted(rep.shadowed.items()))
    ignore = "; ".join(f"{why}: {_examples(v)}" for why, v in rep.ignored.items())
    n = rep.n_matched
    if n == 0:
        rep.kind = UNMATCHED
        if rep.pruned:
            rep.kind = IGNORED
            rep.message = f"{label} matches only tensors of pruned layers ({_examples(rep.pruned)})"
            return
        hint = ""
        try:
            ci = re.compile(rep.rule.pattern, re.IGNORECASE)
            n_ci = sum(1 for nm in names if ci.search(nm))
        except re.error:
            n_ci = 0
        if n_ci:
            hint = f" (ignoring case it would match {n_ci})"
        rep.message = f"{label} matches no tensor{hint}"
    elif not rep.ignored:
        rep.kind = SHADOWED
        rep.message = f"{label} is always shadowed by an earlier rule (first match wins): {shadow}"
    elif not rep.shadowed:
        rep.kind = IGNORED
        rep.message = f"{label} is ignored for every tensor it matches ({n}): {ignore}"
    else:
        rep.kind = NO_EFFECT
        rep.message = f"{label} decides no tensor: shadowed by an earlier rule ({shadow}); ignored ({ignore})"


def rule_warnings(p: Plan) -> list[str]:
    """The warnings of rule_reports: one per rule that decides no tensor."""
    return [r.message for r in rule_reports(p) if r.kind != OK]


def check_rules(p: Plan, strict: bool) -> list[str]:
    """rule_warnings; with strict (--strict) a MixError listing them instead."""
    warns = rule_warnings(p)
    if strict and warns:
        raise MixError("--strict: " + (warns[0] if len(warns) == 1 else
                                       f"{len(warns)} rules have no effect:\n  " + "\n  ".join(warns)),
                       option="--strict")
    return warns


# --- fallbacks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fallback:
    """A tensor whose row length did not fit its chosen type. bytes: with the fallback type;
    nominal_bytes: at the chosen type's bits per weight (what it would take if the row fitted)."""

    name: str
    type: str
    row_length: int
    block_size: int
    fallback_type: str
    n_weights: int
    bytes: int
    nominal_bytes: int

    @property
    def extra_bytes(self) -> int:
        return self.bytes - self.nominal_bytes

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "row_length": self.row_length, "block_size": self.block_size,
                "fallback_type": self.fallback_type, "bytes": self.bytes, "nominal_bytes": self.nominal_bytes,
                "extra_bytes": self.extra_bytes}


def _row_bytes(type_name: str, n: int) -> float | None:
    try:
        qt = get_type(type_name)
    except KeyError:
        return None
    return n * qt.type_size / qt.block_size + qt.row_meta


def fallbacks(p: Plan) -> list[Fallback]:
    """The plan's row-length fallbacks (Decision.fallback), in write order."""
    out = []
    for d in p:
        if not d.fallback or d.fallback_from is None:
            continue
        nrows = _numel(d.shape) // d.shape[0] if d.shape else 1
        got = _row_bytes(d.type, d.shape[0])
        nominal = _row_bytes(d.fallback_from, d.shape[0])
        try:
            bs = get_type(d.fallback_from).block_size
        except KeyError:
            bs = 0
        out.append(Fallback(d.name, d.fallback_from, d.shape[0], bs, d.type, _numel(d.shape),
                            int(round((got or 0) * nrows)), int(round((nominal or 0) * nrows))))
    return out


def total_weights(p: Plan) -> int:
    """All tensors' elements (the denominator of llama-quantize's bpw)."""
    return sum(_numel(d.shape) for d in p)


def fallback_summary(p: Plan) -> str | None:
    """One line: how many tensors fell back and what it costs (bytes, bpw of the whole file)."""
    fb = fallbacks(p)
    if not fb:
        return None
    extra = sum(f.extra_bytes for f in fb)
    n_w = total_weights(p)
    bpw = 8.0 * extra / n_w if n_w else 0.0
    kinds = Counter(f"{f.type.lower()}->{f.fallback_type.lower()}" for f in fb)
    what = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    return (f"{len(fb)} tensor(s) fall back to another type because their row length does not fit ({what}): "
            f"+{extra} bytes ({extra / 1048576:.2f} MiB, +{bpw:.4f} bpw); --no-fallback refuses them")


def fallback_table(fb: list[Fallback]) -> str:
    """The tensors of --no-fallback's refusal, one per line."""
    lines = [f"  {f.name}: {f.type.lower()}, row length {f.row_length} (not a multiple of {f.block_size}) -> "
             f"{f.fallback_type.lower()} (+{f.extra_bytes} bytes)" for f in fb]
    return "\n".join(lines)


def check_fallbacks(p: Plan, no_fallback: bool) -> str | None:
    """fallback_summary; with no_fallback (--no-fallback) a MixError listing the tensors instead."""
    if no_fallback:
        fb = fallbacks(p)
        if fb:
            raise MixError(f"--no-fallback: {len(fb)} tensor(s) would fall back to another type:\n"
                           f"{fallback_table(fb)}\nchoose types whose block size divides these row lengths "
                           "(--tensor-type REGEX=TYPE), or leave out --no-fallback", option="--no-fallback")
    return fallback_summary(p)


__all__ = ["IGNORED", "NO_EFFECT", "OK", "SHADOWED", "UNMATCHED", "Fallback", "RuleReport", "check_fallbacks",
           "check_rules", "fallback_summary", "fallback_table", "fallbacks", "never_quantized_reason", "rule_label",
           "rule_reports", "rule_warnings", "total_weights"]
