"""Per-tensor statistics of an importance matrix: llama-imatrix `--show-statistics`.

Ports tools/imatrix/imatrix.cpp `compute_statistics`, `compute_cossim`, `process_tensor_name` and
`show_statistics` with C's float32 arithmetic and sequential sums (np.cumsum accumulates in
order in float32, like std::accumulate / std::inner_product with a 0.0f start), so the printed
figures match llama-imatrix to the last printed digit. log2f is taken as float64 log2 rounded to
float32.

Per tensor, over the per-column means of the matrices that saw tokens (sum / count; experts with
zero count left out): Σ(Act²) = sum of the means, min, max, μ, σ (population), % active (means
above 1e-5), N = number of means, entropy of the means normalised to a distribution (bits) and
as % of log2(N), ZD = share of means more than one σ above μ, CosSim = cosine similarity of the
raw sums with those of the same tensor in the previous layer (0 when there is none).
The per-layer summary averages Σ(Act²), ZD and CosSim over a layer's tensors weighted by N.

The data are first combined as llama-imatrix loads them (a legacy .dat file is scaled by the chunk
size, 512 by default), which changes nothing for GGUF input.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import numpy as np

from .data import ImatrixData, Warn, default_warn, name_bytes
from .merge import DEFAULT_CHUNK_SIZE, combine

_BLK = re.compile(r"blk\.([0-9]+)\.")
_STOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
F = np.float32


@dataclass
class TensorStats:
    """One row of the statistics table (float32 values as C computes them)."""

    name: str
    layer: str  # the part after "blk." ("-" if none), as printed
    tensor: str  # the part before ".weight" (the full name if none), as printed
    block: int  # layer as an int (std::stoi), -1 when not a number
    total: float  # Σ(Act²)
    min: float
    max: float
    mean: float
    stddev: float
    active: float  # fraction of means > 1e-5
    elements: int
    entropy: float
    entropy_norm: float  # percent of log2(elements)
    zd: float  # fraction
    cossim: float
    n_mat: int
    n_mat_used: int


@dataclass
class LayerStats:
    """The per-layer weighted averages (layers with a block number only)."""

    layer: int
    sum_act2: float
    zd: float  # fraction
    cossim: float
    elements: int


def process_tensor_name(name: str) -> tuple[str, str]:
    """(layer, tensor) as process_tensor_name: the item after "blk", the item before "weight"."""
    items = name.split(".")
    if items and items[-1] == "":  # std::getline does not return a last empty item
        items.pop()
    layer = tensor = ""
    for i, it in enumerate(items):
        if it == "blk" and i + 1 < len(items):
            layer = items[i + 1]
            break
    for i, it in enumerate(items):
        if it == "weight" and i > 0:
            tensor = items[i - 1]
            break
    return layer or "-", tensor or name


def _stoi(s: str) -> int:
    """std::stoi, with -1 where it throws (no digits or out of int range)."""
    m = _STOI.match(s)
    if not m:
        return -1
    v = int(m.group(1))
    return v if -(2**31) <= v < 2**31 else -1


def _seq_sum(a: np.ndarray) -> np.float32:
    """0.0f + a[0] + a[1] + ... in float32, in order."""
    if a.size == 0:
        return F(0)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.cumsum(a, dtype=np.float32)[-1]


def _log2f(p: np.ndarray) -> np.ndarray:
    return np.log2(p.astype(np.float64)).astype(np.float32)


def _tensor_stats(name: str, values: np.ndarray, counts: np.ndarray, warn: Warn) -> TensorStats | None:
    if counts.size == 0:
        warn(f"compute_statistics: there are no activations for tensor {name}. The imatrix may be suboptimal")
        return None
    if values.size % counts.size:
        warn(f"compute_statistics: activation size mismatch for tensor {name} ({counts.size} vs {values.size})")
        return None
    rows = values.reshape(counts.size, -1)
    used = counts != 0
    with np.errstate(all="ignore"):
        act = (rows[used] / counts[used].astype(np.float32)[:, None]).reshape(-1)
    n = act.size
    if n == 0:
        warn(f"compute_statistics: all counts are zero for tensor {name}, skipping statistics computation")
        return None
    nf = F(n)
    with np.errstate(all="ignore"):
        total = _seq_sum(act)
        amax, amin = act.max(), act.min()
        mean = total / nf
        sqr_total = _seq_sum(act * act)
        var = sqr_total / nf - mean * mean
        dev = np.sqrt(max(F(0), var))
        inactive = int(np.count_nonzero(np.abs(act) <= F(1e-5)))
        active = F(1) - F(inactive) / nf
        entropy = F(0)
        if total > 0:
            p = act / total
            p = p[p > 0]
            entropy = F(0) - _seq_sum(p * _log2f(p))  # C: 0.0f - t0 - t1 ... (+0.0 when all are 0)
        z = 0
        if dev > F(0):
            z = int(np.count_nonzero((act - mean) / dev > F(1)))
        zd = F(z) / nf
        ent_norm = F(np.float64(100.0) * (np.float64(entropy) / np.log2(np.float64(n))))
    layer, tensor = process_tensor_name(name)
    return TensorStats(name, layer, tensor, _stoi(layer), float(total), float(amin), float(amax), float(mean),
                       float(dev), float(active), n, float(entropy), float(ent_norm), float(zd), 0.0,
                       int(counts.size), int(np.count_nonzero(used)))


def _cossim(stats: list[TensorStats], values: dict[str, np.ndarray], warn: Warn) -> None:
    by_name = {s.name: s for s in stats}
    for s in stats:
        m = _BLK.search(s.name)
        if not m:
            s.cossim = 0.0
            continue
        blk = int(m.group(1))
        if blk >= 2**31:
            continue
        prev_name = s.name[:m.start(1)] + str(blk - 1) + s.name[m.end(1):]
        if prev_name not in by_name:
            continue
        cur, prev = values[s.name], values[prev_name]
        if prev.size < cur.size:
            warn(f"cosine similarity: {s.name} has {cur.size} values, {prev_name} only {prev.size}")
            s.cossim = float("nan")
            continue
        with np.errstate(all="ignore"):
            dp = _seq_sum(cur * prev[:cur.size])
            cm = np.sqrt(_seq_sum(cur * cur))
            pm = np.sqrt(_seq_sum(prev * prev))
            s.cossim = float(dp / (cm * pm))


def compute_statistics(data: ImatrixData, chunk_size: int = DEFAULT_CHUNK_SIZE,
                       warn: Warn | None = None) -> list[TensorStats]:
    """Statistics of every tensor, in llama-imatrix's order (tensor kind, then Σ(Act²) descending)."""
    warn = default_warn if warn is None else warn
    collected = combine([data], chunk_size)  # as llama-imatrix loads the file (0.0f + x: -0.0 becomes 0.0)
    stats: list[TensorStats] = []
    values: dict[str, np.ndarray] = {}
    for name, e in collected.entries.items():
        v = e.sums.reshape(-1)
        s = _tensor_stats(name, v, e.counts, warn)
        if s is not None:
            stats.append(s)
            values[name] = v
    _cossim(stats, values, warn)
    stats.sort(key=lambda s: (name_bytes(s.tensor), -s.total))
    return stats


