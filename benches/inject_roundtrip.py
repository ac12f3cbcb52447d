#!/usr/bin/env python3
"""Injection round trip of the helpers that run inside a target, written into docs/benchmarks.md.

Usage: python3 benches/inject_roundtrip.py [--rounds N] [--python PATH ...]

For each interpreter and each target state (fixtures/inject_target.py: `busy` main thread,
`contended`: four allocating threads plus a busy main thread all wanting the GIL, `threads`: the
four threads with the main thread sleeping in 50 ms steps, `nap`: one long sleep), runs
`pymemtrace ping` N times in a row against one target and reports the median and 95th percentile of
the round trip (tool start to the helper's reply, as the tool measures it), the time the main thread
was held, and how the helper got in (`--method auto`; `--method gdb` on the busy target too).
Needs root (or CAP_SYS_PTRACE) like the tool itself.
"""
from __future__ import print_function

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from sections import replace_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "target", "release", "pymemtrace")


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def measure(python, mode, method, rounds):
    target = subprocess.Popen([python, os.path.join(ROOT, "fixtures", "inject_target.py")] + mode.split(),
                              stdout=subprocess.PIPE, stdin=subprocess.PIPE)
    assert target.stdout.readline().strip() == b"ready"
    trips, held, failures, deliveries = [], [], 0, {}
    try:
        for _ in range(rounds):
            out = subprocess.run([TOOL, "ping", "--pid", str(target.pid), "--method", method],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if out.returncode != 0:
                failures += 1
                continue
            result = json.loads(out.stdout)
            trips.append(result["round_trip_seconds"] * 1000)
            held.append(result["held_seconds"] * 1000)
            kind = result["delivery"].split(" (")[0]
            deliveries[kind] = deliveries.get(kind, 0) + 1
    finally:
        target.kill()
        target.wait()
    return {"median": statistics.median(trips), "p95": percentile(trips, 0.95),
            "held_median": statistics.median(held), "held_max": max(held), "failures": failures,
            "n": len(trips), "deliveries": deliveries}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--python", action="append",
                        default=None, help="interpreter(s); default pyenv 3.8 and 3.12, Debian 3.11")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    args = parser.parse_args()
    pythons = args.python or [os.path.expanduser("~/.pyenv/versions/3.8.18/bin/python"),
                              os.path.expanduser("~/.pyenv/versions/3.12.1/bin/python"), "/usr/bin/python3.11"]
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    rows = []
    for python in pythons:
        version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                                 stdout=subprocess.PIPE).stdout.decode().strip()
        for mode, method in (("busy", "auto"), ("busy", "gdb"), ("contended", "auto"),
                             ("threads", "auto"), ("nap 3600", "auto")):
            result = measure(python, mode, method, args.rounds)
            print(version, mode, method, result, file=sys.stderr)
            rows.append((version, python, mode if method == "auto" else "%s, --method %s" % (mode, method),
                         result))
    command = "python3 benches/inject_roundtrip.py --rounds %d" % args.rounds
    lines = [
        "## Injection round trip (`tracemalloc`, `mallocstats`)",
        "",
        "Produced by `%s` on %s (%s, %d cores), %s. `pymemtrace ping` (the smallest helper) %d times in a"
        " row against one target per row; round trip = from the tool's start of the injection to the"
        " helper's reply; held = how long the target's main thread was stopped (every thread, for gdb);"
        " delivery = how the helper got in, per run."
        % (command, time.strftime("%Y-%m-%d"), platform.machine(), os.cpu_count(), platform.platform(),
           args.rounds),
        "",
        "| Python | target | round trip median (ms) | p95 (ms) | held median (ms) | held max (ms) | delivery | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for version, python, mode, r in rows:
        delivery = ", ".join("%s %d" % item for item in sorted(r["deliveries"].items()))
        lines.append("| %s | %s | %.1f | %.1f | %.2f | %.2f | %s | %d of %d |" % (
            version, mode, r["median"], r["p95"], r["held_median"], r["held_max"], delivery,
            r["failures"], r["n"] + r["failures"]))
    busy = max(r["median"] for _, _, mode, r in rows if mode == "busy")
    contended = max(r["p95"] for _, _, mode, r in rows if mode == "contended")
    lines += [
        "",
        "Targets: median under 20 ms on a busy target: %s (worst %.1f ms); p95 under 100 ms on a 4-thread"
        " GIL-contended target: %s (worst %.1f ms)." % ("met" if busy < 20 else "NOT met", busy,
                                                       "met" if contended < 100 else "NOT met", contended),
        "`busy`: the main thread computes; `contended`: four threads allocate and free while the main"
        " thread computes, all five wanting the GIL; `threads`: the four threads with the main thread"
        " sleeping in 50 ms steps (a direct call when the main thread is caught asleep, else a pending"
        " call that waits for the sleep to end, then for the GIL); `nap 3600`: the main thread in one"
        " hour-long sleep (only a direct call can answer). A direct call holds the main thread for as"
        " long as the helper runs, which is what `held` shows for it.",
    ]
    replace_section(args.out, "inject-roundtrip", "\n".join(lines))
    print("wrote", args.out, file=sys.stderr)


if __name__ == "__main__":
    main()
