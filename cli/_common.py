"""Shared pieces of the CLI: the progress bar, option types and printing."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from medfair_audit.progress import ProgressEvent

err_console = Console(stderr=True, highlight=False, markup=False)
out_console = Console(highlight=False, markup=False)

OutDir = Annotated[
    Path,
    typer.Option(
        "--out", "-o", help="Folder to write (absent or empty unless --overwrite).", file_okay=False
    ),
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")]
OverwriteFile = Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Seed of every random draw.")]
TrustPickle = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Allow .bin/.pt/.ckpt weights (loading a pickle runs code from the file).",
    ),
]
Resume = Annotated[
    bool, typer.Option("--resume", help="Continue from the checkpoints in OUT.partial/.")
]
KeepCheckpoints = Annotated[
    bool, typer.Option("--keep-checkpoints", help="Keep OUT.partial/ after success.")
]
TargetSpec = Annotated[
    str,
    typer.Option(
        "--target",
        help="target.json or inline proportions, e.g. male=0.58,female=0.42 (joint cells: "
        "female/<40=0.1,...; see medfair data target).",
    ),
]
PromptsFile = Annotated[
    Path | None,
    typer.Option("--prompts", help="Text file, one prompt per line ('#' comments)."),
]
PromptText = Annotated[
    list[str] | None,
    typer.Option("--prompt", help="A prompt (repeatable); instead of --prompts."),
]


def defaults(config: type) -> dict[str, Any]:
    """Field → default of a config dataclass: where every CLI option default comes from."""
    fields = dataclasses.fields(config)
    return {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}


def config_from(config: type, values: Mapping[str, Any], **given: Any) -> Any:
    """Build ``config`` from the command's parameters that are its fields, plus ``given``."""
    names = {f.name for f in dataclasses.fields(config)}
    return config(**{k: v for k, v in values.items() if k in names and k not in given}, **given)


def joined(values: Any) -> str:
    """A sequence default as the comma-separated text an option takes (``48,96,96``)."""
    return ",".join(str(v) for v in values)


AllowOutsideRoot = Annotated[
    bool,
    typer.Option(
        "--allow-outside-root",
        help="Read images that lie outside the data folder ('..' or absolute paths in a "
        "metadata table, symlinks leading out); refused by default.",
    ),
]
Classifiers = Annotated[
    list[str],
    typer.Option(
        "--classifier",
        help="Subgroup classifier folder. Several attributes: repeat it as ATTRIBUTE=FOLDER "
        "(--classifier sex=models/sex --classifier age_band=models/age), or give one joint "
        "classifier's folder; the target must then be joint over the same attributes.",
    ),
]


def classifiers_and_target(classifiers: list[str], target: str) -> tuple[Any, Any]:
    """The classifier folder (or attribute → folder) and the target read for them."""
    from medfair_audit.attributes import parse_classifier_specs
    from medfair_audit.target import parse_target

    spec = parse_classifier_specs(classifiers)
    attrs = list(spec) if isinstance(spec, dict) else "sex"
    return spec, parse_target(target, attribute=attrs)


Device = Annotated[
    str,
    typer.Option(
        "--device",
        help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps. Under accelerate "
        "launch each process takes the GPU of its local rank.",
    ),
]
Dtype = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="Precision of the diffusion model: auto (bfloat16 on GPUs that have it, float16 on "
        "older ones, float32 on the CPU), float32, float16 or bfloat16. Classifiers and "
        "features always run in float32.",
    ),
]


def placement(device: str, dtype: str) -> object:
    """The checked :class:`~medfair_audit.config.Placement` of ``--device`` and ``--dtype``."""
    from medfair_audit.config import Placement

    return Placement(device=device, dtype=dtype)


def prompt_texts(prompts: Path | None, prompt: list[str] | None) -> list[str]:
    """The prompts of ``--prompts FILE`` or the repeated ``--prompt TEXT`` (exactly one of them)."""
    from medfair_audit.exceptions import ConfigError

    if (prompts is None) == (not prompt):
        raise ConfigError(
            "give --prompts FILE or at least one --prompt TEXT (not both)", param="prompts"
        )
    if prompts is None:
        return list(prompt)
    from medfair_audit import read_prompts

    return read_prompts(prompts)


@contextmanager
def progress_bar(quiet: bool = False) -> Iterator[callable]:
    """A progress callback that draws one Rich bar per stage on stderr."""
    if quiet or not sys.stderr.isatty():
        last: dict[str, float] = {}

        def plain(event: ProgressEvent) -> None:
            # Without a terminal: one line per stage at its end, so logs stay readable.
            if event.total is not None and event.completed >= event.total:
                if last.get(event.stage) != event.completed and not quiet:
                    err_console.print(f"{event.stage}: {event.completed}/{event.total} done")
                last[event.stage] = event.completed

        yield plain
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console) as bar:
        tasks: dict[str, TaskID] = {}
        started: dict[str, float] = {}

        def callback(event: ProgressEvent) -> None:
            if event.stage not in tasks:
                tasks[event.stage] = bar.add_task(event.stage, total=event.total, info="")
                started[event.stage] = time.perf_counter()
            rate = event.completed / max(time.perf_counter() - started[event.stage], 1e-9)
            info = " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in event.info.items()
            )
            bar.update(
                tasks[event.stage],
                completed=event.completed,
                total=event.total,
                info=f"{rate:.1f}/s {info}".strip(),
            )

        yield callback


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence the progress bars and advisory warnings of transformers and diffusers.

    The CLI draws its own progress; the libraries' per-load bars would interleave with it.
    """
    import logging
    import warnings

    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    tlog.disable_progress_bar()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    dlog.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def split_list(value: str | None) -> list[str] | None:
    """Split a comma-separated option value (``None`` stays ``None``)."""
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def reflow(doc: str | None) -> str | None:
    """A command's docstring with each prose paragraph on one line, so Rich wraps it to the width.

    Rich keeps a docstring's line breaks and wraps on top of them, which leaves ragged lines at
    80 columns. Paragraphs are separated by blank lines. An indented paragraph holds example
    commands: each is re-wrapped to 76 columns with its continuation lines indented further, so
    it reads as one command at any terminal width from 80 up.
    """
    import inspect
    import textwrap

    if not doc:
        return doc

    def example(paragraph: str) -> str:
        commands: list[str] = []
        for line in paragraph.splitlines():
            text = line.strip()
            if not commands or text.split(" ", 1)[0] in COMMAND_WORDS:
                commands.append(text)
            else:
                commands[-1] += " " + text
        return "\n".join(
            textwrap.fill(
                c,
                width=76,
                initial_indent="    ",
                subsequent_indent="        ",
                break_long_words=False,
                break_on_hyphens=False,
            )
            for c in commands
        )

    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(
        example(p) if p.startswith(" ") else " ".join(line.strip() for line in p.splitlines())
        for p in paragraphs
    )


#: First words of the lines that start a new example command in a docstring.
COMMAND_WORDS = ("medfair", "torchrun", "accelerate", "make", "python", "$")


def reflow_help(*apps: typer.Typer) -> None:
    """Apply :func:`reflow` to the docstring of every command of ``apps``."""
    for app in apps:
        for info in app.registered_commands:
            info.callback.__doc__ = reflow(info.callback.__doc__)
