"""Data path at scale: peak memory and time before the first training step, for 20k / 200k / 1M conversations.

Synthetic logs (4 samples per context, 4 agent turns each, short texts; written once under --workdir).
For each size, each in a fresh subprocess and with a fresh ``RWFT_CACHE`` (the tiny preset linked in):

1. ``rwft train --data F --model tiny --objective swift --max-steps 1 --output D --report-to none``: the
   first run (reads, tokenizes, one step); "data ready" is when its summary line appears.
2. the same again into a new output directory: a rerun, every cache hit.
3. ``rwft validate F`` (after the train runs: its tokenization is the train run's cache).

Peak RSS: of the largest single process (``/usr/bin/time``-style ``ru_maxrss`` of the children) and of the
whole process tree (tokenizer workers included), sampled every 0.1 s with psutil. Tokenization throughput
comes from the cache's ``done.json`` (wall time of the ``map`` alone).

    python bench/data_scale.py --sizes 20000 200000 --out results.json
    python bench/data_scale.py --baseline-tree /tmp/old --baseline-size 2000   # today's path, for comparison
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the a of to and in is for on that with as by this be are from at it an or was which answer "
         "question step each option because first then so we check value number result total shop price "
         "water plant energy light heat animal food rock soil rain sun moon earth cell body blood bone "
         "metal wood glass paper cost sum half twice more less three four five seven ten hundred").split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def generate(n: int, path: Path, seed: int = 0) -> Path:
    """n conversations: n / 4 contexts of 4 samples, each a task and 4 agent turns with user feedback."""
    if path.exists() and path.with_suffix(".done").exists():
        return path
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        task = ""
        for i in range(n):
            ctx = i // 4
            if i % 4 == 0:
                task = f"Task {ctx}: " + _text(rng, 28)
            msgs = [{"role": "system", "content": "You are a careful assistant."},
                    {"role": "user", "content": task}]
            for t in range(4):
                msgs.append({"role": "assistant", "content": _text(rng, rng.randint(14, 30))})
                if t < 3:
                    msgs.append({"role": "user", "content": _text(rng, rng.randint(5, 12))})
            rec = {"id": f"{ctx}/{i % 4}", "context_id": str(ctx), "messages": msgs,
                   "reward": round(rng.random(), 3), "metadata": {"env": "synthetic", "seed": i}}
            f.write(json.dumps(rec) + "\n")
    tmp.replace(path)
    path.with_suffix(".done").write_text(str(n))
    return path


def measure(cmd: list[str], env: dict[str, str], marker: str | None = None) -> dict:
    """Run ``cmd`` (in a fresh helper process, so ru_maxrss covers this command only)."""
    helper = [sys.executable, __file__, "--measure", json.dumps({"cmd": cmd, "marker": marker})]
    out = subprocess.run(helper, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"helper failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure_child(spec: dict) -> None:
    import threading

    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(spec["cmd"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tree_peak = [0]
    done = threading.Event()

    def sample() -> None:
        p = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [p, *p.children(recursive=True)]
                tree_peak[0] = max(tree_peak[0], sum(q.memory_info().rss for q in procs))
            except psutil.Error:
                pass
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    ready, tail = None, []
    for line in proc.stdout:  # type: ignore[union-attr]
        if spec["marker"] and ready is None and spec["marker"] in line:
            ready = time.perf_counter() - t0
        tail = (tail + [line])[-30:]
    rc = proc.wait()
    done.set()
    wall = time.perf_counter() - t0
    if rc != 0:
        print("".join(tail), file=sys.stderr)
        raise SystemExit(rc)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"wall_s": wall, "ready_s": ready, "peak_rss": peak, "tree_peak_rss": tree_peak[0],
                      "tail": "".join(tail[-3:])}))


def run_size(n: int, data: Path, work: Path, tiny: Path) -> dict:
    cache = work / f"cache-{n}"
    if cache.exists():
        import shutil

        shutil.rmtree(cache)
    cache.mkdir(parents=True)
    (cache / tiny.name).symlink_to(tiny)
    env = {**os.environ, "RWFT_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    rwft = str(Path(sys.executable).with_name("rwft"))

    def train(tag: str) -> dict:
        out = work / f"run-{n}-{tag}"
        cmd = [rwft, "train", "--data", str(data), "--model", "tiny", "--objective", "swift", "--max-steps", "1",
               "--output", str(out), "--report-to", "none"]
        return measure(cmd, env, marker="conversations,")

    row: dict = {"conversations": n, "file_mb": data.stat().st_size / 2**20}
    row["train_first"] = train("first")
    done = json.loads(next((cache / "data").glob("encoded-*/done.json")).read_text())
    row["tokenize_s"], row["num_proc"] = done["seconds"], done["num_proc"]
    row["tokenize_cpu_s"] = done.get("cpu_seconds")
    row["load_avg_1m"] = os.getloadavg()[0]  # the machine is shared: a load above the cores means contention
    row["train_rerun"] = train("rerun")
    row["validate"] = measure([rwft, "validate", str(data)], env)
    tail = row["validate"]["tail"]
    row["tokens"] = next((int(x.split()[1]) for x in tail.splitlines() if x.strip().startswith("tokens")), None)
    if row["tokens"] is None:
        out = subprocess.run([rwft, "validate", str(data)], env=env, capture_output=True, text=True).stdout
        row["tokens"] = int(next(x.split()[1] for x in out.splitlines() if x.strip().startswith("tokens")))
    row["conversations_per_s"] = n / row["tokenize_s"]
    row["tokens_per_s"] = row["tokens"] / row["tokenize_s"]
    if row["tokenize_cpu_s"]:  # independent of other load: conversations per CPU-second of the map
        row["conversations_per_cpu_s"] = n / row["tokenize_cpu_s"]
    return row


def baseline(tree: Path, data: Path) -> dict:
    """Today's list-based path (a checkout of the old tree): load_conversations + build_sequences, one process."""
    code = f"""
import json, sys, time
sys.path.insert(0, {str(tree / 'src')!r})
from rwft.data.dataset import build_sequences, turn_weights
from rwft.data.io import load_conversations
from rwft.presets import load_tokenizer
tok = load_tokenizer("tiny")
t0 = time.perf_counter(); convs = load_conversations({str(data)!r}); t1 = time.perf_counter()
rows, stats = build_sequences(tok, convs, turn_weights(convs, "swift"), 1024, "assistant")
t2 = time.perf_counter()
ones = [[1.0] * len(c.agent_turns()) for c in convs]
t3 = time.perf_counter(); _, s1 = build_sequences(tok, convs, ones, 1024, "assistant"); t4 = time.perf_counter()
print(json.dumps({{"conversations": len(convs), "load_s": t1 - t0, "swift_encode_s": t2 - t1,
                  "all_encode_s": t4 - t3, "conversations_per_s": len(convs) / (t4 - t3),
                  "tokens_per_s": s1.tokens / (t4 - t3)}}))
"""
    res = measure([sys.executable, "-c", code], {**os.environ, "PYTHONPATH": str(tree / "src")})
    return {**json.loads(res.pop("tail").strip().splitlines()[-1]), **res}


