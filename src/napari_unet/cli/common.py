"""Helpers shared by the sub-commands: errors, reading inputs, progress."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


class CLIError(Exception):
    """Bad input: the dispatcher prints the message on one line and exits with 2."""


def read_image(path: str | Path, index: int | None = None):
    """Read a scan (:class:`napari_unet.io.Scan`) or fail with a one-line message.

    ``index`` picks one time point / channel of a 4D/5D file."""
    from napari_unet.io import IOErrorMessage, read_scan

    path = Path(path)
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    try:
        return read_scan(path, index=index)
    except IOErrorMessage as exc:
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
