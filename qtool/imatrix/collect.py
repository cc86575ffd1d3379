"""`imatrix collect`: llama-imatrix's collection (tools/imatrix/imatrix.cpp) on qtool's forward pass.

`Collector` is IMatrixCollector::collect_imatrix: it is the forward pass's observer and sums
the squares of every weight matmul's input activations per column:

- dense MUL_MAT: only weights named `blk.*` (and `output.weight` with process_output), only
  batches of at least 16 tokens; one count per tensor, + the number of rows.
- MUL_MAT_ID (stacked experts): always; per expert, the rows of the tokens routed to it (each
  (token, slot) pair once; a broadcast input uses the token's row for every slot); counts per
  expert. Experts no token reached keep a zero count (partial data).
- m_last_chunk: after each matmul, the largest count // chunk_size; reaching a multiple of
  save_frequency writes `OUT.at_N`.

`collect_imatrix` runs llama-imatrix's compute_imatrix: chunks of n_ctx tokens (BOS first when
the vocabulary adds one), n_batch / n_ctx chunks per batch, every position's logits (the
running PPL of the chunks' second halves unless compute_ppl is False).

On a device (`Forward(device="cuda")`) the activations the collector sees are CuPy arrays: the
sums of squares are kept and added on that device (float64) and fetched by `result()`; counts
stay on the host (they depend on the shapes and the host-side MoE routing only), and the
non-finite check runs once per batch (`check_pending`) instead of after every matmul.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..eval.model import Forward
from ..eval.numerics import array_module, sum_squares, to_device, to_host
from ..eval.perplexity import NllAccumulator, batch_targets, chunk_batches, chunk_count, n_seq_for, score_batch
from .data import ImatrixData, ImatrixEntry, ImatrixError

MIN_ROWS = 16


class Collector:
    """Per-tensor sums of squared activations (float64 while collecting, on the activations'
    device) and counts (host)."""

    def __init__(self, chunk_size: int, process_output: bool = False,
                 on_chunk: Callable[[int], None] | None = None) -> None:
        self.chunk_size = chunk_size
        self.process_output = process_output
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, np.ndarray] = {}
        self._unchecked: set[str] = set()  # device sums not yet checked for non-finite values
        self.last_chunk = 0
        self.datasets: list[str] = []
        self.on_chunk = on_chunk

    def wants(self, name: str) -> bool:
        return name.startswith("blk.") or (self.process_output and name == "output.weight")

    def load(self, data: ImatrixData) -> None:
        """Start from collected data (IMatrixCollector::load_imatrix of --in-file inputs)."""
        for name, e in data.entries.items():
            self.sums[name] = e.sums.astype(np.float64).copy()
            self.counts[name] = e.counts.astype(np.int64).copy()
        self.datasets = list(data.datasets)
        mx = max((int(c.max()) for c in self.counts.values() if c.size), default=0)
        self.last_chunk = mx // self.chunk_size

    def _step(self, counts: np.ndarray) -> None:
        n = int(counts.max()) // self.chunk_size if counts.size else 0
        if n > self.last_chunk:
            step = n - self.last_chunk
            self.last_chunk = n
            if self.on_chunk is not None:
                self.on_chunk(step)

    def _sums_on(self, name: str, xp: Any) -> Any:
        """The sums of `name` on xp's device (loaded --in-file sums are moved there once)."""
        s = self.sums[name]
        if array_module(s) is not xp:
            s = self.sums[name] = to_device(xp, to_host(s))
        return s

    def dense(self, name: str, x: Any) -> None:
        if x.shape[0] < MIN_ROWS or not self.wants(name):
            return
        xp = array_module(x)
        s = self.sums.get(name)
        if s is None:
            s = self.sums[name] = xp.zeros((1, x.shape[1]), np.float64)
            self.counts[name] = np.zeros(1, np.int64)
        elif s.size != x.shape[1]:
            raise ImatrixError(f"inconsistent size for {name} ({s.size} vs {x.shape[1]})")
        c = self.counts[name]
        if c.size > 1 and (c == c[0]).all():
            c = self.counts[name] = c[:1].copy()
            self.sums[name] = s.reshape(1, -1)
        s = self._sums_on(name, xp)
        s[0] += sum_squares(x, 0)
        c += x.shape[0]
        self._check(name, xp)
        self._step(c)

    def experts(self, name: str, x: Any, ids: np.ndarray, n_expert: int) -> None:
        """x (host or device), ids host ints (the forward pass routes on the host)."""
        n_tok, n_slots, n_in = x.shape
        xp = array_module(x)
        s = self.sums.get(name)
        c = self.counts.get(name)
        if c is not None and c.size == 1 and n_expert > 1:
            c = self.counts[name] = np.full(n_expert, c[0], np.int64)
        if s is None or s.size == 0:
            s = self.sums[name] = xp.zeros((n_expert, n_in), np.float64)
            c = self.counts[name] = np.zeros(n_expert, np.int64)
        elif s.size != n_in * n_expert:
            raise ImatrixError(f"inconsistent size for {name} ({s.size} vs {n_in * n_expert})")
        self.sums[name] = s.reshape(n_expert, n_in)
        s = self._sums_on(name, xp)
        assert c is not None
        if c.size != n_expert:
            raise ImatrixError(f"inconsistent expert count for {name} ({c.size} vs {n_expert})")
        if ids.min() < 0 or ids.max() >= n_expert:
            raise ImatrixError(f"{name}: expert id out of range")
        for e in np.unique(ids):
            tok, slot = np.nonzero(ids == e)
            rows = x[to_device(xp, tok), to_device(xp, slot % n_slots)]
            s[e] += sum_squares(rows, 0)
            c[e] += len(tok)
        self._check(name, xp)
        self._step(c)

    def _check(self, name: str, xp: Any = np) -> None:
        """Raise on non-finite sums: at once on the host; on a device, at check_pending (a
        check there waits for the device)."""
        if xp is not np:
            self._unchecked.add(name)
        elif not np.isfinite(self.sums[name]).all():
            raise ImatrixError(f"non-finite values detected in {name}")

    def check_pending(self) -> None:
        """The non-finite check of the device sums changed since the last one."""
        for name in sorted(self._unchecked):
            if not bool(array_module(self.sums[name]).isfinite(self.sums[name]).all()):
                raise ImatrixError(f"non-finite values detected in {name}")
        self._unchecked.clear()

    def result(self, datasets: list[str]) -> ImatrixData:
        """The collected form (entries in sorted order, as save_imatrix writes them; device sums
        are fetched)."""
        self.check_pending()
        entries = {n: ImatrixEntry(to_host(self.sums[n]).astype(np.float32).reshape(self.counts[n].size, -1),
                                   self.counts[n].copy()) for n in sorted(self.sums)}
        return ImatrixData(entries, self.datasets + datasets, self.last_chunk, self.chunk_size,
                           legacy=False, has_metadata=True)


