"""What several commands share: click options made from the option table (qtool.mix.options),
the worker-count and flavour options, usage errors, and the progress bar of the commands that
write or measure tensors.

Errors: every user-facing error is a QtoolError and the click group (qtool/cli.py) reports it
(`Error: ...`, exit 1; a traceback only with `qtool --debug`). Commands raise them and catch
nothing; the one exception is an error about what was typed on the command line (an option's
value, TYPE), which `usage_error` turns into click's usage error (exit 2), except under --debug.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..errors import QtoolError
from ..mix.options import FLAG, MIX_OPTIONS, MULTI, OPTION_BY_NAME, OPTIONS, MixError, MixOptions, Option, build_options

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

class ProgressBar:
    """The rich progress bar of quantize, dequantize, dequantize --from and mix solve on stderr:
    `start(total)` once the work is known (values; None: unknown), `advance(name, n)` from the
    library's on_progress callback, `stop()` always (a `finally`). Nothing is drawn unless enabled
    (stderr a terminal, not --quiet / --json / --dry-run)."""

    def __init__(self, console: Console, label: str, enabled: bool, prefix: str = "") -> None:
        self.console, self.label, self.enabled, self.prefix = console, label, enabled, prefix
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def start(self, total: int | None) -> None:
        if not self.enabled or self._progress is not None:
            return
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  TextColumn("{task.percentage:>5.1f}%"), TimeElapsedColumn(), TimeRemainingColumn(),
                                  console=self.console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(self.label, total=total)

    def advance(self, name: str, n: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=n, description=self.prefix + name)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def plan_values(plan: Iterable[Any]) -> int:
    """How many values the tensors of a plan hold (a progress bar's total)."""
    total = 0
    for d in plan:
        n = 1
        for k in d.shape:
            n *= k
        total += n
    return total


THREADS_HELP = "Worker processes (default: all cores; 0 or less: all cores); the results do not depend on it."


def debug_enabled() -> bool:
    """`qtool --debug` was given."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return isinstance(obj, dict) and bool(obj.get("debug"))


def usage_error(e: QtoolError) -> click.UsageError:
    """The usage error (exit 2) for an error about what was typed; under --debug, e itself is raised
    (with its traceback)."""
    if debug_enabled():
        raise e
    return click.UsageError(e.message)


def click_option(o: Option, **overrides: Any) -> Decorator:
    """The click option of one row of the option table."""
    kw: dict[str, Any] = {"help": o.help}
    if o.kind == FLAG:
        kw["is_flag"] = True
    else:
        kw["metavar"] = o.metavar
        kw["default"] = None if o.default is None else str(o.default)
        kw["multiple"] = o.kind == MULTI
        if o.choices:  # as plain strings: click would show (and expect) an enum's names, not its values
            kw["type"] = click.Choice([str(c) for c in o.choices])
        elif o.existing_file:
            kw["type"] = click.Path(exists=True, dir_okay=False)
        if o.default is not None:
            kw["show_default"] = True
    kw.update(overrides)
    return click.option(o.flag, o.name, **kw)


def table_options(rows: Iterable[Option]) -> Decorator:
    """The click options of these rows, in table order."""
    decorators = [click_option(o) for o in rows]

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


mix_options = table_options(o for o in MIX_OPTIONS if o.cli)
"""llama-quantize's type-choice options (plus --custom-q, --recipe, --flavour): quantize, mix show."""
run_options = table_options(o for o in OPTIONS if o.field is None and o.cli)
"""The options of a quantize run that are not type choices (--imatrix, --include-weights, ...)."""


def options_from_cli(**kw: Any) -> MixOptions:
    """MixOptions from mix_options' parameters (other parameters are ignored); an invalid value is a
    usage error naming its option (exit 2).

    --tensor-type and --tensor-type-file rules keep their relative order only per option (click
    collects each option separately): --tensor-type rules first, then the files'.
    """
    try:
        return build_options(**{o.name: kw[o.name] for o in MIX_OPTIONS if o.cli and o.name in kw})
    except MixError as e:
        raise usage_error(e) from None


def flavour_option(**overrides: Any) -> Decorator:
    """--flavour as the option table declares it (default mainline)."""
    return click_option(OPTION_BY_NAME["flavour"], **overrides)


def threads_option(*extra_names: str, **overrides: Any) -> Decorator:
    """-t/--threads N: worker processes, all cores by default, in every command that has workers."""
    kw: dict[str, Any] = {"type": int, "default": None, "metavar": "N", "help": THREADS_HELP}
    kw.update(overrides)
    return click.option("-t", "--threads", *extra_names, "threads", **kw)


__all__ = ["THREADS_HELP", "ProgressBar", "click_option", "debug_enabled", "flavour_option", "mix_options",
           "options_from_cli", "plan_values", "run_options", "table_options", "threads_option", "usage_error"]
