#!/usr/bin/env python3
"""Draws the PNG plots of a `kvpool bench` report (DIR/report.json) into DIR. Every
number comes from the report, which the C++ bench measured; this only draws. Needs
matplotlib (Debian: python3-matplotlib). Usage: scripts/plot-bench.py DIR"""
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

MODES = ["none", "contiguous", "paged"]
COLORS = {"none": "tab:red", "contiguous": "tab:blue", "paged": "tab:green"}


def plain_log(ax, axis="y"):
    """A log axis labelled in plain numbers (0.5, 2, 10, 200), not powers of ten."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))

    def minor(v, _):  # 2x and 5x a power of ten, so that a short range still has labels
        mantissa = v / 10 ** math.floor(math.log10(v)) if v > 0 else 0
        return f"{v:g}" if round(mantissa) in (2, 5) else ""
    target.set_minor_formatter(ticker.FuncFormatter(minor))


def save(fig, out, name):
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=110)
    plt.close(fig)


def original_steps(report, out):
    """Per-step latency and KV memory per mode, on two axes (the original's trend plot)."""
    steps = report["original"]["temperature_0.7"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharex=True)
    for ax, mode in zip(axes, MODES):
        s = steps[mode]["steps"]
        x = list(range(1, len(s["step_latency_s"]) + 1))
        ax.plot(x, [1e3 * v for v in s["step_latency_s"]], color=COLORS[mode], label="latency")
        ax.set_title(mode)
        ax.set_xlabel("token")
        ax.set_ylabel("step latency (ms)")
        ax.set_yscale("log")
        plain_log(ax)
        mem = ax.twinx()
        mem.plot(x, [v / 2**20 for v in s["kv_reserved_bytes"]], "k--", label="KV reserved")
        mem.plot(x, [v / 2**20 for v in s["kv_used_bytes"]], "k:", label="KV holding tokens")
        mem.set_ylabel("KV (MiB)")
        mem.set_ylim(bottom=0)  # none keeps no KV: its axis must not dip below zero
        if mode == "paged":
            mem.legend(loc="lower right", fontsize=8)
    save(fig, out, "original_steps.png")


def original_bars(report, out):
    modes = report["modes"]
    metrics = [("avg_token_latency_s", "avg latency / token (ms)", 1e3),
               ("ttft_s", "TTFT (ms)", 1e3),
               ("total_s", "total (s)", 1),
               ("peak_kv_reserved_bytes", "peak KV reserved (MiB)", 2**-20),
               ("peak_rss_bytes", "peak worker RSS (MiB)", 2**-20)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(16, 3.6))
    for ax, (key, label, scale) in zip(axes, metrics):
        values = [modes[m][key] * scale for m in MODES]
        ax.bar(MODES, values, color=[COLORS[m] for m in MODES])
        ax.set_title(label, fontsize=9)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    save(fig, out, "original_bars.png")
    # Normalised: each metric over the no-cache value.
    fig, ax = plt.subplots(figsize=(7, 4))
    for m in MODES:
        ax.plot([label for _, label, _ in metrics[:3]],
                [modes[m][key] / modes["none"][key] for key, _, _ in metrics[:3]],
                marker="o", color=COLORS[m], label=m)
    ax.set_yscale("log")
    plain_log(ax)
    ax.set_ylabel("relative to none")
    ax.legend()
    save(fig, out, "original_normalised.png")


def context_sweep(report, out):
    points = report["scenarios"]["context_sweep"]["points"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for m in MODES:
        xs = [p["context"] for p in points]
        ax.plot(xs, [1e3 * p[m] for p in points], marker="o", color=COLORS[m], label=m)
        if all(f"{m}_min" in p for p in points):  # the repeats' range
            ax.fill_between(xs, [1e3 * p[f"{m}_min"] for p in points],
                            [1e3 * p[f"{m}_max"] for p in points], color=COLORS[m], alpha=0.2)
    floor = report.get("bandwidth_floor_s_per_token")
    if floor:
        ax.axhline(1e3 * floor, color="gray", linestyle=":", label="bandwidth floor")
    ax.set_yscale("log")
    plain_log(ax)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("decode step (ms)")
    ax.legend()
    save(fig, out, "context_sweep.png")


def throughput(report, out):
    points = report["scenarios"]["throughput"]["points"]
    fig, (ax, lat) = plt.subplots(1, 2, figsize=(12, 4))
    for m in MODES:
        xs = [p["concurrency"] for p in points if m in p]
        if not xs:
            continue
        ax.plot(xs, [p[m].get("sustained_tokens_per_s") or p[m]["tokens_per_s"] for p in points
                     if m in p], marker="o", color=COLORS[m], label=f"{m} sustained")
        ax.plot(xs, [p[m]["tokens_per_s"] for p in points if m in p], marker=".", linestyle=":",
                color=COLORS[m], label=f"{m} overall")
        lat.plot(xs, [1e3 * p[m]["itl_p50_s"] for p in points if m in p], marker="o",
                 color=COLORS[m], label=f"{m} p50")
        lat.plot(xs, [1e3 * p[m]["itl_p99_s"] for p in points if m in p], marker="x",
                 linestyle="--", color=COLORS[m], label=f"{m} p99")
    ax.set_xlabel("concurrency")
    ax.set_ylabel("tokens/s")
    ax.legend()
    lat.set_xlabel("concurrency")
    lat.set_ylabel("inter-token latency (ms)")
    lat.legend(fontsize=7)
    save(fig, out, "throughput.png")


def cache_size(report, out):
    """Measured hit rate at each pool size on the manager's predicted curve (recorded at
    the largest pool), and the hit rate by block size."""
    cs = report["scenarios"]["cache_size"]
    fig, (ax, bs) = plt.subplots(1, 2, figsize=(12, 4))
    pools = sorted(cs["pool_sizes"], key=lambda p: p["pool_blocks"])
    curve = cs.get("predicted_curve")
    if curve:
        ax.plot(curve["cache_blocks"], [100 * h for h in curve["hit_rate"]], color="tab:blue",
                label="predicted (LRU stack distances)")
        if curve.get("knee_blocks", -1) > 0:
            ax.axvline(curve["knee_blocks"], color="gray", linestyle=":", label="knee")
    ax.plot([p["pool_blocks"] for p in pools], [100 * p["hit_rate"] for p in pools], "o",
            color="tab:orange", label="measured (rerun at that size)")
    ax.set_xlabel("pool (blocks of %d tokens)" % pools[0]["block_size"])
    ax.set_ylabel("prefix hit rate (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    blocks = cs["block_sizes"]
    bs.bar([str(p["block_size"]) for p in blocks], [100 * p["hit_rate"] for p in blocks])
    bs.set_xlabel("block size (tokens)")
    bs.set_ylabel("prefix hit rate (%)")
    save(fig, out, "cache_size.png")


def main():
    out = sys.argv[1]
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    if "modes" in report:
        original_steps(report, out)
        original_bars(report, out)
    scenarios = report.get("scenarios") or {}
    if "context_sweep" in scenarios:
        context_sweep(report, out)
    if "throughput" in scenarios:
        throughput(report, out)
    if "cache_size" in scenarios:
        cache_size(report, out)


if __name__ == "__main__":
    main()
