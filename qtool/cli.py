"""The `qtool` click group: registers the command groups, nothing else."""

from __future__ import annotations

import importlib

import click

from . import __version__

# command name -> "module:attribute" in qtool.commands
_COMMANDS = {
    "quantize": "quantize_cmd:quantize",
    "types": "types_cmd:types",
    "stats": "stats_cmd:stats",
    "mix": "mix_cmd:mix",
    "imatrix": "imatrix_cmd:imatrix",
}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qtool")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Quantize GGUF models and build importance matrices (llama.cpp / ik_llama.cpp compatible)."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


for _name, _target in _COMMANDS.items():
    _mod, _attr = _target.split(":")
    cli.add_command(getattr(importlib.import_module(f"qtool.commands.{_mod}"), _attr), _name)


def main() -> None:
    cli(prog_name="qtool")
