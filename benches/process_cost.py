#!/usr/bin/env python3
"""Cost of `pymemtrace process`, written into docs/benchmarks.md (its own section).

Usage: python3 benches/process_cost.py [--rounds N] [--seconds S] [--out docs/benchmarks.md]

For a single process and for a 50-process tree (fixtures/sleepers.py), at a 0.1 s interval, with and
without --smaps: the tool's own CPU (user+system over wall time, measured from outside with
getrusage on the finished tool) and the time per process reading (the tool's own figure). Medians
of N rounds, the variants interleaved in each round.
"""
from __future__ import print_function

import argparse
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

from sections import replace_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "target", "release", "pymemtrace")


def measure(processes, seconds, extra):
    """One run: the tool follows a tree of `processes` for `seconds`; returns its CPU share and
    microseconds per reading."""
    tree = subprocess.Popen([sys.executable, os.path.join(ROOT, "fixtures", "sleepers.py"),
                             str(processes), str(seconds + 5)], stdout=subprocess.PIPE)
    assert tree.stdout.readline().strip() == b"ready"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    out = subprocess.run([TOOL, "process", "--pid", str(tree.pid), "--interval", "0.1", "--duration",
                          str(seconds), "-q"] + extra, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         check=True).stdout.decode()
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    tree.kill()
    tree.wait()
    subprocess.run(["pkill", "-P", str(tree.pid)], check=False)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    match = re.search(r"tool: ([\d,]+) process readings, (\d+) us each", out)
    return {"cpu_share": cpu / wall, "us_per_reading": float(match.group(2)),
            "readings": int(match.group(1).replace(",", ""))}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    variants = [("1 process", 1, []), ("1 process, `--smaps`", 1, ["--smaps"]),
                ("50-process tree, `--children`", 50, ["--children"]),
                ("50-process tree, `--children --smaps`", 50, ["--children", "--smaps"])]
    results = {label: [] for label, _, _ in variants}
    for round_ in range(args.rounds):
        for label, processes, extra in variants:
            results[label].append(measure(processes, args.seconds, extra))
            print(round_, label, results[label][-1], file=sys.stderr)
    command = "python3 benches/process_cost.py --rounds %d --seconds %g" % (args.rounds, args.seconds)
    lines = [
        "## Cost of `pymemtrace process`",
        "",
        "Produced by `%s` on %s (%s, %d cores), %s. Interval 0.1 s, %g s per run, medians of %d rounds"
        " (variants interleaved). Tool CPU: the finished tool's user+system time (getrusage from outside)"
        " over its wall time, one core = 100%%. Per reading: the tool's own figure, wall time spent reading"
        " /proc and handing the row on, per process per tick."
        % (command, time.strftime("%Y-%m-%d"), platform.machine(), os.cpu_count(), platform.platform(),
           args.seconds, args.rounds),
        "",
        "| what is followed | tool CPU (% of a core) | per process reading (us) | readings per run |",
        "|---|---|---|---|",
    ]
    for label, _, _ in variants:
        runs = results[label]
        lines.append("| %s | %.3f%% | %.0f | %d |" % (
            label, statistics.median(r["cpu_share"] for r in runs) * 100,
            statistics.median(r["us_per_reading"] for r in runs),
            statistics.median(r["readings"] for r in runs)))
    tree = statistics.median(r["cpu_share"] for r in results["50-process tree, `--children`"])
    smaps = statistics.median(r["cpu_share"] for r in results["50-process tree, `--children --smaps`"])
    lines += ["", "Target: under 1%% of a core for the 50-process tree at 0.1 s: %s (%.3f%%). `--smaps` is"
              " opt-in and costs more (%.3f%% here): the kernel walks every page table of the process to"
              " produce smaps_rollup, which no reader can avoid; use a longer `--interval` with it on large"
              " trees." % ("met" if tree < 0.01 else "NOT met", tree * 100, smaps * 100)]
    replace_section(args.out, "process-cost", "\n".join(lines))
    print("wrote", args.out, file=sys.stderr)


if __name__ == "__main__":
    main()
