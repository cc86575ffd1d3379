"""`qtool imatrix collect`: llama-imatrix's collection (run a model over text, record the squared
activations entering every weight matmul) on qtool's forward pass (qtool.imatrix.collect)."""

from __future__ import annotations

import json
import os

import click

from ..imatrix import FORMATS, format_for_path, read_imatrix, write_imatrix
from ..imatrix.merge import combine
from .common import threads_option
from .eval_cmd import EXACT_HELP, THREADS_HELP, check_device, device_option, info, layer_steps, load_model, progress_bar


@click.command("collect")
@click.option("-m", "--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="GGUF model to run (F16 or any type the engine dequantizes).")
@click.option("-f", "--file", "text_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Text to run it over (stored as the dataset name, as given).")
@click.option("-o", "--output", "out", default="imatrix.gguf", show_default=True, type=click.Path(dir_okay=False),
              help="Output imatrix file.")
@click.option("--output-format", type=click.Choice(FORMATS), default=None,
              help="gguf or dat (default: from the extension, gguf otherwise).")
@click.option("--chunks", "n_chunks", type=int, default=-1, show_default=True,
              help="Chunks to process (-1: all the text gives).")
@click.option("-c", "--ctx-size", "n_ctx", type=int, default=512, show_default=True, help="Tokens per chunk.")
@click.option("-b", "--batch-size", "n_batch", type=int, default=2048, show_default=True,
              help="Tokens per batch (n_batch / n_ctx chunks together).")
@click.option("--in-file", "in_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Imatrix files to start from (their sums, counts and datasets are added), repeatable.")
@click.option("--process-output", is_flag=True, help="Also collect output.weight.")
@click.option("--parse-special", is_flag=True, help="Parse special tokens in the text.")
@click.option("--no-escape", is_flag=True, help="Do not process escapes in the text (llama.cpp does by default).")
@click.option("--save-frequency", type=int, default=0, show_default=True,
              help="Also write OUT.at_N every N chunks (0: never).")
@click.option("--no-ppl", is_flag=True, help="Do not compute the running perplexity.")
@click.option("--exact/--no-exact", default=True, help=EXACT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or running values.")
@threads_option(help=THREADS_HELP)
@device_option()
def collect(model_path: str, text_path: str, out: str, output_format: str | None, n_chunks: int, n_ctx: int,
            n_batch: int, in_files: tuple[str, ...], process_output: bool, parse_special: bool, no_escape: bool,
            save_frequency: int, no_ppl: bool, exact: bool, as_json: bool, quiet: bool, threads: int | None,
            device: str) -> None:
    """Collect an importance matrix as llama-imatrix does: chunks of -c tokens, the squared inputs of
    every blk.* weight matmul (per expert for MoE tensors), the running PPL."""
    from ..eval import Forward, Tokenizer, bos_id, tokenize_file
    from ..eval.numerics import set_blas_threads
    from ..eval.perplexity import chunk_count, n_seq_for
    from ..gguf_io.atomic import check_output
    from ..imatrix.collect import Collector, collect_imatrix, dataset_name

    check_device(device)
    set_blas_threads(threads)
    fmt = output_format or format_for_path(out) or "gguf"
    inputs = [model_path, text_path, *in_files]
    check_output(out, inputs)  # before any work
    n_seq = n_seq_for(n_ctx, n_batch)
    model = load_model(model_path)
    tok = Tokenizer.from_model(model)
    ids = tokenize_file(tok, text_path, parse_special, not no_escape)
    n_chunk = chunk_count(len(ids), n_ctx, n_chunks, what="collect an imatrix")
    datasets = [dataset_name(text_path)]
    collector = Collector(n_ctx, process_output)
    if in_files:
        collector.load(combine([read_imatrix(p) for p in in_files], n_ctx))

    def save_at(step: int) -> None:
        # IMatrixCollector::collect_imatrix: (m_last_chunk % n_save_freq) / chunk_step == 0
        if save_frequency > 0 and (collector.last_chunk % save_frequency) // step == 0:
            path = f"{out}.at_{collector.last_chunk}"
            write_imatrix(collector.result(datasets), path, fmt, inputs=inputs)

    collector.on_chunk = save_at
    fwd = Forward(model, exact=exact, observer=collector, device=device)
    if not quiet:
        info(f"imatrix collect: {len(ids)} tokens, {n_chunk} chunks of {n_ctx}, {n_seq} per batch"
             + (" on cuda" if device == "cuda" else ""))

    def on_chunk(i: int, n: int, ppl: float | None) -> None:
        if not quiet and not as_json and ppl is not None:
            click.echo(f"[{i + 1}]{ppl:.4f},", nl=False, err=True)

    total, per_step = layer_steps(n_chunk, n_ctx, n_batch, fwd.hp.n_layer)
    with progress_bar(total, "imatrix", per_step, not quiet) as step:
        r = collect_imatrix(fwd, collector, ids, n_ctx, n_chunk, n_batch, bos_id(tok), not no_ppl, datasets,
                            on_chunk, step)
    if not quiet and not as_json:
        click.echo("", err=True)
    written = write_imatrix(r.data, out, fmt, warn=lambda m: click.echo(f"warning: {m}", err=True), inputs=inputs)
    summary = {"output": os.fspath(out), "format": written, "entries": len(r.data.entries),
               "chunks": r.data.chunk_count, "chunk_size": r.data.chunk_size, "tokens": r.tokens,
               "ppl": r.ppl, "ppl_error": r.ppl_error}
    if as_json:
        click.echo(json.dumps(summary))
    elif not quiet:
        if r.ppl is not None:
            info(f"Final estimate: PPL = {r.ppl:.4f} +/- {r.ppl_error:.5f}")
        info(f"stored {len(r.data.entries)} entries after {r.data.chunk_count} chunks in {out} ({written})")
