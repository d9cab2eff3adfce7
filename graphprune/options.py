"""Pass options, declared once: a field of the pass's dataclass, with its help in the metadata.

Rules:
1. ``option(default, help, ...)`` declares a field of a pass (its CLI flag, choices, metavar,
   and the CLI's own default when it differs from the API's, such as ``round_to``).
2. The CLI's flags are made from the declarations of every registered pass
   (:func:`add_flags`); an option several passes take (``ratio``, ``calib``) is one flag,
   described where it is first declared. ``cli=False`` keeps an option out of the CLI.
3. :func:`from_args` gives a pass the options its fields declare, from parsed flags;
   :func:`graphprune.prune` takes the same options as keywords (:func:`make_pass`), a keyword
   that no pass declares or that the chosen pass does not take being an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import keyword
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import InputError

_UNSET: Any = object()


def option(
    default: Any = None,
    help: str = "",
    *,
    flag: str | None = None,
    choices: Iterable[str] | None = None,
    metavar: str | None = None,
    cli: bool = True,
    cli_default: Any = _UNSET,
    compare: bool = True,
    const: Any = None,
) -> Any:
    """A pass's option: a dataclass field whose metadata makes its CLI flag (``flag`` defaults to
    ``--`` and the field's name with dashes). ``cli_default`` is what the CLI passes when the
    flag is not given, if that differs from the field's default (the API's). ``const``: the flag's
    value may be left out (``--labels`` alone means ``--labels labels``)."""
    meta = {
        "help": help,
        "flag": flag,
        "choices": None if choices is None else tuple(choices),
        "metavar": metavar,
        "cli": cli,
        "cli_default": cli_default,
        "const": const,
    }
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta, compare=compare)
    return dataclasses.field(default=default, metadata=meta, compare=compare, repr=compare)


@dataclass(frozen=True)
class Flag:
    """One CLI flag and the pass fields it sets."""

    flag: str
    dest: str
    help: str
    kind: str  # float | int | str | bool | list
    choices: tuple[str, ...] | None
    metavar: str | None
    fields: tuple[tuple[str, str], ...]  # (pass name, field name)
    const: Any = None


def _kind(annotation: str) -> str:
    """What argparse should parse, from the field's annotation (a string: postponed annotations)."""
    a = str(annotation).replace(" ", "")
    if a.startswith("tuple[") or a.startswith("list["):
        return "list"
    if a == "bool":
        return "bool"
    if a.startswith("float") or a.endswith("float"):
        return "float"
    if a.startswith("int") or a.endswith("|int") or "int|" in a:
        return "int"
    return "str"


def _dest(flag: str, name: str) -> str:
    """The argparse attribute of ``flag``: its name, or the field's when that is a keyword (``--global``)."""
    dest = flag.lstrip("-").replace("-", "_")
    return name if keyword.iskeyword(dest) else dest


def flags(passes: dict[str, type]) -> list[Flag]:
    """The CLI flags the passes' options make, in declaration order, one per flag name."""
    found: dict[str, dict] = {}
    for pass_name, cls in passes.items():
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if not meta or not meta.get("cli", False):
                continue
            flag = meta["flag"] or "--" + f.name.replace("_", "-")
            entry = found.setdefault(
                flag,
                {
                    "dest": _dest(flag, f.name),
                    "help": meta["help"],
                    "kind": _kind(f.type),
                    "choices": meta["choices"],
                    "metavar": meta["metavar"],
                    "const": meta.get("const"),
                    "fields": [],
                },
            )
            entry["fields"].append((pass_name, f.name))
    return [Flag(flag=k, **{**v, "fields": tuple(v["fields"])}) for k, v in found.items()]


def add_flags(parser: argparse.ArgumentParser, passes: dict[str, type]) -> None:
    """Add a flag for every declared option of ``passes`` (not given: None, the pass decides)."""
    for fl in flags(passes):
        kwargs: dict[str, Any] = {"dest": fl.dest, "help": fl.help, "default": None}
        if fl.kind == "bool":
            kwargs["action"] = "store_true"
        else:
            if fl.kind == "list":
                kwargs["nargs"] = "+"
            elif fl.const is not None:
                kwargs["nargs"], kwargs["const"] = "?", fl.const
            elif fl.kind in ("int", "float"):
                kwargs["type"] = int if fl.kind == "int" else float
            if fl.choices:
                kwargs["choices"] = list(fl.choices)
            if fl.metavar:
                kwargs["metavar"] = fl.metavar
        parser.add_argument(fl.flag, **kwargs)


def from_args(args: argparse.Namespace, pass_name: str, passes: dict[str, type]) -> dict[str, Any]:
    """The options of the ``pass_name`` pass given by the parsed flags (and the CLI's defaults
    where they differ from the API's); options not given are left out."""
    cls = passes[pass_name]
    declared = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for fl in flags(passes):
        for owner, name in fl.fields:
            if owner != pass_name:
                continue
            value = getattr(args, fl.dest, None)
            if value is None or value is False:
                cli_default = declared[name].metadata.get("cli_default", _UNSET)
                if cli_default is not _UNSET:
                    out[name] = cli_default
                continue
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def given_flags(args: argparse.Namespace, passes: dict[str, type]) -> dict[str, str]:
    """``{dest: flag}`` of the declared options given on the command line."""
    return {fl.dest: fl.flag for fl in flags(passes) if getattr(args, fl.dest, None) not in (None, False, [])}


def make_pass(name: str, passes: dict[str, type], **options: Any) -> Any:
    """The pass registered as ``name`` with ``options`` (None: the pass's default). An option that
    no pass declares, or that this pass does not take, is an error naming it."""
    if name not in passes:
        raise InputError(f"unknown pass {name!r}; choose from {', '.join(passes)}")
    cls = passes[name]
    takes = {f.name for f in dataclasses.fields(cls)}
    known = {f.name for c in passes.values() for f in dataclasses.fields(c)}
    for key, value in options.items():
        if key not in known:
            raise InputError(f"unknown option {key!r}; the {name} pass takes: {', '.join(sorted(takes))}")
        if key not in takes and value not in (None, False, (), []):
            raise InputError(f"the {name} pass does not take {key.replace('_', '-')}")
    # round_to None is a value: conv channels on the channel step (the CLI's default)
    return cls(**{k: v for k, v in options.items() if k in takes and (v is not None or k == "round_to")})


def with_options(func: Callable, passes: dict[str, type]) -> Callable:
    """``func`` (which takes ``**options``) showing every pass option as a keyword in its
    signature, for ``help()`` and editors: the options are declared once, on the passes."""
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    have = {p.name for p in params}
    for cls in passes.values():
        for f in dataclasses.fields(cls):
            if f.name in have or f.name.startswith("_"):
                continue
            have.add(f.name)
            # None: the chosen pass's own default (passes differ: compensate is none or lstsq)
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None))
    func.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return func
