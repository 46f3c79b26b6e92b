"""Turn per-(method, seed) results into a comparison: a table (Markdown, CSV), plots (PNG), a report (HTML).

A result is a dict::

    {"method": "swift", "seed": 0,
     "metrics": {"reward": 0.61, "accuracy": 0.55, ...},      # one number per metric (an eval's means)
     "train_time_s": 12.3, "peak_memory_mb": 850.0,           # cost of training (0 for Base)
     "train_log": [{"step": 1, "loss": 0.7}, ...],            # optional: per-step training log
     "metrics_ci": {"reward": {"mean": 0.61, "half": 0.1, "n": 40, ...}},  # optional: over evaluation episodes
     "samples": [[{"role": ..., "content": ...}, ...], ...]}  # optional: sample conversations

Each table cell is the mean over seeds with a 95% Student-t interval (``metrics.mean_ci``): the spread
is between seeds (training and evaluation seeds together), the quantity a user can expect to reproduce.
A method run with one seed has no spread between seeds: its interval is then the one over its evaluation
episodes (``metrics_ci``, when the result carries it), which leaves out the training seed's variance.
"""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rwft.eval.metrics import mean_ci

COST_KEYS = ("train_time_s", "peak_memory_mb")
COST_LABELS = {"train_time_s": "train time (s)", "peak_memory_mb": "peak memory (MB)"}


def methods_in_order(results: Sequence[dict[str, Any]]) -> list[str]:
    """Methods in the order they first appear."""
    return list(dict.fromkeys(r["method"] for r in results))


def metric_names(results: Sequence[dict[str, Any]]) -> list[str]:
    """Every metric that some result reports, in first-seen order."""
    return list(dict.fromkeys(k for r in results for k in r.get("metrics", {})))


def summarize(results: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per method: for each metric and cost, ``mean_ci`` over that method's seeds (NaN values and
    missing metrics are left out of the interval, and ``n`` says how many seeds it used); with one seed,
    the result's interval over evaluation episodes when it has one (``n`` then counts episodes)."""
    metrics = list(metrics or metric_names(results))
    rows = []
    for method in methods_in_order(results):
        mine = [r for r in results if r["method"] == method]
        row: dict[str, Any] = {"method": method, "seeds": len(mine)}
        for name in metrics:
            have = [r for r in mine if _finite(r.get("metrics", {}).get(name))]
            row[name] = mean_ci([r["metrics"][name] for r in have])
            episodes = have[0].get("metrics_ci", {}).get(name) if len(have) == 1 else None
            if isinstance(episodes, dict) and episodes.get("n", 0) > 1 and _finite(episodes.get("half")):
                row[name] = dict(row[name], half=episodes["half"], n=episodes["n"],
                                 lo=row[name]["mean"] - episodes["half"], hi=row[name]["mean"] + episodes["half"])
        for key in COST_KEYS:
            row[key] = mean_ci([r[key] for r in mine if _finite(r.get(key))])
        rows.append(row)
    return rows


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(ci: dict[str, float], digits: int = 3) -> str:
    """``mean ± half-width``; ``-`` when there is no value."""
    if not ci["n"]:
        return "-"
    return f"{ci['mean']:.{digits}f} ± {ci['half']:.{digits}f}"


