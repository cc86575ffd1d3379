"""Dequantize a GGUF model back to floats: `qtool dequantize IN OUT [--to F16|BF16|F32]`.

The bytes are those of `llama-quantize --allow-requantize IN OUT F16` (or BF16 / F32, its
MOSTLY_BF16 / ALL_F32 ftypes): the same per-tensor rules (only tensors with 2 or more dimensions
are converted; 1-D tensors such as the norms keep their type, F32 in practice; F16 / BF16 / F32
input tensors that already have the target type are copied), the same key/value changes
(general.quantization_version = 2 and general.file_type = the target ftype re-appended, split
keys removed), the same layout. This is a quantize run with the float ftype and
--allow-requantize, so it streams slab by slab through the runner, the GGUFStreamWriter and
AtomicOutput like `qtool quantize`; what is added here is the check, before anything is written,
that the engine can dequantize every tensor the run converts.

Speed: each slab goes from the stored bytes straight to the float type's bytes
(qtool.quants.to_float, through runner.convert_slab): Q8_0 / Q5_0 / Q4_0 by one table gather per
value, the other types dequantized a cache-sized chunk at a time and cast by integer rounding
(numpy's own float32 -> float16 cast is scalar here). The slabs run in the worker pool, which
inherits the parsed model through fork. benchmarks/bench_dequantize.py times a run against
`cat` and llama-quantize (benchmarks/README.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .api import QuantizeResult, quantize_file
from .errors import QtoolError
from .gguf_io.atomic import check_output
from .mix import Plan
from .mix.options import build_options
from .quants.engine import can_dequantize
from .quants.types import MAINLINE

TARGETS = ("F16", "BF16", "F32")
"""Float types `dequantize` writes (llama-quantize's ftypes F16, BF16 and F32 = ALL_F32)."""


class DequantizeError(QtoolError):
    """A model qtool cannot dequantize (a tensor type the engine cannot read), or a bad target."""


def parse_target(to: str) -> str:
    """--to F16|BF16|F32 in any case -> the upper-case name; DequantizeError otherwise."""
    t = to.strip().upper()
    if t not in TARGETS:
        raise DequantizeError(f"--to: {to!r} is not a float type; valid: {', '.join(TARGETS)}", option="--to")
    return t


def undequantizable(plan: Plan) -> list[tuple[str, str]]:
    """(tensor name, type) of the tensors the plan converts from a type the engine cannot dequantize."""
    return [(d.source_name, d.src_type) for d in plan if d.quantize and not can_dequantize(d.src_type)]


def dequantize_file(input: str | os.PathLike[str], output: str | os.PathLike[str], to: str = "F16", *,
                    nthreads: int | None = None, flavour: str = MAINLINE, dry_run: bool = False,
                    on_plan: Callable[[Plan, list[str]], None] | None = None,
                    on_progress: Callable[[str, int], None] | None = None,
                    warn: Callable[[str], None] | None = None, device: str = "cpu") -> QuantizeResult:
    """Write `output`, the float (`to`) version of `input`, as llama-quantize's float ftype with
    --allow-requantize does. Raises DequantizeError (nothing written) when a converted tensor has a
    type the engine cannot dequantize, OutputError when output is the input (or not writable).
    device "cuda": the stored blocks go to the CUDA devices as they are and are dequantized there
    (qtool.gpu.dequant; the same bytes), types without a GPU dequantize kernel on the CPU (`warn`
    names them once); GpuUnavailable, before any work, where CuPy or a GPU is missing."""
    target = parse_target(to)
    src = os.fspath(input)
    if not dry_run:
        check_output(output, [src])  # before opening the model: never the input, a folder or a device

    def checked_plan(p: Plan, warnings: list[str]) -> None:
        bad = undequantizable(p)
        if bad:
            types = sorted({t for _, t in bad})
            names = ", ".join(n for n, _ in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise DequantizeError(f"{src}: qtool cannot dequantize type(s) {', '.join(t.lower() for t in types)} "
                                  f"(tensors {names}); `qtool types` lists what the engine reads", path=src)
        if on_plan is not None:
            on_plan(p, warnings)

    opts = build_options(flavour=flavour, allow_requantize=True)
    return quantize_file(src, output, target, nthreads=nthreads, options=opts, dry_run=dry_run,
                         on_plan=checked_plan, on_progress=on_progress, warn=warn, device=device)


def detect_model_grid(path: str | os.PathLike[str], max_tensors: int = 8, max_rows: int = 16,
                      flavour: str = MAINLINE) -> list[tuple[str, str]]:
    """(tensor name, type) for the first `max_tensors` 2-D float tensors of a model whose first
    `max_rows` rows lie on a quant type's grid (qtool.quants.recover.detect_grid): a float model
    made by dequantizing a quant. Tensors on no grid are left out."""
    from .gguf_io import GGUFModel
    from .quants.engine import dequantize
    from .quants.recover import detect_grid, stored_name

    found: list[tuple[str, str]] = []
    with GGUFModel(path, flavour=flavour) as m:
        tried = 0
        for t in m.tensors:
            stored = stored_name(t.qtype)
            if stored is None or len(t.shape) < 2 or t.n_per_row % 32:
                continue
            tried += 1
            rows = dequantize(m.tensor_rows(t, 0, min(max_rows, t.n_rows)), t.qtype, t.n_per_row)
            g = detect_grid(rows, stored)
            if g is not None:
                found.append((t.name, g.type))
            if tried >= max_tensors:
                break
    return found


def grid_note(path: str | os.PathLike[str], flavour: str = MAINLINE) -> str | None:
    """A one-line note when a float model looks like a dequantized quant (None otherwise): error
    figures against such a reference are biased (types at or above its grid reproduce it)."""
    found = detect_model_grid(path, flavour=flavour)
    if not found:
        return None
    types: dict[str, int] = {}
    for _, t in found:
        types[t] = types.get(t, 0) + 1
    what = ", ".join(f"{n} on {t.lower()}'s grid" for t, n in sorted(types.items(), key=lambda kv: -kv[1]))
    return (f"{os.path.basename(os.fspath(path))} looks like a dequantized quant ({what}, of the first sampled "
            "float tensors): errors against it are biased, and `qtool quantize --recover-grid` gives the "
            "original blocks back")
