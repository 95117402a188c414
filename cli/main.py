"""Entry point of the ``medfair`` command and the mapping of errors to one line and exit 2."""

from __future__ import annotations

import os
import re
import sys

import typer

from medfair_audit import __version__
from medfair_audit.exceptions import MedfairError

from . import data, train
from ._common import reflow_help
from .audit import audit
from .demo import demo
from .remediate import remediate
from .report import report

app = typer.Typer(
    name="medfair",
    help=(
        "Measure and repair demographic bias in text-to-medical-image diffusion models "
        "(Han et al., arXiv:2406.14847).\n\n"
        "Typical run: build or import data, train or bring a model, audit it, remediate it, "
        "compare the audits.\n\n"
        "Example: medfair data phantom --out data/corpus --n 2000 --male-fraction 0.85\n\n"
        "Set MEDFAIR_DEBUG=1 to see full tracebacks."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data.app, name="data")
app.add_typer(train.app, name="train")
app.command("audit")(audit)
app.command("remediate")(remediate)
app.command("report")(report)
app.command("demo")(demo)
reflow_help(app, data.app, train.app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medfair {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Measure and repair demographic bias in text-to-medical-image diffusion models."""


#: Library argument names that the CLI takes as positional arguments → their metavar.
POSITIONAL = {"checkpoint": "CKPT"}


def _flag(param: str) -> str:
    """Library argument name → how the user typed it."""
    if param in POSITIONAL:
        return POSITIONAL[param]
    return param if param.isupper() or param.startswith("-") else "--" + param.replace("_", "-")


#: Click's path checks, said the way medfair's own errors say things.
_CLICK_PATH = [
    (
        re.compile(r"^(?:dir|directory) '(.*)' is a file\.?$", re.I),
        "expected a folder, got the file '{}'",
    ),
    (re.compile(r"^file '(.*)' is a directory\.?$", re.I), "expected a file, got the folder '{}'"),
    (
        re.compile(r"^(?:path|file|dir|directory) '(.*)' does not exist\.?$", re.I),
        "'{}' does not exist",
    ),
]


def _bad_parameter(exc: Exception) -> str:
    """``--flag: message`` for click's BadParameter, in medfair's form."""
    message = _one_line(getattr(exc, "message", "") or str(exc))
    for pattern, form in _CLICK_PATH:
        match = pattern.match(message)
        if match:
            message = form.format(match.group(1))
            break
    param = getattr(exc, "param", None)
    if param is None:
        return message
    names = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    where = names[0] if names else (param.human_readable_name or "").upper()
    return f"{where}: {message}" if where else message


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _click_exceptions() -> tuple[type, ...]:
    """Click's exception module(s): typer ≥ 0.20 vendors its own copy of click."""
    modules = []
    try:
        import typer._click.exceptions as vendored

        modules.append(vendored)
    except ImportError:  # older typer uses click itself
        pass
    try:
        import click.exceptions as upstream

        modules.append(upstream)
    except ImportError:
        pass
    return tuple(modules)


_CLICK = _click_exceptions()


def _is(exc: BaseException, name: str) -> bool:
    return any(isinstance(exc, getattr(m, name)) for m in _CLICK if hasattr(m, name))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 2 user error, 130 interrupted)."""
    debug = os.environ.get("MEDFAIR_DEBUG", "") not in ("", "0")
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="medfair", standalone_mode=False)
    except MedfairError as exc:
        if debug:
            raise
        where = f"{_flag(exc.param)}: " if exc.param else ""
        print(f"error: {where}{_one_line(exc.message)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if _is(exc, "NoArgsIsHelpError"):
            ctx = getattr(exc, "ctx", None)
            print(ctx.get_help() if ctx is not None else "")
            return 0
        if _is(exc, "Abort"):
            print("error: interrupted", file=sys.stderr)
            return 130
        if _is(exc, "BadParameter") and not debug:
            print(f"error: {_bad_parameter(exc)}", file=sys.stderr)
            return 2
        if _is(exc, "ClickException") and not debug:
            print(f"error: {_one_line(exc.format_message())}", file=sys.stderr)
            return 2
        raise
    if result == 130:  # typer turns Ctrl-C inside a command into a silent Exit(130)
        print("error: interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
