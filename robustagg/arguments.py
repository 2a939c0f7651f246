"""argparse types, output-path checks and dataclass-field options shared by every ``robustagg`` command.

A bad value exits with status 2 and one line naming the option and the value, before any work starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Iterable
from typing import Any

from .validation import check_real, describe_interval

__all__ = [
    "add_options",
    "check_output_dir",
    "check_output_path",
    "checked",
    "closed_unit_interval",
    "finite_float",
    "fraction",
    "int_list",
    "nonnegative_float",
    "nonnegative_int",
    "option",
    "option_values",
    "output_dir",
    "output_path",
    "positive_float",
    "positive_float_or_inf",
    "positive_int",
    "real_type",
    "unit_interval",
    "write_text",
]


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    convert.__name__ = what
    return convert


positive_int = _int_at_least(1, "a positive integer")
nonnegative_int = _int_at_least(0, "an integer >= 0")


_SUFFIX = {"k": 1000, "m": 1000**2, "g": 1000**3}


def int_list(text: str) -> list[int]:
    """Comma-separated positive integers, each optionally with a k / M / G (decimal) suffix."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        scale = _SUFFIX.get(part[-1].lower(), 1)
        out.append(positive_int(part[:-1] if scale > 1 else part) * scale)
    if not out:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return out


def real_type(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
) -> Callable[[str], float]:
    """An argparse type: a float meeting :func:`robustagg.validation.check_real`'s condition with these bounds."""
    condition = describe_interval(low, high, low_open, high_open, allow_inf)
    what = f"a number {condition}" if condition.startswith("in ") else f"a number ({condition})"

    def convert(text: str) -> float:
        try:
            return check_real(
                float(text), "value", "option", low, high, low_open=low_open, high_open=high_open, allow_inf=allow_inf
            )
        except ValueError:  # not a number, or out of bounds
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    convert.__name__ = what
    return convert


positive_float = real_type(0.0, low_open=True)
positive_float_or_inf = real_type(0.0, low_open=True, allow_inf=True)
nonnegative_float = real_type(0.0)
finite_float = real_type()
unit_interval = real_type(0.0, 1.0, high_open=True)  # momenta: 1 would never take a gradient
closed_unit_interval = real_type(0.0, 1.0)
fraction = real_type(0.0, 1.0, low_open=True)


def _check_folder(folder: str) -> None:
    """``folder`` exists as a writable directory or can be made: its nearest existing ancestor is one."""
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{probe!r} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write in {probe!r}")


def check_output_path(path: str) -> str:
    """A file the run can write at its end: not a directory, not read-only, its folder writable or creatable
    (the writers make missing folders). Raises ValueError saying what is wrong."""
    if not path:
        raise ValueError("expected a file path, got ''")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, expected a file path")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"{path!r} is not writable")
    _check_folder(os.path.dirname(os.path.abspath(path)))
    return path


def check_output_dir(path: str) -> str:
    """A folder the run can write its files in: an existing writable directory, or one that can be made."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{path!r} is not a directory")
    _check_folder(os.path.abspath(path))
    return path


def checked(check: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse type that keeps the text once ``check(text)`` accepts it; its ValueError is the error line."""

    def convert(text: str) -> str:
        try:
            check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    convert.__name__ = check.__name__
    return convert


output_path = checked(check_output_path)
output_dir = checked(check_output_dir)


def option(
    default: Any, help: str, *, type: Callable[[str], Any] | None = None, choices: Iterable[str] | None = None
) -> Any:
    """A dataclass field that is also the command-line option ``--<name with dashes>`` (see :func:`add_options`).

    ``help`` says what the option means; `` (default <default>)`` is appended unless it states its default
    itself (``%(default)s`` stands for the field's default). ``type`` converts and checks the text (one of the
    types above), ``choices`` lists the accepted values.
    """
    return dataclasses.field(default=default, metadata={"option": {"help": help, "type": type, "choices": choices}})


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """One option per :func:`option` field of the dataclass ``cls``, in field order, with the field's default."""
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("option")
        if spec is None:
            continue
        help = spec["help"] if "(default" in spec["help"] else spec["help"] + " (default %(default)s)"
        extra = {"choices": list(spec["choices"])} if spec["choices"] is not None else {}
        parser.add_argument("--" + f.name.replace("_", "-"), type=spec["type"], default=f.default, help=help, **extra)


def option_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The parsed values of the :func:`option` fields of ``cls``, by field name: ``cls(**option_values(...))``."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if "option" in f.metadata}


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path``, making its folder first."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
