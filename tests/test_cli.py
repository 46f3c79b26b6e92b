"""Bad input: a clear error naming file, line and field; exit code 2; no traceback; no output written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import sample_records
from rwft.cli import COMMANDS, main

GOOD = json.dumps(sample_records(1)[0])
MSGS = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def line(**overrides) -> str:
    rec = {"messages": MSGS, "reward": 0.5, **overrides}
    return json.dumps({k: v for k, v in rec.items() if v is not ...})


CASES = {
    "malformed JSON": ('{"messages": [', ":2: malformed JSON"),
    "missing reward": (line(reward=...), ":2: field 'reward': expected a finite number, got missing"),
    "non-numeric reward": (line(reward="high"), ":2: field 'reward': expected a finite number, got \"high\""),
    "NaN reward": (json.dumps({"messages": MSGS, "reward": float("nan")}), ":2: field 'reward'"),
    "infinite reward": (json.dumps({"messages": MSGS, "reward": float("inf")}), ":2: field 'reward'"),
    "null reward": (line(reward=None), ":2: field 'reward': expected a finite number, got null"),
    "boolean reward": (line(reward=True), ":2: field 'reward'"),
    "missing messages": ('{"reward": 1.0}', ":2: field 'messages': missing"),
    "empty messages": (line(messages=[]), ":2: field 'messages': expected a non-empty list"),
    "no role": (line(messages=[{"content": "hi"}, MSGS[1]]), ":2: field 'messages[0].role'"),
    "null content": (line(messages=[MSGS[0], {"role": "assistant", "content": None}]),
                     ":2: field 'messages[1].content': expected a string, got null"),
    "unknown role": (line(messages=[{"role": "robot", "content": "x"}, MSGS[1]]),
                     ":2: field 'messages[0].role': unknown role 'robot'"),
    "no agent turn": (line(messages=[MSGS[0]]), ":2: field 'messages': no agent turn"),
    "JSON array": (json.dumps([json.loads(GOOD)]), ":2: found a JSON array"),
    "non-finite turn reward": ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", '
                               '"content": "a", "reward": NaN}], "reward": 1}', ":2: field 'messages[1].reward'"),
}


@pytest.mark.parametrize("verb", ["train", "validate"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_line_is_reported_with_file_line_field(tmp_path, capsys, case, verb):
    bad, expected = CASES[case]
    data = tmp_path / "logs.jsonl"
    data.write_text(GOOD + "\n" + bad + "\n")
    out = tmp_path / "run"
    args = [verb, "--data", str(data)] + (["--output", str(out)] if verb == "train" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{data}{expected}" in err, err
    assert "Traceback" not in err
    assert not out.exists()


def test_empty_file_and_undecodable_bytes(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["train", "--data", str(empty), "--output", str(tmp_path / "a")]) == 2
    assert f"{empty}: no conversations (the file is empty)" in capsys.readouterr().err
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(GOOD.encode() + b"\n" + b'{"messages": "\xff\xfe"}\n')
    assert main(["train", "--data", str(binary), "--output", str(tmp_path / "b")]) == 2
    assert f"{binary}:2: not valid UTF-8" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_missing_file_and_bad_option_values(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["train", "--data", "x.jsonl", "--output", str(tmp_path / "o"), "--batch-size", "0"]) == 2
    assert "--per-device-train-batch-size: expected a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_config_file_supplies_fields_and_rejects_unknown_ones(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("data: missing.jsonl\noutput: somewhere\nlearning-rate: 0.001\nbogus: 1\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert f"{cfg}: unknown option 'bogus'" in capsys.readouterr().err


def test_real_process_exits_2_without_traceback(tmp_path):
    data = tmp_path / "logs.jsonl"
    data.write_text(GOOD + "\n" + line(reward=None) + "\n")
    proc = subprocess.run([sys.executable, "-m", "rwft.cli", "train", "--data", str(data), "--output",
                           str(tmp_path / "run")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"rwft train: error: {data}:2: field 'reward': expected a finite number, got null"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_every_verb_has_help_with_every_field_documented(verb, capsys):
    import dataclasses
    import importlib

    from rwft.cli import field_docs

    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    module, cls_name, _, _ = COMMANDS[verb]
    cls = getattr(importlib.import_module(module), cls_name)
    docs = field_docs(cls)
    own = {n for k in cls.__mro__ if k.__module__.startswith("rwft") for n in getattr(k, "__annotations__", {})}
    for f in dataclasses.fields(cls):
        if f.init:
            assert f"--{f.name.replace('_', '-')}" in out or f"--{f.name}" in out
        if f.name in own:
            assert docs.get(f.name), f"{cls_name}.{f.name} has no docstring"


def test_validate_takes_the_data_path_without_data_option(sample_path, capsys):
    assert main(["validate", str(sample_path)]) == 0
    assert f"{sample_path}: OK" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_example_config_parses_and_validates(path):
    """An example holds the options of the verb its first line runs (``# rwft VERB --config ...``), or of the
    verb it is named after (VERB-NAME.yaml); each builds its config without error."""
    import re

    from rwft.cli import parse_config

    first = re.match(r"#\s*rwft (\w+) --config", path.read_text().splitlines()[0])
    verb = first.group(1) if first else path.stem.split("-")[0]
    assert verb in COMMANDS, f"{path.name}: start it with `# rwft VERB --config` or name it after its verb"
    config = parse_config(verb, ["--config", str(path)])
    assert type(config).__name__ == COMMANDS[verb][1]
    if verb == "compare":  # and the trainers' configs it will build for each method
        from rwft.recipes.compare import trainer_config

        for method in config.methods:
            if method != "base":
                trainer_config(config, method, config.seeds[0], "logs.jsonl", "pi0", "out")
