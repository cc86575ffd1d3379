"""Result records of the type choice: one Decision per output tensor, gathered in a Plan."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from .ftypes import FType
from .options import TypeRule


@dataclass(frozen=True)
class Step:
    """One source the planner consulted for a tensor, in the order it consulted them.

    source: what was consulted ("quantizable", "ftype default", "rules", "ftype mix", "--pure",
    "fallback", an option's flag, ...). detail: what it said. type: the type it gives (None when it
    gives none). decided: it set the tensor's type at this point (a later step may still change it).
    """

    source: str
    detail: str
    type: str | None = None
    decided: bool = False


@dataclass
class Decision:
    """The type chosen for one tensor and why.

    name: the output name (differs from source_name only with --prune-layers).
    type: the output type, always set; quantize is False when it equals src_type (the bytes are
    copied). reason: a sentence saying which rule decided. fallback: the row length forced a
    fallback type (llama.cpp counts these). requires_imatrix: llama.cpp refuses to make this
    type without imatrix data for the tensor. imatrix_name: the imatrix entry to use (the
    pre-pruning layer number). rule: index in Plan.rules of the REGEX=TYPE rule that matched first
    (its type was taken), None when no rule matched or rules were not consulted. rules_skipped: why
    the rules were not consulted or their choice was overridden (float base type, ik's --pure,
    --output-tensor-type, ...), None otherwise. fallback_from: the type the row length did not fit
    (fallback is True). steps: the sources consulted, in order (`qtool mix show --explain`).
    """

    name: str
    source_name: str
    shape: tuple[int, ...]
    src_type: str
    type: str
    reason: str
    allows_quantization: bool
    category: str = "other"
    fallback: bool = False
    requires_imatrix: bool = False
    imatrix_name: str = ""
    rule: int | None = None
    rules_skipped: str | None = None
    fallback_from: str | None = None
    steps: list[Step] = field(default_factory=list)

    @property
    def quantize(self) -> bool:
        """The tensor's data changes type (llama.cpp: `cur_type != new_type`)."""
        return self.type != self.src_type

    @property
    def requantize(self) -> bool:
        """A quantized input tensor gets a different type (needs --allow-requantize)."""
        from ..quants.types import get_type

        try:
            src_q = get_type(self.src_type).quantized
        except KeyError:
            src_q = True
        return self.quantize and src_q


@dataclass
class Plan:
    """The decisions for a whole model, in output order (llama.cpp's write order).

    Iterating / indexing / len() go over the decisions. pruned: source names of tensors dropped
    by --prune-layers. block_count: the new `<arch>.block_count` when layers were pruned.
    file_type: the value llama-quantize writes to general.file_type (the ftype id; for COPY the
    input's file type as llama.cpp's loader reports it). warnings: what llama-quantize would warn.
    rules: the REGEX=TYPE rules in precedence order (Decision.rule indexes it).
    """

    ftype: FType
    flavour: str
    default_type: str
    decisions: list[Decision] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    block_count: int | None = None
    file_type: int = 0
    warnings: list[str] = field(default_factory=list)
    rules: list[TypeRule] = field(default_factory=list)

    def __iter__(self) -> Iterator[Decision]:
        return iter(self.decisions)

    def __len__(self) -> int:
        return len(self.decisions)

    def __getitem__(self, i: int) -> Decision:
        return self.decisions[i]

    @property
    def n_fallback(self) -> int:
        """Tensors that needed a fallback type ("N of M tensor(s) required fallback quantization")."""
        return sum(d.fallback for d in self.decisions)

    def types(self) -> dict[str, str]:
        """{output tensor name: type name}."""
        return {d.name: d.type for d in self.decisions}

    def by_name(self, name: str) -> Decision:
        for d in self.decisions:
            if d.name == name:
                return d
        raise KeyError(name)