def _mb(x: float) -> str:
    return f"{x / 2**20:.0f}"


def table(rows: list[dict]) -> str:
    head = ("| conversations | JSONL MB | train peak RSS MB (largest proc / tree) | validate peak RSS MB | "
            "first run: data ready / wall s | rerun: data ready / wall s | tokenize s (procs) | conv/s | tokens/s | "
            "conv per CPU-s | load avg |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        f, re_, v = r["train_first"], r["train_rerun"], r["validate"]
        lines.append(
            f"| {r['conversations']} | {r['file_mb']:.0f} | {_mb(f['peak_rss'])} / {_mb(f['tree_peak_rss'])} | "
            f"{_mb(v['peak_rss'])} / {_mb(v['tree_peak_rss'])} | {f['ready_s']:.1f} / {f['wall_s']:.1f} | "
            f"{re_['ready_s']:.1f} / {re_['wall_s']:.1f} | {r['tokenize_s']:.1f} ({r['num_proc']}) | "
            f"{r['conversations_per_s']:.0f} | {r['tokens_per_s']:.0f} | "
            f"{r.get('conversations_per_cpu_s') or float('nan'):.0f} | {r.get('load_avg_1m', float('nan')):.1f} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--measure":
        _measure_child(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 200000, 1000000])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "rwft-data-scale"))
    ap.add_argument("--baseline-tree", default=None, help="an old checkout: time its list-based path instead")
    ap.add_argument("--baseline-size", type=int, default=20000)
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.baseline_tree:
        data = generate(args.baseline_size, work / f"logs-{args.baseline_size}.jsonl")
        res = baseline(Path(args.baseline_tree), data)
        print(json.dumps(res, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
        return
    from rwft.presets import resolve_model

    tiny = Path(resolve_model("tiny"))
    rows = []
    for n in args.sizes:
        t = time.perf_counter()
        data = generate(n, work / f"logs-{n}.jsonl")
        print(f"# {n}: data in {time.perf_counter() - t:.0f} s ({data.stat().st_size / 2**20:.0f} MB)", flush=True)
        rows.append(run_size(n, data, work, tiny))
        print(json.dumps(rows[-1]), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
