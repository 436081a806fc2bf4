#!/usr/bin/env python3
"""Render every bench/data/*.csv into bench/plots/<name>.png.

Generic over CSVs that follow the header convention of bench/README.md:

    # title: sharder: connected idle shards (medians)
    # x: shards
    # y: rss_mib,rss_per_shard_kib
    # machine: ...            (any other "# key: value" lines are kept as notes)
    shards,rss_mib,rss_per_shard_kib,...
    100,12.5,40.1,...

`x` names the horizontal-axis column (default: the first column); `y` is a
comma-separated list of columns to plot (default: every other numeric
column). Each y column gets its own panel, so quantities with different
units never share an axis. An optional `# series: <column>` splits rows into
one line per value of that column (e.g. `peer` = ours / twilight), and
`# logx: true` / `# logy: true` switch to log scales.

Usage: python3 bench/plot.py [data_dir] [plots_dir]
Needs matplotlib (`pip install matplotlib`).
"""

import csv
import math
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent


def read(path):
    meta, lines = {}, []
    with open(path, newline="") as f:
        for line in f:
            if line.startswith("#"):
                key, _, value = line[1:].partition(":")
                meta[key.strip().lower()] = value.strip()
            elif line.strip():
                lines.append(line)
    rows = list(csv.DictReader(lines))
    header = list(rows[0].keys()) if rows else []
    return meta, header, rows


def number(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return math.nan


def plot(path, out_dir):
    meta, header, rows = read(path)
    if not rows:
        print(f"{path.name}: no rows, skipped")
        return None
    x = meta.get("x") or header[0]
    series = meta.get("series")
    if "y" in meta:
        ys = [c.strip() for c in meta["y"].split(",") if c.strip()]
    else:
        ys = [
            c
            for c in header
            if c not in (x, series) and not math.isnan(number(rows[0][c]))
        ]
    missing = [c for c in [x, *ys] if c not in header]
    if missing:
        raise SystemExit(f"{path.name}: columns {missing} not in header {header}")
    groups = {}
    for r in rows:
        groups.setdefault(r[series] if series else "", []).append(r)
    fig, axes = plt.subplots(
        len(ys), 1, figsize=(7, 2.8 * len(ys)), sharex=True, squeeze=False
    )
    for ax, y in zip(axes[:, 0], ys):
        for name, rs in groups.items():
            pts = sorted((number(r[x]), number(r[y])) for r in rs)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name or None)
        ax.set_ylabel(y)
        ax.grid(True, alpha=0.3)
        if meta.get("logy") == "true":
            ax.set_yscale("log")
        if series:
            ax.legend()
    axes[-1, 0].set_xlabel(x)
    if meta.get("logx") == "true":
        axes[-1, 0].set_xscale("log")
    title = meta.get("title", path.stem)
    notes = " · ".join(meta[k] for k in ("machine", "date") if k in meta)
    fig.suptitle(title + (f"\n{notes}" if notes else ""), fontsize=10)
    fig.tight_layout()
    out = out_dir / f"{path.stem}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main():
    data = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "data"
    plots = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    files = sorted(data.glob("*.csv"))
    if not files:
        raise SystemExit(f"no CSV files in {data}")
    for path in files:
        out = plot(path, plots)
        if out:
            print(f"{path.name} -> {out.relative_to(ROOT.parent) if out.is_relative_to(ROOT.parent) else out}")


if __name__ == "__main__":
    main()
