"""The `enigma` command line: registers the commands and turns known failures into one sentence + exit code."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Annotated

import typer
from rich.markup import escape
from typer.core import TyperOption

from . import __version__
from .console import console
from .errors import EnigmaError
from .interrupt import cli_handler, handlers, signal_name, signum_of, take_last

app = typer.Typer(
    name="enigma",
    help="Score principle sets, train reasoners with ENIGMA, and analyse what training did to their geometry.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"enigma {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


def _register() -> None:
    # lazy: after _quiet_environment() (run first, below) sets what transformers and the hub read on import
    from .commands import (
        analyze_manifold,
        build_default_model,
        evaluate,
        generate,
        principles_cmd,
        score_principles,
        self_check,
        sft,
        study,
        tasks_cmd,
        train,
    )

    # The three main commands first: that is the order `enigma --help` lists them in.
    app.command("score-principles")(score_principles.score_principles)
    app.command("train")(train.train)
    app.command("analyze-manifold")(analyze_manifold.analyze_manifold)
    app.command("sft")(sft.sft)
    app.command("evaluate")(evaluate.evaluate)
    app.command("generate")(generate.generate)
    app.command("study")(study.study)
    app.add_typer(principles_cmd.app, name="principles")
    app.add_typer(tasks_cmd.app, name="tasks")
    app.command("build-default-model")(build_default_model.build_default_model)
    app.command("self-check")(self_check.self_check)


def _no_type_for_flags() -> None:
    """typer's rich help prints a type column, and `<bool>` beside an on/off flag says nothing: leave it blank."""
    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_enigma", False):
        return

    def display_type_rich(self, ctx):
        return "" if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich._enigma = True
    TyperOption.display_type_rich = display_type_rich


def _quiet_environment() -> None:
    """Library chatter (download/loading bars, advisory log lines) would drown our one-line messages on stderr.

    Progress bars are for a person at a terminal only; elsewhere the hub's are switched off for the whole run (and
    nothing of ours switches them back on, which would make huggingface_hub warn). Set before the commands are
    imported: transformers reads its verbosity when it is first imported.
    """
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


_quiet_environment()
_register()
_no_type_for_flags()


def quiet_known_warnings() -> None:
    """Library warnings that say nothing to a user of enigma, each silenced by its exact message (never all)."""
    # peft's get_peft_model reads transformers' deprecated `is_gradient_checkpointing` (LoRA training).
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, map EnigmaError to its exit code with one sentence on stderr."""
    _quiet_environment()
    quiet_known_warnings()
    with handlers(cli_handler):  # SIGTERM unwinds like Ctrl-C: temporary files go, locks are dropped
        return _run(argv)


def _error(message: str) -> None:
    """'error: <message>' on one line; the message is text, never rich markup ('[enforce fail at ...]')."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _say(message: str) -> None:
    console.print(message, highlight=False, soft_wrap=True, markup=False)


def _interrupted(err: KeyboardInterrupt) -> int:
    """Ctrl-C, SIGTERM (interrupt.Interrupted), or a run's own line saying where it stopped: one line, 128 + N."""
    signum = signum_of(err)
    _say(getattr(err, "message", None) or f"interrupted ({signal_name(signum)})")
    return 128 + signum


def _usage_error(err) -> int:
    """Typer's usage errors as one line too ('error: No such option: --bogus; see `enigma train --help`.')."""
    if err.exit_code == 0 or type(err).__name__ == "NoArgsIsHelpError" or not callable(
            getattr(err, "format_message", None)):
        err.show()  # the help text itself
        return err.exit_code
    ctx = getattr(err, "ctx", None)
    text = err.format_message().strip().rstrip(".")
    if getattr(ctx, "command_path", None):
        text += f"{' See' if text.endswith('?') else '; see'} `{ctx.command_path} --help`"
    _error(f"{text}.")
    return err.exit_code


def _run(argv: list[str] | None) -> int:
    take_last()  # forget one from an earlier in-process call
    try:
        rc = app(args=argv, standalone_mode=False)
        if rc == 130 and (stopped := take_last()) is not None:  # typer swallowed it into exit code 130
            return _interrupted(stopped)
    except EnigmaError as err:
        if _state["debug"]:
            console.print_exception()
        _error(str(err))
        return err.exit_code
    except typer.Exit as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # typer turns an interrupt into Exit(130)
            return _interrupted(exc.__cause__)
        return exc.exit_code
    except typer.Abort:
        _say("aborted")
        return 1
    except KeyboardInterrupt as err:
        return _interrupted(err)
    except OSError as err:  # disk full, permissions, ...: name the file when the error knows it
        if _state["debug"]:
            console.print_exception()
        where = f" ({err.filename})" if err.filename else ""
        reason = err.strerror or str(err) or type(err).__name__
        _error(f"{reason}{where}.")
        return 1
    except Exception as err:  # noqa: BLE001 - the last line of defence: one sentence, not a traceback
        # Usage errors: typer may bundle its own click, so match the ClickException interface, not the class.
        if callable(getattr(err, "show", None)) and isinstance(getattr(err, "exit_code", None), int):
            return _usage_error(err)
        if _state["debug"]:
            console.print_exception()
        else:
            _error(f"{type(err).__name__}: {err} (rerun with --debug for the traceback)")
        return 1
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