def markdown_table(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> str:
    """Markdown table: one row per method, mean ± 95% half-width per metric, then training cost."""
    head = ["method", "seeds", *metrics, *(COST_LABELS[k] for k in COST_KEYS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["method"], str(row["seeds"])]
        cells += [fmt(row[m]) for m in metrics]
        cells += [fmt(row[k], 1) for k in COST_KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdicts(rows: Sequence[dict[str, Any]], metric: str = "reward", ours: Sequence[str] = ("refit", "swift"),
             higher_is_better: bool = True) -> list[str]:
    """One line per (method of ours, other method): whether ours is better on ``metric`` with 95% intervals
    that do not overlap ("beats"), worse with non-overlapping intervals ("loses to"), or neither ("overlaps")."""
    by = {r["method"]: r[metric] for r in rows if metric in r and r[metric]["n"]}
    lines = []
    for mine in ours:
        if mine not in by:
            continue
        a = by[mine]
        for other, b in by.items():
            if other in ours:
                continue
            lo_a, hi_a = a["mean"] - a["half"], a["mean"] + a["half"]
            lo_b, hi_b = b["mean"] - b["half"], b["mean"] + b["half"]
            better, worse = (lo_a > hi_b, hi_a < lo_b) if higher_is_better else (hi_a < lo_b, lo_a > hi_b)
            word = "beats" if better else "loses to" if worse else "overlaps"
            lines.append(f"{mine} {word} {other} on {metric}: {fmt(a)} vs {fmt(b)}")
    return lines


def write_csv(rows: Sequence[dict[str, Any]], metrics: Sequence[str], path: Path) -> None:
    """CSV with mean, lower and upper bound and n per metric and cost."""
    cols = [*metrics, *COST_KEYS]
    header = ["method", "seeds"] + [f"{c}_{s}" for c in cols for s in ("mean", "lo", "hi", "n")]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            w.writerow([row["method"], row["seeds"]] + [row[c][s] for c in cols for s in ("mean", "lo", "hi", "n")])


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric(rows: Sequence[dict[str, Any]], metric: str, path: Path) -> None:
    """Bar chart of one metric per method with 95% interval error bars."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.5))
    names = [r["method"] for r in rows]
    means = [r[metric]["mean"] if r[metric]["n"] else 0.0 for r in rows]
    halves = [r[metric]["half"] if r[metric]["n"] else 0.0 for r in rows]
    ax.bar(names, means, yerr=halves, capsize=4, color="#4c72b0")
    ax.set_ylabel(f"{metric} (mean, 95% CI over seeds)")
    ax.set_title(f"{metric} per method")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_training(results: Sequence[dict[str, Any]], path: Path, keys: Sequence[str] = ("loss", "reward")) -> list[str]:
    """One panel per log key present (``loss``; ``reward`` where a log carries it), one line per method,
    averaged over seeds at each step. Returns the keys plotted."""
    logs: dict[str, list[list[dict]]] = {}
    for r in results:
        if r.get("train_log"):
            logs.setdefault(r["method"], []).append(r["train_log"])
    present = [k for k in keys if any(k in line for runs in logs.values() for log in runs for line in log)]
    if not present:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, len(present), figsize=(5 * len(present), 3.5), squeeze=False)
    for ax, key in zip(axes[0], present, strict=True):
        for method, runs in logs.items():
            by_step: dict[int, list[float]] = {}
            for log in runs:
                for line in log:
                    if _finite(line.get(key)) and "step" in line:
                        by_step.setdefault(int(line["step"]), []).append(float(line[key]))
            if by_step:
                steps = sorted(by_step)
                ax.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], label=method)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(key)
        ax.set_title(f"{key} over training (mean over seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return present


def _conversation_html(messages: Sequence[dict[str, Any]]) -> str:
    parts = []
    for m in messages:
        role = html.escape(str(m.get("role", "")))
        parts.append(f'<div class="msg {role}"><b>{role}</b>: {html.escape(str(m.get("content", "")))}</div>')
    return '<div class="conv">' + "".join(parts) + "</div>"


def html_report(rows, metrics, results, images: Sequence[str], title: str, samples_per_method: int = 3) -> str:
    """A self-contained page: the table, the plots (relative paths) and sample conversations per method."""
    head = ["method", "seeds", *metrics, *(COST_LABELS[k] for k in COST_KEYS)]
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
    for row in rows:
        cells = [row["method"], str(row["seeds"])] + [fmt(row[m]) for m in metrics]
        cells += [fmt(row[k], 1) for k in COST_KEYS]
        table += "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
    table += "</table>"
    body = [f"<h1>{html.escape(title)}</h1>", "<p>Mean ± 95% Student-t half-width over seeds.</p>", table]
    body += [f'<img src="{html.escape(i)}" alt="{html.escape(i)}">' for i in images]
    for method in methods_in_order(results):
        samples = [s for r in results if r["method"] == method for s in r.get("samples", [])][:samples_per_method]
        body.append(f"<h2>{html.escape(method)}: sample conversations</h2>")
        body += [_conversation_html(s.get("messages", s) if isinstance(s, dict) else s) for s in samples]
        if not samples:
            body.append("<p>(none recorded)</p>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}.conv{border:1px solid #ddd;margin:8px 0;padding:6px}"
        ".msg{margin:3px 0;white-space:pre-wrap}.assistant{background:#eef5ff}img{max-width:100%}"
    )
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(
    results: Sequence[dict[str, Any]], out_dir: str | Path, metrics: Sequence[str] | None = None,
    main_metric: str = "reward", title: str = "rwft comparison", notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write table.md, table.csv, <main_metric>.png, training.png (when logs exist) and report.html.
    ``notes`` are extra lines listed after the table and its verdicts in table.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = list(metrics or metric_names(results))
    rows = summarize(results, metrics)
    files = {"markdown": out / "table.md", "csv": out / "table.csv", "html": out / "report.html"}
    table = markdown_table(rows, metrics)
    if main_metric in metrics:
        table += "\n" + "".join(f"- {line}\n" for line in verdicts(rows, main_metric))
    if notes:
        table += "\n" + "".join(f"{line}\n" for line in notes)
    files["markdown"].write_text(table, encoding="utf-8")
    write_csv(rows, metrics, files["csv"])
    images = []
    if main_metric in metrics:
        files["plot"] = out / f"{main_metric}.png"
        plot_metric(rows, main_metric, files["plot"])
        images.append(files["plot"].name)
    if plot_training(results, out / "training.png"):
        files["training_plot"] = out / "training.png"
        images.append("training.png")
    files["html"].write_text(html_report(rows, metrics, results, images, title), encoding="utf-8")
    return files


def plot_steps(steps_log: Path, path: Path) -> None:
    """``rwft iterate``'s curves.png from its step log: reward per environment, entropy, response length, KL,
    loss and the time split against the step."""
    import json

    plt = _plt()
    rows = [json.loads(x) for x in steps_log.read_text().splitlines() if x.strip()]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    panels = [("reward", [k for k in rows[0] if k.startswith("reward")]), ("next-token entropy", ["entropy"]),
              ("response tokens", ["response_tokens"]), ("KL to reference", ["kl"]), ("loss", ["loss"]),
              ("seconds", ["generate_s", "train_s", "sync_s"])]
    for ax, (title, keys) in zip(axes.flat, panels, strict=True):
        for k in keys:
            ax.plot(steps, [r.get(k, float("nan")) for r in rows], label=k)
        ax.set_title(title)
        ax.set_xlabel("step")
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
