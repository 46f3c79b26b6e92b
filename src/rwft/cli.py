"""The ``rwft`` command: one verb per stage, each a config dataclass and a run function.

Every verb's options come from its config dataclass (see ``cli_args``), so ``rwft VERB --help`` is
that stage's documentation. A user-facing error (``RwftError``) prints one line and exits with 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rwft.errors import RwftError

# verb -> (module, config class, run function, one-line help). Modules are imported lazily.
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "validate": ("rwft.data.validate", "ValidateConfig", "run_validate", "check a dataset and print a summary"),
    "train": ("rwft.train.weighted", "TrainConfig", "train", "train a policy on logged conversations"),
    "export": ("rwft.data.export", "ExportConfig", "run_export", "write Refit as a plain SFT dataset"),
    "dpo": ("rwft.train.dpo", "DpoConfig", "run_dpo", "train the DPO / StepDPO baselines (TRL DPOTrainer)"),
    "eval": ("rwft.eval.evaluate", "EvalConfig", "run_eval", "play a policy in an environment and measure it"),
    "compare": ("rwft.recipes.compare", "CompareConfig", "run_compare", "objectives x seeds: table, plots, report"),
    "collect": ("rwft.rollout.collect", "CollectConfig", "run_collect", "run a policy in an environment, log episodes"),
    "label": ("rwft.rollout.label", "LabelConfig", "run_label", "add or replace rewards on logs with a judge"),
    "bootstrap": ("rwft.recipes.bootstrap", "BootstrapConfig", "run_bootstrap", "make pi_0 by SFT on scripted play"),
}


def build_parser(verbs: list[str] | None = None) -> argparse.ArgumentParser:
    from rwft.cli_args import add_dataclass_arguments

    parser = argparse.ArgumentParser(prog="rwft", description="Offline RL for LLM conversation policies.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (module, cls_name, _, help_text) in COMMANDS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        if verbs is None or verb in verbs:
            cls = getattr(importlib.import_module(module), cls_name)
            p.add_argument("--config", help="a YAML or JSON file with any of the options below")
            add_dataclass_arguments(p, cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbs = [a for a in argv if a in COMMANDS][:1]
    parser = build_parser(verbs or [])
    args = parser.parse_args(argv)
    module, cls_name, fn_name, _ = COMMANDS[args.verb]
    mod = importlib.import_module(module)
    try:
        from rwft.cli_args import build_config

        config = build_config(getattr(mod, cls_name), args)
        getattr(mod, fn_name)(config)
    except RwftError as e:
        print(f"rwft {args.verb}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
