"""`qtool perplexity` and `qtool kld`: llama-perplexity's perplexity and --kl-divergence on
qtool's forward pass (qtool.eval)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from ..errors import QtoolError
from ..gguf_io import GGUFModel
from ..gguf_io.atomic import AtomicOutput
from ..mix.options import OPTION_BY_NAME
from .common import click_option, threads_option

THREADS_HELP = ("BLAS threads for the matmuls (default: all cores); the results do not depend on it "
                "(BLAS does not split the sums).")
EXACT_HELP = ("Round activations to each weight's dot-product type (F16 / Q8_0 / Q8_K) and K/V to F16, as "
              "llama.cpp's CPU backend does (default); --no-exact keeps float32 activations.")
DEVICE_HELP = ("Where to run the forward pass: the CPU (numpy; llama.cpp CPU backend's numerics), or the first "
               "CUDA GPU through CuPy (pip install 'qtool[cuda]'; weights, matmuls, attention and the per-token "
               "figures on the GPU; close to the CPU's figures, not bit-identical).")


def device_option() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--device cpu|cuda (the choices of quantize's --device row) for the forward-pass commands."""
    return click_option(OPTION_BY_NAME["device"], help=DEVICE_HELP)


def check_device(device: str) -> None:
    """Fail before any work where --device cuda has no CuPy or GPU (GpuUnavailable, a user error)."""
    from ..eval.numerics import device_module

    device_module(device)


def info(msg: str) -> None:
    click.echo(msg, err=True)


