"""pydantic's validation of tau2-bench's data models, for the tools of ``--env tod source=tau2-*``.

tau2's tools (``tau2/domains/<domain>/tools.py``) run on pydantic models and are called with the agent's
arguments as they are; where a tool builds a model from them (``Passenger(**passenger)``, ``Certificate(amount=
amount, ...)``, ``Reservation(...)``, ``UserAddress(...)``, ``Task(...)``), pydantic converts them (lax mode:
``150.0`` or ``"150"`` to the ``int`` 150, an ``int`` to a ``float``, unknown fields dropped) or refuses them (a
number for a string, a value outside a ``Literal``, a missing field), and what it keeps is what the database
holds. rwft's tools (``tod_tau2_tools``, ``tod_tau2_airline``) call :func:`validate` at the same places. The
models are read from the wheel's ``data_model.py`` as text (``ast``), as ``tod_tau2_data`` reads the tools.
"""

from __future__ import annotations

import ast
import copy
import functools
import re
from typing import Any

from rwft.rollout.envs.tod_tau2_data import wheel_root

_REQUIRED = object()


@functools.cache
def data_models(dom: str) -> dict[str, Any]:
    """The wheel's ``data_model.py`` of a domain: ``Literal`` aliases (name -> values) and classes (name ->
    {field: (annotation, default or ``_REQUIRED``)}, the base classes' fields first, as pydantic orders them)."""
    tree = ast.parse((wheel_root() / "tau2" / "domains" / dom / "data_model.py").read_text(encoding="utf-8"))
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Subscript) \
                and ast.unparse(node.value.value) == "Literal":
            out[node.targets[0].id] = list(ast.literal_eval(node.value.slice))  # type: ignore[union-attr]
        elif isinstance(node, ast.ClassDef):
            fields: dict[str, Any] = {}
            for base in node.bases:
                fields.update(out.get(ast.unparse(base)) or {})
            for n in node.body:
                if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
                    fields[n.target.id] = (ast.unparse(n.annotation), _default(n.value))
            out[node.name] = fields
    return out


def _default(value: ast.expr | None) -> Any:
    if value is None:
        return _REQUIRED
    if isinstance(value, ast.Call) and ast.unparse(value.func) == "Field":
        kw = {k.arg: k.value for k in value.keywords}
        if "default_factory" in kw:
            return {"list": [], "dict": {}}.get(ast.unparse(kw["default_factory"]), _REQUIRED)
        given = value.args[0] if value.args else kw.get("default")
        return _REQUIRED if given is None or ast.unparse(given) == "..." else ast.literal_eval(given)
    return ast.literal_eval(value)


def validate(dom: str, ann: str, value: Any, where: str = "") -> Any:
    """``value`` as pydantic (lax mode) validates it against annotation ``ann`` of the domain's data model
    (``"Passenger"``, ``"List[Payment]"``, ``"int"``, ...): a class's fields validated (a missing required field
    refused, unknown ones dropped, defaults filled in), numbers and numeric strings converted to ``int`` /
    ``float``, strings and ``Literal`` values exact. ValueError (pydantic's first line, then where and why) when
    it fails, as tau2's model raises. Annotations it does not know (``Dict``, ``Union``, ...) pass the value as
    it is."""
    models = data_models(dom)
    ann = ann.strip()
    inner = re.fullmatch(r"Optional\[(.+)\]", ann) or re.fullmatch(r"(.+?)\s*\|\s*None", ann)
    if inner:
        return None if value is None else validate(dom, inner.group(1), value, where)
    inner = re.fullmatch(r"(?:List|list)\[(.+)\]", ann)
    if inner:
        if not isinstance(value, (list, tuple)):
            raise _invalid(where, "Input should be a valid list")
        return [validate(dom, inner.group(1), v, f"{where}.{k}") for k, v in enumerate(value)]
    literal = re.fullmatch(r"Literal\[(.+)\]", ann)
    choices = ast.literal_eval(f"[{literal.group(1)}]") if literal else models.get(ann)
    if isinstance(choices, list):
        if not any(type(value) is type(c) and value == c for c in choices):
            raise _invalid(where, "Input should be " + " or ".join(repr(c) for c in choices))
        return value
    if isinstance(choices, dict):
        where = where or ann
        if not isinstance(value, dict):
            raise _invalid(where, f"Input should be a valid dictionary or instance of {ann}")
        out = {}
        for field, (sub, default) in choices.items():
            if field in value:
                out[field] = validate(dom, sub, value[field], f"{where}.{field}")
            elif default is _REQUIRED:
                raise _invalid(f"{where}.{field}", "Field required")
            else:
                out[field] = copy.deepcopy(default)
        return out
    return _scalar(ann, value, where)


def _scalar(ann: str, value: Any, where: str) -> Any:
    """pydantic's lax ``str`` (strings only), ``float`` (numbers, booleans, numeric strings) and ``int`` (whole
    numbers, booleans, whole numeric strings); other annotations pass the value as it is."""
    if ann not in ("str", "int", "float") or ann == "str" and isinstance(value, str):
        return value
    if ann == "float" and isinstance(value, (int, float)):
        return float(value)
    if ann == "float" and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if ann == "int" and isinstance(value, int):
        return int(value)
    if ann == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if ann == "int" and isinstance(value, str) and re.fullmatch(r"[+-]?\d+(?:_\d+)*(?:\.0*)?", value.strip()):
        return int(value.strip().split(".")[0])
    kind = {"str": "a valid string", "float": "a valid number", "int": "a valid integer"}[ann]
    raise _invalid(where, f"Input should be {kind}, got {value!r}")


def _invalid(where: str, why: str) -> ValueError:
    model, _, loc = where.partition(".")
    return ValueError(f"1 validation error for {model}\n{loc or model}\n  {why}")