def layer_statistics(stats: list[TensorStats]) -> list[LayerStats]:
    """The per-layer summary (weighted by N, accumulated in float32 in table order), layers >= 0."""
    acc: dict[int, list] = {}
    for s in stats:
        wb = F(s.elements) * F(s.total)
        wz = F(s.elements) * F(s.zd)
        wc = F(s.elements) * F(s.cossim)
        if s.block in acc:
            a = acc[s.block]
            a[0], a[1], a[2], a[3] = a[0] + wb, a[1] + wz, a[2] + wc, a[3] + s.elements
        else:
            acc[s.block] = [wb, wz, wc, s.elements]
    out = []
    for blk in sorted(acc):
        wb, wz, wc, n = acc[blk]
        if n == 0 or blk < 0:
            continue
        with np.errstate(all="ignore"):
            out.append(LayerStats(blk, float(wb / F(n)), float(wz / F(n)), float(wc / F(n)), n))
    return out


def n_layers(stats: list[TensorStats]) -> int:
    return len({s.block for s in stats if s.block >= 0})


def cfmt(x: float, width: int, prec: int) -> str:
    """printf("%{width}.{prec}f") as glibc prints it (nan / -nan / inf / -inf)."""
    if math.isnan(x):
        s = "-nan" if math.copysign(1.0, x) < 0 else "nan"
        return s.rjust(width)
    return f"{x:{width}.{prec}f}"


HEADER = ("\n{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n".format(
    " Layer", "       Tensor", "          Σ(Act²)", "  Min", "            Max", "           μ", "   σ", " % Active",
    "N", "   Entropy", "E (norm)", "ZD", "  CosSim"))
RULE = "=" * 169 + "\n"


def format_row(s: TensorStats) -> str:
    return (f"{s.layer:>5}\t{s.tensor:<20}\t{cfmt(s.total, 10, 2)}\t{cfmt(s.min, 8, 4)}\t{cfmt(s.max, 11, 4)}\t"
            f"{cfmt(s.mean, 6, 2)}\t{cfmt(s.stddev, 6, 2)}\t{cfmt(float(F(s.active) * F(100)), 8, 2)}%\t"
            f"{s.elements:6d}\t{cfmt(s.entropy, 10, 4)}\t{cfmt(s.entropy_norm, 6, 2)}%\t"
            f"{cfmt(float(F(100) * F(s.zd)), 10, 2)}%\t{cfmt(s.cossim, 8, 4)}\n")


def format_layer(ls: LayerStats) -> str:
    return f"{ls.layer:5d}\t{cfmt(ls.sum_act2, 14, 2)}\t{cfmt(float(F(100) * F(ls.zd)), 10, 4)}%\t" \
           f"{cfmt(ls.cossim, 6, 4)}\n"


def format_llama(path: str, stats: list[TensorStats], tensors: bool = True, layers: bool = True) -> str:
    """The text llama-imatrix --show-statistics logs (without its log prefixes)."""
    out = []
    if tensors:
        out.append(f"\nComputing statistics for {path} ({len(stats)} tensors)\n")
        out.append(HEADER)
        out.append(RULE)
        out += [format_row(s) for s in stats]
    if layers:
        out.append(f"\nComputing weighted average statistics per layer ({n_layers(stats)} layers)\n")
        out.append("\n{}\t{}\t{}\t{}\n".format("  Layer", "     μΣ(Act²)", "      μZD", "μCosSim"))
        out.append("=" * 48 + "\n")
        out += [format_layer(ls) for ls in layer_statistics(stats)]
        out.append("\n")
    return "".join(out)


def _json_num(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else x


def to_json(path: str, stats: list[TensorStats], layers: list[LayerStats]) -> dict[str, object]:
    """One JSON-able document: tensors (percentages as fractions) and the per-layer summary."""
    return {
        "file": path,
        "tensors": [{k: (_json_num(v) if isinstance(v, float) else v) for k, v in asdict(s).items()} for s in stats],
        "layers": [{k: (_json_num(v) if isinstance(v, float) else v) for k, v in asdict(ls).items()}
                   for ls in layers],
    }
