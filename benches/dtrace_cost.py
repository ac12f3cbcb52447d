#!/usr/bin/env python3
"""Cost of `pymemtrace dtrace` to its target, written into docs/benchmarks.md (its own section).

Usage: sudo python3 benches/dtrace_cost.py [--rounds N] [--python PATH] [--out FILE]

fixtures/malloc_heavy.py in two modes, each printing its own loop time: `bytearray` (1,000,000
600-byte bytearrays: a malloc and a free each, with as little other work as Python allows, the
worst case) and `json` (20,000 json round trips of a small dict: ordinary work). Each round runs
each mode untraced, under `malloc_count` and under `py_malloc` (the tool attached before the work
starts, bpftrace), interleaved; the table gives medians and slowdown ratios.
"""
from __future__ import print_function

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

from sections import replace_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "target", "release", "pymemtrace")
FIXTURE = os.path.join(ROOT, "fixtures", "malloc_heavy.py")


MODES = [("bytearray", 1000000), ("json", 20000)]

# Why free is the expensive probe (measured by hand with bpftrace one-liners, see the section).
NOTE = (" Each probe hit is a uprobe, a trap into the kernel and a BPF program, against about 75 ns for a glibc malloc+free pair from the tcache. What dominates `malloc_count` is its probe on free: glibc 2.36's free starts with `test %rdi,%rdi`, which the kernel must single-step out of line (two traps), while malloc starts with `push %r12`, which it emulates. Measured alone on `bytearray` (300,000 iterations, bpftrace one-liners): a count() on malloc costs 0.5 us per call, on free 9.6 us. `py_malloc`, which probes malloc, calloc and realloc but not free, stays at 1.2 us per malloc including its walk to the Python frame. A probe a few bytes into free (on its `je` or first `push`, both emulated) would avoid the single-step, but Debian's bpftrace 0.17 is built without uprobe offset support and refuses any probe inside a function (`free+3`, or the address `0x98ef3`), even with `--unsafe`; a newer bpftrace, or our own eBPF loader, is needed for that.")


def one_run(python, mode, count, script):
    """The fixture's wall time for `count` iterations, traced by `script` (None: untraced)."""
    target = subprocess.Popen([python, FIXTURE, "--wait", "--count", str(count), "--mode", mode],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert target.stdout.readline().strip() == b"ready"
    tool = None
    if script:
        tool = subprocess.Popen([TOOL, "dtrace", "--pid", str(target.pid), "--script", script],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        line = tool.stderr.readline().decode()
        assert line.startswith("pymemtrace: tracing PID"), line
    target.stdin.write(b"go\n")
    target.stdin.close()
    elapsed = float(target.stdout.readline().split()[1])
    target.wait()
    if tool:
        tool.wait()  # bpftrace ends with its target
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--python", default=os.path.expanduser("~/.pyenv/versions/3.12.1/bin/python"))
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    version = subprocess.run([args.python, "-c", "import sys; print(sys.version.split()[0])"],
                             stdout=subprocess.PIPE, check=True).stdout.decode().strip()
    bpftrace = subprocess.run(["bpftrace", "--version"], stdout=subprocess.PIPE).stdout.decode().strip()
    variants = [("untraced", None), ("`malloc_count`", "malloc_count"), ("`py_malloc`", "py_malloc")]
    results = {(mode, label): [] for mode, _ in MODES for label, _ in variants}
    for round_ in range(args.rounds):
        for mode, count in MODES:
            for label, script in variants:
                results[(mode, label)].append(one_run(args.python, mode, count, script))
                print(round_, mode, label, results[(mode, label)][-1], file=sys.stderr)
    command = "sudo python3 benches/dtrace_cost.py --rounds %d --python %s" % (args.rounds, args.python)
    lines = [
        "## Cost of `pymemtrace dtrace`",
        "",
        "Produced by `%s` on %s (%s, %d cores), %s, Python %s, %s. The target is fixtures/malloc_heavy.py:"
        " `bytearray` creates and drops 1,000,000 bytearrays of 600 bytes (a libc malloc and free each, with"
        " as little other work as Python allows: the worst case for a malloc probe); `json` makes 20,000 json"
        " round trips of a 40-entry dict (ordinary work: mostly CPython's own small-object allocator). Medians"
        " of %d rounds (variants interleaved) of the target's own wall time for its loop, with the tool"
        " attached before the loop starts."
        % (command, time.strftime("%Y-%m-%d"), platform.machine(), os.cpu_count(), platform.platform(),
           version, bpftrace, args.rounds),
        "",
        "| workload | target traced by | loop time (s) | slowdown |",
        "|---|---|---|---|",
    ]
    for mode, _ in MODES:
        base = statistics.median(results[(mode, "untraced")])
        for label, _ in variants:
            median = statistics.median(results[(mode, label)])
            lines.append("| %s | %s | %.3f | x%.2f |" % (mode, label, median, median / base))
    ratio = lambda mode, label: (statistics.median(results[(mode, label)])
                                 / statistics.median(results[(mode, "untraced")]))
    count_ratio = ratio("json", "`malloc_count`")
    verdict = ("The original pymemtrace's DTrace scripts (Python function flow plus malloc/free) slowed"
               " its target x91 (release build). Aim for `malloc_count`: under x3 on ordinary work: %s (x%.2f on"
               " `json`); on the worst case it is x%.1f."
               % ("met" if count_ratio < 3 else "NOT met", count_ratio, ratio("bytearray", "`malloc_count`")))
    lines += ["", verdict + NOTE]
    replace_section(args.out, "dtrace-cost", "\n".join(lines))
    print("wrote", args.out, file=sys.stderr)


if __name__ == "__main__":
    main()