@dataclass
class CollectResult:
    data: ImatrixData
    ppl: float | None
    ppl_error: float | None
    chunks: int
    tokens: int
    running: list[float]


def collect_imatrix(fwd: Forward, collector: Collector, tokens: np.ndarray, n_ctx: int,
                    n_chunks: int | None = None, n_batch: int = 2048, bos: int | None = None,
                    compute_ppl: bool = True, datasets: list[str] | None = None,
                    on_chunk: Callable[[int, int, float | None], None] | None = None,
                    on_layer: Callable[[], None] | None = None) -> CollectResult:
    """compute_imatrix: run the chunks with `collector` observing `fwd` (it must be fwd.observer)."""
    if fwd.observer is not collector:
        raise ValueError("the collector must observe the forward pass")
    n_chunk = chunk_count(len(tokens), n_ctx, n_chunks, what="collect an imatrix")
    n_seq = n_seq_for(n_ctx, n_batch)
    first = n_ctx // 2
    acc = NllAccumulator()
    running: list[float] = []
    for i, batch in chunk_batches(tokens, n_ctx, n_chunk, n_seq, bos):
        h = fwd.hidden(batch, 0, progress=on_layer)
        k = batch.shape[0]
        if fwd.output_name == "output.weight" and collector.process_output:
            collector.dense("output.weight", h.reshape(k * n_ctx, -1))
        if compute_ppl:  # all the batch's scored rows at once (one matmul per vocabulary block)
            nll = score_batch(fwd, h[:, first:n_ctx - 1], batch_targets(tokens, i, k, n_ctx, first))
        for s in range(k):
            if compute_ppl:
                acc.add(nll[s])
                running.append(acc.ppl)
            if on_chunk is not None:
                on_chunk(i + s, n_chunk, acc.ppl if compute_ppl else None)
        collector.check_pending()
    ppl = err = None
    if compute_ppl and acc.count > 1:
        ppl, err = acc.estimate()
    return CollectResult(collector.result(datasets or []), ppl, err, n_chunk, n_chunk * n_ctx, running)


def dataset_name(path: str) -> str:
    """The dataset string llama-imatrix stores: the -f argument as given."""
    return os.fspath(path)
