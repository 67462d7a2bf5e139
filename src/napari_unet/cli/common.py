"""Helpers shared by the sub-commands: errors, reading inputs, progress."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


class CLIError(Exception):
    """Bad input: the dispatcher prints the message on one line and exits with 2."""


def subcommand_parser(parser: argparse.ArgumentParser, name: str | None) -> argparse.ArgumentParser | None:
    """The parser of sub-command ``name`` (to see which options it really has)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def _options(command: argparse.ArgumentParser | None) -> set[str]:
    return set(command._option_string_actions) if command is not None else set()


def advice(exc: CLIError, command: argparse.ArgumentParser | None) -> str:
    """``exc``'s message, with advice that names ``command``'s own options.

    The io and core layers phrase their advice for the Python API (``index=N``,
    ``add_classes=True``); their exceptions carry what the advice needs, found
    here anywhere in the chain of causes."""
    options = _options(command)
    prog = command.prog if command is not None else "napari-unet"
    cause: BaseException | None = exc
    while cause is not None:
        # duck-typed, so no module is imported here: ``api_option`` names the keyword
        # the message would advise (io.IndexRequired, core.finetune.UnknownClassError)
        option, summary = getattr(cause, "api_option", None), getattr(cause, "summary", None)
        if option == "index" and summary:
            if "--index" in options:
                return f"{summary}; pick one volume with --index N (0..{cause.count - 1})"
            return f"{summary}; {prog} reads one 2D/3D volume: save one time point / channel as its own file first"
        if option == "add_classes" and summary:
            return f"{summary}; pass --add-classes to add them" if "--add-classes" in options else summary
        cause = cause.__cause__
    return str(exc)


@contextlib.contextmanager
def one_line_warnings(prefix: str, stream: TextIO | None = None) -> Iterator[None]:
    """Show each warning raised while a command runs as one line
    ``PREFIX: warning: MESSAGE`` (not Python's two-line ``file:line`` form);
    deprecation and resource warnings, meant for developers, are not shown."""
    from napari_unet.io.base import one_line

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DeprecationWarning | PendingDeprecationWarning | ResourceWarning):
            return
        print(f"{prefix}: warning: {one_line(message)}", file=stream or sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def read_image(path: str | Path, index: int | None = None):
    """Read a scan (:class:`napari_unet.io.Scan`) or fail with a one-line message.

    ``index`` picks one time point / channel of a 4D/5D file."""
    from napari_unet.io import IOErrorMessage, read_scan

    path = Path(path)
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    try:
        return read_scan(path, index=index)
    except IOErrorMessage as exc:  # an IndexRequired gets this command's advice from the dispatcher
        raise CLIError(str(exc)) from exc


def load_model_or_fail(source: str | None, device: str = "cpu"):
    """Load a model folder / bundled name (``None``: the default) or fail clearly."""
    from napari_unet.core.weights import ModelError, load_model

    try:
        return load_model(source, device=device)
    except ModelError as exc:
        raise CLIError(str(exc)) from exc


def check_device(name: str):
    from napari_unet.core.device import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output (unless ``overwrite``) before any work is done."""
    from napari_unet.io import IOErrorMessage, format_of

    path = Path(path)
    if path.exists() and not overwrite:
        raise CLIError(f"{path} already exists (pass --overwrite to replace it)")
    try:
        format_of(path)
    except IOErrorMessage as exc:
        raise CLIError(str(exc)) from exc
    if not path.parent.exists():
        raise CLIError(f"{path.parent}: no such folder for the output")
    return path


class ProgressBar:
    """A one-line progress bar on stderr, shown only for runs longer than ``delay`` s
    and only on a terminal (or when forced), so logs stay clean."""

    def __init__(self, label: str, stream: TextIO | None = None, delay: float = 1.0, force: bool = False):
        self.label = label
        self.stream = stream or sys.stderr
        self.delay = delay
        self.enabled = force or self.stream.isatty()
        self.start = time.perf_counter()
        self.last = 0.0
        self.shown = False

    def update(self, done: int, total: int, extra: str = "") -> None:
        now = time.perf_counter()
        elapsed = now - self.start
        if not self.enabled or elapsed < self.delay or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        width = 30
        frac = done / total if total else 1.0
        bar = "#" * int(width * frac) + "-" * (width - int(width * frac))
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total} {elapsed:5.1f}s eta {eta:5.1f}s {extra}")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
