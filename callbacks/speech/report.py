"""The evaluation report of `eval.py`: Markdown + PNG plots (CER by length bucket, similarity per speaker, MOS
histogram) from the metrics dict and the per-sample rows that omni/evaluate.py writes as JSON / JSONL."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from callbacks.metrics import LENGTH_BUCKETS, OVER_BUCKET

BUCKETS = [name for name, _, _ in LENGTH_BUCKETS] + [OVER_BUCKET]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def plot_cer_by_bucket(tasks: dict[str, dict], path: Path) -> Path | None:
    """Grouped bars: per bucket, the text CER of each task (and ASR-of-speech CER vs reference for spoken tasks)."""
    series: dict[str, dict[str, float]] = {}
    for task, res in tasks.items():
        series[f"{task} text"] = {b: r["cer"] for b, r in res.get("buckets", {}).items()}
        speech = res.get("speech", {})
        heard = {b: speech[f"asr_cer_ref_{b}"] for b in BUCKETS if f"asr_cer_ref_{b}" in speech}
        if heard:
            series[f"{task} speech (ASR)"] = heard
    buckets = [b for b in BUCKETS if any(b in s for s in series.values())]
    if not buckets:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [j + i * width for j, b in enumerate(buckets) if b in values]
        ax.bar(xs, [values[b] for b in buckets if b in values], width, label=name)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(buckets))],
                  [f"{b}\n({_bucket_range(b)} words)" for b in buckets])
    ax.set_ylabel("CER")
    ax.set_title("CER by reference length")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _bucket_range(bucket: str) -> str:
    for name, low, high in LENGTH_BUCKETS:
        if name == bucket:
            return f"{max(low, 1)}-{high}"
    return f"> {LENGTH_BUCKETS[-1][2]}"


def plot_similarity(tasks: dict[str, dict], path: Path) -> Path | None:
    bars = {f"{task}: {k.split('/', 1)[1]}": v for task, res in tasks.items()
            for k, v in res.get("speech", {}).items() if k.startswith("sim/")}
    if not bars:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.4 * len(bars) + 1)))
    ax.barh(list(bars), list(bars.values()))
    ax.set_xlim(min(0.0, min(bars.values())), 1.0)
    ax.set_xlabel("cosine similarity to the reference voice")
    ax.set_title("Speaker similarity per speaker")
    return _save(fig, path)


def plot_mos(rows: list[dict], path: Path) -> Path | None:
    by_task: dict[str, list[float]] = {}
    for row in rows:
        if isinstance(row.get("mos"), (int, float)):
            by_task.setdefault(row["task"], []).append(float(row["mos"]))
    if not by_task:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(list(by_task.values()), bins=20, range=(1.0, 5.0), label=list(by_task), stacked=True)
    ax.set_xlabel("predicted MOS")
    ax.set_ylabel("samples")
    ax.set_title("Speech quality (MOS) histogram")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def write_report(report: dict, rows: list[dict], out_dir: Path) -> Path:
    """report.md (+ plots/*.png) under out_dir; returns the Markdown path."""
    out_dir = Path(out_dir)
    tasks = report["tasks"]
    plots = [p for p in (plot_cer_by_bucket(tasks, out_dir / "plots" / "cer_by_length.png"),
                         plot_similarity(tasks, out_dir / "plots" / "similarity_per_speaker.png"),
                         plot_mos(rows, out_dir / "plots" / "mos_histogram.png")) if p is not None]
    lines = [f"# Evaluation: {report.get('ckpt', '')}", "",
             f"Split `{report.get('split')}`; sampling {report.get('sampling')}; scorers {report.get('scorers')}.", "",
             "## Text (generated text vs reference)", "", "| task | rows | CER | WER | " +
             " | ".join(f"CER {b}" for b in BUCKETS) + " | seconds |", "|---" * (5 + len(BUCKETS)) + "|"]
    for task, res in tasks.items():
        buckets = res.get("buckets", {})
        lines.append(f"| {task} | {res['n']} | {_fmt(res['cer'])} | {_fmt(res['wer'])} | " +
                     " | ".join(f"{_fmt(buckets[b]['cer'])} ({buckets[b]['n']})" if b in buckets else "-"
                                for b in BUCKETS) + f" | {res.get('seconds', '')} |")
    spoken = {t: r["speech"] for t, r in tasks.items() if r.get("speech")}
    if spoken:
        keys = ["asr_cer_text", "asr_wer_text", "asr_cer_ref", "asr_wer_ref", "sim", "sim_seen", "sim_unseen", "mos",
                "mos_sig", "mos_bak", "mos_p808", "n_no_audio"]
        keys = [k for k in keys if any(k in s for s in spoken.values())]
        lines += ["", "## Generated speech", "",
                  "ASR of the speech vs the model's own text (`asr_*_text`) and vs the reference (`asr_*_ref`); "
                  "cosine speaker similarity to the reference voice (`sim*`); predicted MOS (`mos*`).", "",
                  "| task | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for task, s in spoken.items():
            lines.append(f"| {task} | " + " | ".join(_fmt(s.get(k, "-")) for k in keys) + " |")
        per_speaker = [(t, k.split("/", 1)[1], v) for t, s in spoken.items() for k, v in s.items()
                       if k.startswith("sim/")]
        if per_speaker:
            lines += ["", "| task | speaker | similarity |", "|---|---|---|"]
            lines += [f"| {t} | {spk} | {_fmt(v)} |" for t, spk, v in per_speaker]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
