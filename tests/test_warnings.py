"""rwft's own code triggers no FutureWarning or DeprecationWarning.

A short workload of every stage on the tiny preset (train two steps with LoRA, merged; one StepDPO step; collect
with the trained HF policy and its KV cache; evaluate with perplexity; label) runs in a fresh interpreter, so
warnings raised while rwft's modules import count too, with every warning recorded (``simplefilter("always")``:
pyproject's filters do not apply). A warning fails the test when its frame is in src/rwft, or when it speaks of
``past_key_values`` wherever its frame is (a library that warns about its caller's argument names a frame by
stacklevel, which may stop in torch's ``Module.__call__``). Deprecations inside third-party code that rwft does
not cause stay filtered by name, each with its reason (pyproject.toml's filterwarnings,
``rwft.train.skeleton.third_party_deprecations``).

Run as a script (``python tests/test_warnings.py OUT``) it performs the workload and writes the warnings to
``OUT/warnings.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

CATEGORIES = (FutureWarning, DeprecationWarning)
SAMPLE = Path(__file__).resolve().parents[1] / "src" / "rwft" / "assets" / "sample_conversations.jsonl"


def workload(out: Path) -> None:
    """Each verb once on the tiny preset, through the CLI (its option parsing included)."""
    from rwft.cli import main

    model = out / "model"
    verbs = [
        ["train", "--data", str(SAMPLE), "--output_dir", str(model), "--objective", "refit", "--max_steps", "2",
         "--per_device_train_batch_size", "4", "--lora", "--merge_lora", "--report_to", "none", "--disable_tqdm"],
        ["dpo", "--data", str(SAMPLE), "--output_dir", str(out / "dpo"), "--level", "step", "--max_steps", "1",
         "--per_device_train_batch_size", "2", "--report_to", "none", "--disable_tqdm"],
        ["collect", "--env", "mcqa", "--env_args", "source=arithmetic", "--policy", str(model), "--contexts", "2",
         "--samples_per_context", "2", "--max_new_tokens", "8", "--out", str(out / "logs.jsonl"), "--no_progress"],
        ["eval", "--policy", str(model), "--env", "clarify", "--env_args", "source=requests", "--episodes", "2",
         "--max_new_tokens", "8", "--ppl_model", "tiny", "--output", str(out / "eval"), "--quiet"],
        ["label", "--data", str(out / "logs.jsonl"), "--out", str(out / "labelled.jsonl"), "--no_progress"],
    ]
    for argv in verbs:
        if main(argv) != 0:
            raise SystemExit(f"rwft {argv[0]} failed")


def offending(records: list[dict[str, str | int]], root: Path) -> list[str]:
    """The recorded warnings that rwft's code caused: a FutureWarning or DeprecationWarning whose frame is in
    ``root`` (src/rwft) or whose message is about ``past_key_values``."""
    bad = []
    for w in records:
        if w["category"] not in {c.__name__ for c in CATEGORIES}:
            continue
        inside = Path(str(w["filename"])).resolve().is_relative_to(root)
        if inside or "past_key_values" in str(w["message"]):
            bad.append(f"{w['filename']}:{w['lineno']}: {w['category']}: {w['message']}")
    return bad


def test_offending_picks_rwft_frames_and_past_key_values_messages(tmp_path):
    root = tmp_path / "src" / "rwft"
    recs = [
        {"category": "FutureWarning", "filename": str(root / "rollout" / "x.py"), "lineno": 1, "message": "old"},
        {"category": "DeprecationWarning", "filename": "/venv/torch/nn/modules/module.py", "lineno": 2,
         "message": "`past_key_values` is deprecated and will be removed in version 5.40.0"},
        {"category": "FutureWarning", "filename": "/venv/peft/mapping.py", "lineno": 3, "message": "other"},
        {"category": "UserWarning", "filename": str(root / "y.py"), "lineno": 4, "message": "not a deprecation"},
    ]
    assert [b.split(": ")[-1] for b in offending(recs, root)] == [
        "old", "`past_key_values` is deprecated and will be removed in version 5.40.0"]


def test_no_deprecation_warning_from_rwft_code(tmp_path):
    import rwft

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads((tmp_path / "warnings.json").read_text())
    assert (tmp_path / "eval" / "metrics.json").exists() and (tmp_path / "labelled.jsonl").exists()
    bad = offending(records, Path(rwft.__file__).resolve().parent)
    assert not bad, "rwft's code triggers deprecations:\n" + "\n".join(bad)


if __name__ == "__main__":
    target = Path(sys.argv[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        workload(target)
    rows = [{"category": w.category.__name__, "filename": w.filename, "lineno": w.lineno, "message": str(w.message)}
            for w in caught]
    (target / "warnings.json").write_text(json.dumps(rows, indent=1))
