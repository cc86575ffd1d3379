"""`qtool mix show --explain TENSOR`: the decision chain of one tensor, from the planner's record.

The planners (mainline.py, ik.py) record per tensor the sources they consulted, in their order
(`Decision.steps`: quantizable?, the ftype's default type, --token-embedding-type /
--output-tensor-type, a float base type, the REGEX=TYPE rules, --pure, the ftype's mix rules, the
row-length fallback, ik's overrides and row-interleave checks), which rule matched first
(`Decision.rule`) and why rules were skipped (`Decision.rules_skipped`). `explain` lays that
record out, expanding the "rules" step into every rule in precedence order with whether it
matches the name and what became of it; nothing is decided again here.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from .decision import Decision, Plan
from .diagnostics import rule_label


@dataclass
class ExplainLine:
    """One line of the chain. source: what was consulted; detail: what it said; type: the type it
    gives (None: none); decided: it set the type at this point; rule: 1-based rule number or None;
    matched: for a rule, whether its pattern is found in the name."""

    source: str
    detail: str
    type: str | None = None
    decided: bool = False
    rule: int | None = None
    matched: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "detail": self.detail, "type": self.type, "decided": self.decided,
                "rule": self.rule, "matched": self.matched}


@dataclass
class Explanation:
    """The chain of one tensor and the sentence saying why its final type won."""

    decision: Decision
    ftype: str
    flavour: str
    lines: list[ExplainLine] = field(default_factory=list)
    verdict: str = ""

    def to_json(self) -> dict[str, Any]:
        d = self.decision
        return {"name": d.name, "source_name": d.source_name, "shape": list(d.shape), "src_type": d.src_type,
                "type": d.type, "ftype": self.ftype, "flavour": self.flavour, "reason": d.reason,
                "chain": [ln.to_json() for ln in self.lines], "verdict": self.verdict}

    def text(self) -> str:
        d = self.decision
        out = [f"{d.name} [{'x'.join(map(str, d.shape))}] {d.src_type.lower()} -> {d.type.lower()} "
               f"({self.ftype}, {self.flavour})"]
        for i, ln in enumerate(self.lines, 1):
            mark = "=>" if ln.decided else "  "
            t = f" -> {ln.type.lower()}" if ln.type and ln.decided and not ln.detail.endswith(ln.type.lower()) else ""
            out.append(f"{i:3d}. {mark} {ln.source}: {ln.detail}{t}")
        out.append(f"final: {d.type.lower()}: {self.verdict}")
        return "\n".join(out)


def find_decision(p: Plan, name: str) -> Decision:
    """The decision for a tensor by output or source name; KeyError lists close names."""
    for d in p:
        if name in (d.name, d.source_name):
            return d
    names = [d.name for d in p]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    if name in p.pruned:
        raise KeyError(f"{name} is pruned (--prune-layers): it is not written")
    raise KeyError(f"no tensor {name!r} in the model{hint}")


def _rule_lines(p: Plan, d: Decision, consulted: bool) -> list[ExplainLine]:
    out = []
    for i, r in enumerate(p.rules):
        m = r.compile().search(d.name) is not None
        label = rule_label(p.rules, i)
        if not m:
            ln = ExplainLine("rule", f"{label}: no match", None, False, i + 1, False)
        elif not consulted:
            why = d.rules_skipped or "the tensor is never quantized"
            ln = ExplainLine("rule", f"{label}: matches, ignored ({why})", r.type, False, i + 1, True)
        elif d.rule == i and d.rules_skipped is None:
            ln = ExplainLine("rule", f"{label}: matches first: decides", r.type, True, i + 1, True)
        elif d.rule == i:
            ln = ExplainLine("rule", f"{label}: matches first, later overridden ({d.rules_skipped})", r.type,
                             True, i + 1, True)
        elif d.rule is not None and d.rule < i:
            ln = ExplainLine("rule", f"{label}: matches, shadowed by rule #{d.rule + 1} (first match wins)", r.type,
                             False, i + 1, True)
        else:
            ln = ExplainLine("rule", f"{label}: matches, not consulted", r.type, False, i + 1, True)
        out.append(ln)
    if not p.rules:
        out.append(ExplainLine("rules", "none given (--tensor-type, --tensor-type-file, --custom-q, recipe)"))
    return out


def explain(p: Plan, name: str) -> Explanation:
    """The decision chain of tensor `name` (output or source name) in plan p."""
    d = find_decision(p, name)
    ex = Explanation(d, p.ftype.name, p.flavour)
    rules_shown = False
    for s in d.steps:
        if s.source == "rules":
            if p.rules:
                ex.lines.append(ExplainLine("rules", f"in precedence order, first match wins: {s.detail}"))
            ex.lines += _rule_lines(p, d, True)
            rules_shown = True
        else:
            ex.lines.append(ExplainLine(s.source, s.detail, s.type, s.decided))
    if not rules_shown and p.rules:
        why = d.rules_skipped or ("never quantized" if not d.allows_quantization else "not consulted")
        ex.lines.append(ExplainLine("rules", f"not consulted: {why}"))
        ex.lines += _rule_lines(p, d, False)
    last = next((ln for ln in reversed(ex.lines) if ln.decided), None)
    if not d.allows_quantization:
        ex.verdict = f"the tensor is never quantized ({d.reason})"
    elif not d.quantize:
        ex.verdict = f"the chosen type equals the input type: the data is copied ({d.reason})"
    elif last is not None:
        ex.verdict = f"{last.source} set it last ({d.reason})"
    else:
        ex.verdict = d.reason
    return ex


__all__ = ["ExplainLine", "Explanation", "explain", "find_decision"]
