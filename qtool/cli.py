"""The `qtool` click group: registers the commands, imported only when used (fast start-up)."""

from __future__ import annotations

import importlib
import signal
import sys

import click

from . import __version__

# command name -> ("module in qtool.commands:attribute", short help for `qtool --help`)
_COMMANDS = {
    "quantize": ("quantize_cmd:quantize", "Quantize a GGUF model like llama-quantize."),
    "mix": ("mix_cmd:mix", "Per-tensor type choice of llama-quantize: plans, ftypes, recipes."),
    "imatrix": ("imatrix_cmd:imatrix", "Importance matrices: convert, merge, show statistics."),
    "stats": ("stats_cmd:stats", "Quantization error of a model's tensors per type (quantize-stats)."),
    "types": ("types_cmd:types", "List GGML types: id, block size, bytes per block, bits per weight."),
    "perplexity": ("eval_cmd:perplexity_cmd", "Perplexity of a model on a text, like llama-perplexity."),
    "kld": ("eval_cmd:kld_cmd", "KL divergence of a model from a base model (llama-perplexity --kl-divergence)."),
    "dequantize": ("dequantize_cmd:dequantize", "Dequantize a GGUF model to F16 / BF16 / F32 like llama-quantize."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported when looked up, not when `qtool` starts."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        mod, attr = target[0].split(":")
        cmd = getattr(importlib.import_module(f"qtool.commands.{mod}"), attr)
        assert isinstance(cmd, click.Command)
        return cmd

    def invoke(self, ctx: click.Context) -> object:
        """Run the command with the one error policy: a QtoolError (or an OSError about a file) is
        `Error: message` and exit 1 without a traceback unless --debug; SIGINT, SIGTERM, SIGHUP and
        SIGQUIT unwind (temporary outputs are removed) and exit 128 + the signal number."""
        from .errors import QtoolError
        from .gguf_io.atomic import Terminated, terminating_signals

        try:
            with terminating_signals():
                return super().invoke(ctx)
        except QtoolError as e:
            if _debug(ctx):
                raise
            raise click.ClickException(e.message) from None
        except OSError as e:
            if _debug(ctx) or e.filename is None:
                raise
            raise click.ClickException(f"{e.filename}: {e.strerror or e}") from None
        except Terminated as e:
            click.echo(f"\nterminated by {signal.Signals(e.signum).name}: no output written", err=True)
            sys.exit(128 + e.signum)
        except KeyboardInterrupt:
            click.echo("\ninterrupted: no output written", err=True)
            sys.exit(130)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in _COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qtool")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Quantize GGUF models and build importance matrices (llama.cpp / ik_llama.cpp compatible)."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main() -> None:
    from .malloc_tuning import tune_malloc

    tune_malloc()  # before any array exists; forked workers inherit it
    cli(prog_name="qtool")


def _debug(ctx: click.Context) -> bool:
    obj = ctx.find_root().obj
    return bool(isinstance(obj, dict) and obj.get("debug"))
