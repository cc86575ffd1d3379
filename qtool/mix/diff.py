"""`qtool mix diff`: per-tensor types of several GGUF files side by side.

Tensors are grouped the way quant authors' recipe tables group them: embeddings and output,
attention, dense FFN layers, MoE layers (routed and shared experts, router), other. Within a
group, tensors of the same kind (the name after `blk.N.`) whose types agree file by file are
folded into one row listing their layers (`blk.[0-2,5].ffn_down.weight`). Rows where every file
has the same type are folded away (counted per group) unless all rows are asked for. Sizes are
the tensors' bytes in each file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..gguf_io import GGUFModel
from ..quants.types import IK, MAINLINE, QType

GROUPS = ("embeddings", "attention", "dense layers", "moe layers", "other")
_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")
_MOE = re.compile(r"(_exps|_shexp|_chexp|ffn_gate_inp|exp_probs_b|ffn_gate_inp_shexp)")
_EMBD = re.compile(r"^(token_embd|output|per_layer_token_embd|pos_embd|token_types|tok_embd|enc\.output|"
                   r"dec\.output|altup_proj|altup_unembd_proj|per_layer_model_proj)")


def tensor_group(name: str, moe_layers: set[int]) -> str:
    """The group of a tensor name; moe_layers: blocks that hold expert tensors."""
    m = _BLK.match(name)
    if not m:
        if _EMBD.match(name) and not name.endswith("_norm.weight"):
            return "embeddings"
        return "other"
    kind = m.group(2)
    if kind.startswith("attn") or "_attn" in kind or kind.startswith("self_attn"):
        return "attention"
    if _MOE.search(kind) or (kind.startswith("ffn") and int(m.group(1)) in moe_layers and "norm" not in kind):
        return "moe layers"
    if kind.startswith("ffn") and "norm" not in kind:
        return "dense layers"
    return "other"


@dataclass
class FileInfo:
    path: str
    n_tensors: int
    n_elements: int
    n_bytes: int
    file_type: int | None

    @property
    def bpw(self) -> float:
        return 8.0 * self.n_bytes / self.n_elements if self.n_elements else 0.0


@dataclass
class DiffRow:
    label: str
    names: list[str]
    types: list[str | None]  # per file, lower-case; None where the file lacks the tensors
    bytes: list[int]

    @property
    def identical(self) -> bool:
        return len(set(self.types)) == 1


@dataclass
class DiffGroup:
    name: str
    rows: list[DiffRow] = field(default_factory=list)  # differing rows (all rows with show_all)
    n_identical: int = 0  # tensors folded away because every file agrees
    bytes: list[int] = field(default_factory=list)  # per file, every tensor of the group


@dataclass
class DiffReport:
    files: list[FileInfo]
    groups: list[DiffGroup]
    differing: list[str]  # names of the tensors whose types differ between files, first file's order

    def to_json(self) -> dict:
        return {
            "files": [{"path": f.path, "n_tensors": f.n_tensors, "n_elements": f.n_elements, "bytes": f.n_bytes,
                       "bpw": f.bpw, "file_type": f.file_type} for f in self.files],
            "groups": [{"group": g.name, "bytes": g.bytes, "identical_tensors": g.n_identical,
                        "rows": [{"tensors": r.label, "names": r.names, "types": r.types, "bytes": r.bytes}
                                 for r in g.rows]} for g in self.groups],
            "differing": self.differing,
        }


def _label(kind: str, layers: list[int]) -> str:
    from .extract import runs

    parts = [str(a) if a == b else f"{a}-{b}" for a, b in runs(layers)]
    return f"blk.{parts[0]}.{kind}" if len(parts) == 1 and "-" not in parts[0] else f"blk.[{','.join(parts)}].{kind}"


def diff_models(paths: list[str], show_all: bool = False, flavour: str | None = None) -> DiffReport:
    """Compare the per-tensor types of the GGUF files at paths (two or more)."""
    per_file: list[dict[str, tuple[QType, int, int]]] = []  # name -> (type, bytes, elements)
    order: list[str] = []
    files: list[FileInfo] = []
    seen: set[str] = set()
    for p in paths:
        m = GGUFModel(p, flavour=flavour or MAINLINE)
        if flavour is None and any(t.qtype.flavour == IK for t in m.tensors):
            m.close()
            m = GGUFModel(p, flavour=IK)
        try:
            d = {t.name: (t.qtype, t.n_bytes, t.n_elements) for t in m.tensors}
            ft = m.kv("general.file_type")
            files.append(FileInfo(p, len(d), sum(v[2] for v in d.values()), sum(v[1] for v in d.values()),
                                  int(ft) if ft is not None else None))
            for t in m.tensors:
                if t.name not in seen:
                    seen.add(t.name)
                    order.append(t.name)
        finally:
            m.close()
        per_file.append(d)
    moe_layers = set()
    for n in order:
        mm = _BLK.match(n)
        if mm and _MOE.search(mm.group(2)) and "_exps" in mm.group(2):
            moe_layers.add(int(mm.group(1)))
    groups = {g: DiffGroup(g, bytes=[0] * len(paths)) for g in GROUPS}
    # fold: (group, kind, type tuple) -> layers / names, in order of first appearance
    folds: dict[tuple[str, str, tuple[str | None, ...]], list[str]] = {}
    differing = []
    for n in order:
        g = tensor_group(n, moe_layers)
        types = tuple(d[n][0].lname if n in d else None for d in per_file)
        for i, d in enumerate(per_file):
            if n in d:
                groups[g].bytes[i] += d[n][1]
        if len(set(types)) > 1:
            differing.append(n)
        elif not show_all:
            groups[g].n_identical += 1
            continue
        mm = _BLK.match(n)
        kind = mm.group(2) if mm else n
        key = (g, kind if mm else "\0" + n, types)
        folds.setdefault(key, []).append(n)
    for (g, kind, types), names in folds.items():
        if kind.startswith("\0"):
            label = names[0]
        else:
            label = _label(kind, [int(_BLK.match(x).group(1)) for x in names])  # type: ignore[union-attr]
        b = [sum(d[x][1] for x in names if x in d) for d in per_file]
        groups[g].rows.append(DiffRow(label, names, list(types), b))
    out = [groups[g] for g in GROUPS if groups[g].rows or groups[g].n_identical]
    return DiffReport(files, out, differing)
