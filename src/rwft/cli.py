"""The ``rwft`` command: one verb per stage, each a config dataclass and a run function.

Options are parsed by transformers' ``HfArgumentParser`` from the verb's config dataclass, so the trainers'
configs (subclasses of TrainingArguments / TRL's DPOConfig) take every option of the ecosystem, as
``--max-steps`` or ``--max_steps``. rwft's own fields are documented by the docstring written under each
(CleanRL's style, read from the source with ``ast``: Python keeps no field docstrings at run time), which
becomes its ``--help``. ``--config FILE`` (YAML or JSON, a TRL user's YAML included) supplies any option;
options on the command line win. Any user-facing error (``RwftError``, a bad option, a bad value) prints one
line on stderr and exits with 2.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from rwft.errors import RwftError

# verb -> (module, config class, run function, one-line help). Modules are imported lazily.
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "validate": ("rwft.data.validate", "ValidateConfig", "run_validate", "check a dataset and print a summary"),
    "train": ("rwft.train.trainers", "TrainConfig", "train", "train a policy on logged conversations"),
    "export": ("rwft.data.export", "ExportConfig", "run_export", "write Refit as a plain SFT dataset"),
    "dpo": ("rwft.train.dpo", "DpoConfig", "run_dpo", "train the DPO / StepDPO baselines (TRL DPOTrainer)"),
    "eval": ("rwft.eval.evaluate", "EvalConfig", "run_eval", "play a policy in an environment and measure it"),
    "compare": ("rwft.recipes.compare", "CompareConfig", "run_compare", "objectives x seeds: table, plots, report"),
    "collect": ("rwft.rollout.collect", "CollectConfig", "run_collect", "run a policy in an environment, log episodes"),
    "label": ("rwft.rollout.label", "LabelConfig", "run_label", "add or replace rewards on logs with a judge"),
    "bootstrap": ("rwft.recipes.bootstrap", "BootstrapConfig", "run_bootstrap", "make pi_0 by SFT on scripted play"),
    "iterate": ("rwft.recipes.iterate", "IterateConfig", "run_iterate", "collect and train, syncing every S steps"),
    "sweep": ("rwft.recipes.sweep", "SweepConfig", "run_experiment",
              "iterate over objectives x sync intervals x seeds from one pi_0: table, curves"),
}


def field_docs(cls: type) -> dict[str, str]:
    """Map each field of a dataclass (and of its dataclass bases) to the docstring written under it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or not klass.__module__.startswith("rwft"):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


class _Parser:
    """HfArgumentParser whose errors are RwftErrors (one line, exit 2) instead of argparse's usage dump."""

    def __new__(cls, config_cls: type, prog: str, description: str):
        from transformers import HfArgumentParser

        class Parser(HfArgumentParser):
            def error(self, message: str):
                raise RwftError(message)

        parser = Parser(config_cls, prog=prog, description=description)
        docs = field_docs(config_cls)
        for f in dataclasses.fields(config_cls):  # a help text made at run time (the objectives' list) follows
            if f.name in docs and f.metadata.get("help"):
                docs[f.name] += " " + f.metadata["help"]
        for action in parser._actions:
            if action.dest in docs:  # HfArgumentParser's formatter adds the "(default: ...)"
                action.help = docs[action.dest].replace("%", "%%")  # argparse %-formats help
        for action in parser._actions:
            action.required = False  # checked after merging --config and the positional DATA (parse_config)
        if "data" in docs:  # `rwft validate logs.jsonl`: the data path may come first, without --data
            parser.add_argument("data_path", nargs="?", metavar="DATA", help="the same as --data")
        parser.add_argument("--config", help="a YAML or JSON file with any of the options (command line wins)")
        return parser


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping of option names to values."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except FileNotFoundError:
        raise RwftError(f"{path}: config file not found") from None
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RwftError(f"{path}: not valid YAML/JSON: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise RwftError(f"{path}: expected a mapping of option names to values, got {type(data).__name__}")
    return data


def apply_config_file(parser: argparse.ArgumentParser, path: Path) -> None:
    """Make the file's values the parser's defaults, so options on the command line still win."""
    by_option = {s: a for a in parser._actions for s in a.option_strings}
    defaults = {}
    for key, value in read_config_file(path).items():
        action = by_option.get(f"--{key}") or by_option.get(f"--{str(key).replace('-', '_')}")
        if action is None or action.dest in ("config", "help"):
            raise RwftError(f"{path}: unknown option {key!r} (see --help for the options)")
        defaults[action.dest] = value
    parser.set_defaults(**defaults)


def parse_config(verb: str, argv: list[str]) -> Any:
    """The verb's config from its command-line options and an optional ``--config FILE``."""
    module, cls_name, _, help_text = COMMANDS[verb]
    cls = getattr(importlib.import_module(module), cls_name)
    parser = _Parser(cls, prog=f"rwft {verb}", description=help_text)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        apply_config_file(parser, Path(known.config))
    ns = parser.parse_args(argv)
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(ns, f.name)}
    if getattr(ns, "data_path", None):
        values["data"] = ns.data_path
    missing = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               and values.get(f.name) is None]
    if missing:
        raise RwftError(f"missing required option(s): {', '.join(missing)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise RwftError(" ".join(str(e).split())) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        parser = argparse.ArgumentParser(prog="rwft", description="Offline RL for LLM conversation policies.")
        sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
        for verb, (*_, help_text) in COMMANDS.items():
            sub.add_parser(verb, help=help_text, add_help=False)
        parser.parse_args(argv[:1])  # prints the verbs (--help) or says which verb is unknown; exits
        return 2
    verb = argv[0]
    try:
        config = parse_config(verb, argv[1:])
        module, _, fn_name, _ = COMMANDS[verb]
        getattr(importlib.import_module(module), fn_name)(config)
    except RwftError as e:
        print(f"rwft {verb}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
