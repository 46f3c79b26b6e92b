"""Turn a config dataclass into argparse options, with each field's docstring as its help.

Field docstrings (a string literal right under the field, as in CleanRL) are read from the class
source with ``ast``; Python keeps no such docstrings at run time, and neither argparse nor
HfArgumentParser reads them, hence this small module. Options use dashes (``--max-steps``). A
``--config FILE`` (YAML or JSON) supplies the same fields; options given on the command line win.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from rwft.errors import RwftError


def field_docs(cls: type) -> dict[str, str]:
    """Map each field of a dataclass (and its bases) to the docstring written under it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Strip Optional[...]; say whether None was allowed."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(get_args(tp))
    return tp, False


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per field; defaults are left as SUPPRESS so a config file can fill them."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        help_text = docs.get(f.name, "")
        help_text += " (required)" if required else f" (default: {default})"
        help_text = help_text.replace("%", "%%")  # argparse %-formats help strings
        kwargs: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS, "dest": f.name}
        names = [f"--{f.name.replace('_', '-')}"]
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(tp) is Literal:
            kwargs["choices"] = list(get_args(tp))
        elif get_origin(tp) in (list, tuple):
            (inner, *_) = get_args(tp) or (str,)
            kwargs.update(nargs="+", type=inner)
        else:
            kwargs["type"] = tp
        parser.add_argument(*names, **kwargs)


def build_config(cls: type, namespace: argparse.Namespace) -> Any:
    """Merge ``--config FILE`` (if any) with the options given; unknown or missing fields are errors."""
    values: dict[str, Any] = {}
    config_file = getattr(namespace, "config", None)
    if config_file:
        values.update(read_config_file(Path(config_file), cls))
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(namespace).items() if k in names})
    missing = [
        f"--{f.name.replace('_', '-')}"
        for f in dataclasses.fields(cls)
        if f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise RwftError(f"missing required option(s): {', '.join(missing)}")
    return cls(**values)


def read_config_file(path: Path, cls: type) -> dict[str, Any]:
    """Read a YAML or JSON mapping of field names (dashes or underscores) to values."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except FileNotFoundError:
        raise RwftError(f"{path}: config file not found") from None
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RwftError(f"{path}: not valid YAML/JSON: {e}") from None
    if not isinstance(data, dict):
        raise RwftError(f"{path}: expected a mapping of option names to values, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise RwftError(f"{path}: unknown field {key!r}; known: {', '.join(sorted(names))}")
        out[name] = value
    return out
