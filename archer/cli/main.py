"""The `archer` command: one Typer app, one error handler.

Every command module under `archer/cli/` is thin and imports only typer/rich at module level;
torch, transformers, verl and ray are imported inside the command bodies so that
`archer --help` stays fast.

Errors (modelled on oumi's `cli/main.py`): an `ArcherError` prints one red line and a hint and
exits with its code (2 usage, 1 runtime); a click usage error does the same with exit 2;
anything else prints "unexpected error" with a hint to set ARCHER_DEBUG=1, which shows the full
traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from archer import __version__
from archer.errors import ArcherError

DEBUG_ENV = "ARCHER_DEBUG"


def _cli_exception_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(click-style exceptions, abort exceptions) for both typer's vendored click and click itself."""
    base: list[type] = []
    aborts: list[type] = [typer.Abort]
    try:  # typer >= 0.22 vendors click
        from typer.exceptions import TyperException

        base.append(TyperException)
    except ImportError:  # pragma: no cover - older typer
        pass
    try:
        import click

        base.append(click.exceptions.ClickException)
        aborts.append(click.exceptions.Abort)
    except ImportError:  # pragma: no cover
        pass
    return tuple(base), tuple(aborts)


CONTEXT = {"help_option_names": ["-h", "--help"]}


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _print_error(message: str, hint: str | None) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(f"[bold red]Error:[/bold red] [red]{escape(message)}[/red]")
    if hint:
        console.print(f"[dim]Hint:[/dim] {escape(hint)}")


CLI_ERRORS, CLI_ABORTS = _cli_exception_types()


def _disk_full(e: BaseException) -> Any:
    """`DiskFullError` for a full-disk error that reached here unwrapped (ENOSPC, or a library's
    error quoting it), else None."""
    import errno

    full_errno = isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    if not full_errno and "No space left on device" not in str(e):
        return None
    from pathlib import Path

    from archer.core.storage import disk_full_error

    return disk_full_error(Path(str(getattr(e, "filename", None) or ".")), e)


class ArcherGroup(TyperGroup):
    """A Typer group whose `main` routes every failure through one handler."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        from archer.cli.help_style import conventional

        conventional(self)
        code = 0
        try:
            rv = super().main(
                args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra
            )
            if isinstance(rv, int) and not isinstance(rv, bool):
                code = rv
        except CLI_ERRORS as e:
            ctx = getattr(e, "ctx", None)
            if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
                typer.echo(ctx.get_help(), color=ctx.color)
                code = 0
            else:
                code = getattr(e, "exit_code", 1)
                hint = f"run '{ctx.command_path} --help' for usage" if ctx is not None and code == 2 else None
                _print_error(e.format_message(), hint)
        except CLI_ABORTS:
            _print_error("aborted", None)
            code = 1
        except ArcherError as e:
            if debug_enabled():
                import traceback

                traceback.print_exc()
            _print_error(e.message, e.hint)
            code = e.exit_code
        except KeyboardInterrupt:
            _print_error("interrupted", None)
            code = 130
        except Exception as e:  # noqa: BLE001 - the one place that catches everything
            if debug_enabled():
                raise
            full = _disk_full(e)
            if full is not None:  # a write archer does not wrap itself still gets its one line
                _print_error(full.message, full.hint)
                code = full.exit_code
            else:
                _print_error(
                    f"unexpected error: {type(e).__name__}: {e}",
                    f"set {DEBUG_ENV}=1 to see the full traceback, and please report it",
                )
                code = 1
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="archer",
    cls=ArcherGroup,
    help="archer: RL post-training of LLMs that shows which tokens matter.\n\n"
    "Train with GRPO/DAPO on the embedded local engine or on verl, record per-token entropy and "
    "influence for every rollout step, and explore them in the terminal.",
    epilog="Start with: archer train --preset quickstart   ·   archer presets ls   ·   archer env",
    no_args_is_help=True,
    context_settings=CONTEXT,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    add_completion=True,  # --install-completion, --show-completion (README: "Shell completion")
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"archer {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print archer's version and exit.", callback=_version_callback, is_eager=True
    ),
) -> None:
    """archer: RL post-training of LLMs that shows which tokens matter."""


def _register() -> None:
    # Imported here (not at the top) only to keep the registration list in one place;
    # every module below imports nothing heavy at module level.
    from archer.cli import ablate as ablate_cmd
    from archer.cli import collect as collect_cmd
    from archer.cli import data as data_cmd
    from archer.cli import env as env_cmd
    from archer.cli import eval as eval_cmd
    from archer.cli import export as export_cmd
    from archer.cli import influence as influence_cmd
    from archer.cli import presets as presets_cmd
    from archer.cli import trace as trace_cmd
    from archer.cli import train as train_cmd
    from archer.cli import view as view_cmd

    app.command("train", rich_help_panel="Run", epilog=train_cmd.EPILOG, context_settings=CONTEXT)(
        train_cmd.train
    )
    app.command("ablate", rich_help_panel="Run", epilog=ablate_cmd.EPILOG, context_settings=CONTEXT)(
        ablate_cmd.ablate
    )
    app.command("eval", rich_help_panel="Run", epilog=eval_cmd.EPILOG, context_settings=CONTEXT)(
        eval_cmd.eval_cmd
    )
    app.add_typer(data_cmd.app, name="data", rich_help_panel="Data")
    app.add_typer(presets_cmd.app, name="presets", rich_help_panel="Inspect")
    app.command("env", rich_help_panel="Inspect", epilog=env_cmd.EPILOG, context_settings=CONTEXT)(
        env_cmd.env
    )
    app.command("view", rich_help_panel="Inspect", epilog=view_cmd.EPILOG, context_settings=CONTEXT)(
        view_cmd.view
    )
    app.add_typer(trace_cmd.app, name="trace", rich_help_panel="Inspect")
    app.add_typer(influence_cmd.app, name="influence", rich_help_panel="Inspect")
    app.command("export", rich_help_panel="Inspect", epilog=export_cmd.EPILOG, context_settings=CONTEXT)(
        export_cmd.export
    )
    app.command("collect", rich_help_panel="Inspect", epilog=collect_cmd.EPILOG, context_settings=CONTEXT)(
        collect_cmd.collect
    )


_register()


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    # Hugging Face libraries draw their own progress bars for every save/load; archer has its own.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app(args=list(argv) if argv is not None else None, prog_name="archer")