def layer_steps(n_chunk: int, n_ctx: int, n_batch: int, n_layer: int, passes: int = 1) -> tuple[int, float]:
    """(progress steps, tokens per step): one step per layer of each batch of chunks."""
    n_seq = max(1, n_batch // n_ctx)
    batches = -(-n_chunk // n_seq)
    return batches * n_layer * passes, n_chunk * n_ctx / (batches * n_layer * passes)


@contextmanager
def progress_bar(total: int, label: str, tokens_per_step: float, enabled: bool) -> Iterator[Callable[[], None]]:
    """A rich progress bar on stderr (a terminal only) with tokens/s and ETA; yields step()."""
    if not enabled or not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    prog = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[tps]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    task = prog.add_task(label, total=total, tps="")
    t0 = time.monotonic()
    done = [0]

    def step() -> None:
        done[0] += 1
        dt = time.monotonic() - t0
        tps = f"{done[0] * tokens_per_step / dt:,.0f} tok/s" if dt > 0 else ""
        prog.update(task, advance=1, tps=tps)

    with prog:
        yield step


def common_eval_options(f: Callable[..., Any]) -> Callable[..., Any]:
    decorators: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option("-c", "--ctx-size", "n_ctx", type=int, default=512, show_default=True,
                     help="Tokens per chunk (llama.cpp's -c)."),
        click.option("--chunks", "n_chunks", type=int, default=-1, show_default=True,
                     help="Chunks to evaluate (-1: all the text gives)."),
        click.option("-b", "--batch-size", "n_batch", type=int, default=2048, show_default=True,
                     help="Tokens per batch: n_batch / n_ctx chunks run together (llama.cpp's -b)."),
        click.option("--exact/--no-exact", default=True, help=EXACT_HELP),
        click.option("--parse-special", is_flag=True, help="Parse special tokens in the text (llama.cpp's flag)."),
        click.option("--no-escape", is_flag=True, help="Do not process escapes (\\n, \\t, ...) in the text, "
                     "which llama.cpp does by default."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar or running values."),
        threads_option(help=THREADS_HELP),
        device_option(),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def load_model(path: str, what: str = "-m") -> GGUFModel:
    try:
        return GGUFModel(path)
    except QtoolError as e:
        e.option = e.option or what
        raise


@click.command("perplexity")
@click.option("-m", "--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="GGUF model.")
@click.option("-f", "--file", "text_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Text file to evaluate.")
@click.option("--save-logits", type=click.Path(dir_okay=False),
              help="Also write llama-perplexity's --kl-divergence-base file (log-probabilities) here.")
@common_eval_options
def perplexity_cmd(model_path: str, text_path: str, save_logits: str | None, n_ctx: int, n_chunks: int, n_batch: int,
                   exact: bool, parse_special: bool, no_escape: bool, as_json: bool, quiet: bool,
                   threads: int | None, device: str) -> None:
    """Perplexity of MODEL on a text, as llama-perplexity computes it (the second half of each
    chunk of -c tokens is scored; ± is llama.cpp's estimate)."""
    from ..eval import Forward, Tokenizer, bos_id, tokenize_file
    from ..eval.numerics import set_blas_threads
    from ..eval.perplexity import LogitsWriter, chunk_count, perplexity

    check_device(device)
    set_blas_threads(threads)
    model = load_model(model_path)
    tok = Tokenizer.from_model(model)
    ids = tokenize_file(tok, text_path, parse_special, not no_escape)
    n_chunk = chunk_count(len(ids), n_ctx, n_chunks)
    fwd = Forward(model, exact=exact, device=device)
    if not quiet:
        info(f"perplexity: {len(ids)} tokens, {n_chunk} chunks of {n_ctx}" + (" on cuda" if device == "cuda" else ""))

    def on_chunk(i: int, n: int, ppl: float) -> None:
        if not quiet and not as_json:
            click.echo(f"[{i + 1}]{ppl:.4f},", nl=False, err=True)

    total, per_step = layer_steps(n_chunk, n_ctx, n_batch, fwd.hp.n_layer)
    with progress_bar(total, "perplexity", per_step, not quiet) as step:
        if save_logits:
            with AtomicOutput(save_logits, [model_path, text_path]) as ao:
                writer = LogitsWriter(ao.f, n_ctx, fwd.hp.n_vocab, n_chunk, ids)
                r = perplexity(fwd, ids, n_ctx, n_chunk, n_batch, bos_id(tok), on_chunk, step, writer)
        else:
            r = perplexity(fwd, ids, n_ctx, n_chunk, n_batch, bos_id(tok), on_chunk, step)
    if not quiet and not as_json:
        click.echo("", err=True)
    if as_json:
        click.echo(json.dumps(r.to_json()))
    else:
        click.echo(f"Final estimate: PPL = {r.ppl:.4f} +/- {r.ppl_error:.5f}")


@click.command("kld")
@click.option("-m", "--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The model to judge (e.g. a quant).")
@click.option("--base", "base_path", type=click.Path(exists=True, dir_okay=False),
              help="The reference model (e.g. F16), run on the same chunks.")
@click.option("-f", "--file", "text_path", type=click.Path(exists=True, dir_okay=False),
              help="Text file (with --base).")
@click.option("--logits", "logits_path", type=click.Path(exists=True, dir_okay=False),
              help="A --kl-divergence-base file (llama-perplexity's or --save-logits') instead of --base/-f.")
@click.option("--save-logits", type=click.Path(dir_okay=False),
              help="With --base: also write the base's log-probabilities file.")
@common_eval_options
def kld_cmd(model_path: str, base_path: str | None, text_path: str | None, logits_path: str | None,
            save_logits: str | None, n_ctx: int, n_chunks: int, n_batch: int, exact: bool, parse_special: bool,
            no_escape: bool, as_json: bool, quiet: bool, threads: int | None, device: str) -> None:
    """KL divergence of MODEL from a base model, as llama-perplexity --kl-divergence: mean KLD and its
    percentiles, top-token agreement, Δp statistics, both PPLs."""
    from ..eval import Forward, Tokenizer, bos_id, tokenize_file
    from ..eval.kld import base_from_file, kl_divergence, summary
    from ..eval.numerics import set_blas_threads
    from ..eval.perplexity import EvalError, LogitsWriter, chunk_count, read_logits_header

    if (logits_path is None) == (base_path is None):
        raise click.UsageError("give either --base BASE.gguf with -f TEXT, or --logits FILE")
    if base_path is not None and text_path is None:
        raise click.UsageError("--base needs -f TEXT")
    if save_logits and logits_path:
        raise click.UsageError("--save-logits writes the base's log-probabilities: use it with --base")
    check_device(device)
    set_blas_threads(threads)
    model = load_model(model_path)
    tok = Tokenizer.from_model(model)
    fwd = Forward(model, exact=exact, device=device)
    base: Any
    fh = None
    if logits_path is not None:
        fh = open(logits_path, "rb")  # noqa: SIM115 (closed below)
        hdr = read_logits_header(fh, logits_path)
        if hdr.n_vocab != fwd.hp.n_vocab:
            raise EvalError(f"inconsistent vocabulary ({hdr.n_vocab} in {logits_path} vs {fwd.hp.n_vocab})",
                            option="--logits")
        n_ctx, n_chunk, ids = hdr.n_ctx, hdr.n_chunk, hdr.tokens
        if n_chunks >= 0:
            n_chunk = min(n_chunk, n_chunks)
        base = base_from_file(fh, hdr, logits_path)
    else:
        assert base_path is not None and text_path is not None
        ids = tokenize_file(tok, text_path, parse_special, not no_escape)
        n_chunk = chunk_count(len(ids), n_ctx, n_chunks)
        base_model = load_model(base_path, "--base")
        base = Forward(base_model, exact=exact, device=device)
        if base.hp.n_vocab != fwd.hp.n_vocab:
            raise EvalError(f"inconsistent vocabulary ({base.hp.n_vocab} vs {fwd.hp.n_vocab})", option="--base")
    if not quiet:
        info(f"kld: {n_chunk} chunks of {n_ctx}" + (" on cuda" if device == "cuda" else ""))
        if not as_json:
            info("chunk   PPL            ln(PPL(Q)/PPL(base))  KL Divergence     Same top p")

    def on_chunk(i: int, n: int, acc: Any) -> None:
        if quiet or as_json:
            return
        s = summary(acc, i + 1, n_ctx)
        click.echo(f"{i + 1:4d}  {s['ppl']:9.4f}  {s['ln_ppl_ratio']:10.5f}  {s['kld_mean']:10.5f}  "
                   f"{100 * float(s['same_top_p']):6.3f} %", err=True)  # type: ignore[arg-type]

    steps, per_step = layer_steps(n_chunk, n_ctx, n_batch, fwd.hp.n_layer, 2 if logits_path is None else 1)
    try:
        with progress_bar(steps, "kld", per_step, not quiet) as step:
            if save_logits:
                with AtomicOutput(save_logits, [p for p in (model_path, base_path, text_path) if p]) as ao:
                    writer = LogitsWriter(ao.f, n_ctx, fwd.hp.n_vocab, n_chunk, ids)
                    acc = kl_divergence(fwd, ids, n_ctx, n_chunk, base, n_batch, bos_id(tok), writer, on_chunk, step)
            else:
                acc = kl_divergence(fwd, ids, n_ctx, n_chunk, base, n_batch, bos_id(tok), None, on_chunk, step)
    finally:
        if fh is not None:
            fh.close()
    s = summary(acc, n_chunk, n_ctx)
    if as_json:
        click.echo(json.dumps(s))
        return
    click.echo(f"Mean PPL(Q)                   : {s['ppl']:10.6f} ± {s['ppl_error']:10.6f}")
    click.echo(f"Mean PPL(base)                : {s['ppl_base']:10.6f} ± {s['ppl_base_error']:10.6f}")
    click.echo(f"Mean ln(PPL(Q)/PPL(base))     : {s['ln_ppl_ratio']:10.6f} ± {s['ln_ppl_ratio_error']:10.6f}")
    click.echo(f"Mean    KLD: {s['kld_mean']:10.6f} ± {s['kld_error']:10.6f}")
    for key, label in (("kld_max", "Maximum KLD"), ("kld_p99_9", "99.9%   KLD"), ("kld_p99", "99.0%   KLD"),
                       ("kld_p95", "95.0%   KLD"), ("kld_median", "Median  KLD"), ("kld_min", "Minimum KLD")):
        click.echo(f"{label}: {s[key]:10.6f}")
    click.echo(f"Mean    Δp: {100 * float(s['dp_mean']):6.3f} ± {100 * float(s['dp_error']):5.3f} %")  # type: ignore[arg-type]
    click.echo(f"RMS Δp    : {100 * float(s['dp_rms']):6.3f} ± {100 * float(s['dp_rms_error']):5.3f} %")  # type: ignore[arg-type]
    click.echo(f"Same top p: {100 * float(s['same_top_p']):6.3f} ± {100 * float(s['same_top_p_error']):5.3f} %")  # type: ignore[arg-type]
