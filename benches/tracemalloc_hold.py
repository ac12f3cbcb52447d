#!/usr/bin/env python3
"""How long `pymemtrace tracemalloc` holds the target's main thread, with a million live traced
blocks, old and new side by side; written into docs/benchmarks.md.

Usage: python3 benches/tracemalloc_hold.py --old PATH [--blocks N] [--python PATH] [--runs K]

--old is a pymemtrace binary built from before the helper stopped comparing inside the target
(e.g. `git worktree add /tmp/old <commit>` and `cargo build --release` there); the new one is this
checkout's target/release/pymemtrace. For each binary and run, a fresh fixtures/traced_blocks.py
keeps N small objects alive with tracemalloc started by the program itself (N traced blocks), then
`pymemtrace tracemalloc --duration 2` runs against it. The target's main thread ticks every
millisecond and reports its longest gap between two ticks: the time it was held. Also reported:
the tool's wall time, how much the target's peak RSS (VmHWM) grew during the run (the memory it
needed transiently), and which of tracemalloc's snapshot functions were called in it. Needs root (ptrace).
"""
from __future__ import print_function

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time

from sections import replace_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW = os.path.join(ROOT, "target", "release", "pymemtrace")
FIXTURE = os.path.join(ROOT, "fixtures", "traced_blocks.py")


def peak_rss_mb(pid):
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def measure(tool, python, blocks):
    target = subprocess.Popen([python, FIXTURE, "--blocks", str(blocks), "--trace", "--watch-calls"],
                              stdout=subprocess.PIPE)
    try:
        assert target.stdout.readline().strip() == b"ready"

        def report():
            os.kill(target.pid, signal.SIGUSR2)
            return json.loads(target.stdout.readline())

        report()
        peak_before = peak_rss_mb(target.pid)
        started = time.time()
        run = subprocess.run([tool, "tracemalloc", "--pid", str(target.pid), "--duration", "2",
                              "--top", "3"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wall = time.time() - started
        after = report()
        return {
            "ok": run.returncode == 0,
            "error": run.stderr.decode(errors="replace").strip().splitlines()[-1:],
            "wall": wall,
            "gap": after["max_gap"],
            "peak_growth": peak_rss_mb(target.pid) - peak_before,
            "calls": after["tracemalloc_calls"],
        }
    finally:
        target.kill()
        target.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", required=True)
    parser.add_argument("--blocks", type=int, default=1000000)
    parser.add_argument("--python", default="/root/.pyenv/versions/3.11.7/bin/python")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    version = subprocess.check_output([args.python, "-c", "import sys; print(sys.version.split()[0])"])
    rows = []
    for run in range(args.runs):
        for name, tool in (("old: snapshots compared in the target", args.old),
                           ("new: raw traces compared by the tool", NEW)):
            result = measure(tool, args.python, args.blocks)
            print(name, result, file=sys.stderr)
            rows.append("| %s | %s | %.2f s | %.1f s | +%.0f MiB | %s |" % (
                name, "ok" if result["ok"] else "failed: " + " ".join(result["error"]),
                result["gap"], result["wall"], result["peak_growth"],
                ", ".join(result["calls"]) or "none"))
    text = "\n".join([
        "## tracemalloc: how long the target's main thread is held",
        "",
        "`python3 benches/tracemalloc_hold.py --old OLD_BINARY --blocks %d` (Python %s, %s, %d cores, "
        "shared with other work: figures are noisy): a target keeping %s small objects alive with "
        "tracemalloc on, `pymemtrace tracemalloc --duration 2` against it. *Longest hold*: the "
        "target's own longest gap between two 1 ms ticks during the run. *Peak RSS growth*: how much "
        "the target's VmHWM rose (memory it needed, even for a moment). *Snapshot functions*: "
        "tracemalloc's snapshot machinery called in the target (the fixture wraps it)." % (
            args.blocks, version.decode().strip(), platform.machine(), os.cpu_count(),
            "{:,}".format(args.blocks)),
        "",
        "| helper | run | longest hold | tool wall time | peak RSS growth | Snapshot functions |",
        "|---|---|---|---|---|---|",
    ] + rows)
    replace_section(os.path.join(ROOT, "docs", "benchmarks.md"), "tracemalloc-hold", text)
    print(text)


if __name__ == "__main__":
    main()
