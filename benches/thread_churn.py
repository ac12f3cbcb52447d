#!/usr/bin/env python3
"""Lost stack reads under thread churn (fixtures/thread_churn.py), per interpreter.

Usage: python3 benches/thread_churn.py [--rounds N] [--seconds S] [--tool PATH]... [--only 3.12,3.13]

For every interpreter (pyenv 2.7, 3.6-3.13, Debian's python3.11), each round:
  1. py-spy's library alone (benches/churn_reads.rs) reading the churning fixture nonblocking:
     back to back (as `attach` reads while memory moves) and at 1 kHz; the share of failed
     `get_stack_traces()` calls, the share that failed again on an immediate retry, and the
     errors behind them;
  2. each `--tool` binary (default target/release/pymemtrace) as `attach -o JSON -- python
     thread_churn.py`: its lost-tick fraction, the fixture's churn rate (threads started per
     second under the tool) and the bytes charged to `keep_blocks` (which keeps --blocks MiB).
Prints a Markdown table (medians over rounds) and the error kinds seen. Builds what it needs.
Needs root (or CAP_SYS_PTRACE) like the tool itself.
"""
from __future__ import print_function

import argparse
import collections
import glob
import json
import os
import re
import statistics
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "fixtures", "thread_churn.py")


def interpreters(only):
    found = []
    for minor in ["2.7", "3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]:
        paths = sorted(
            glob.glob(os.path.expanduser("~/.pyenv/versions/%s.*/bin/python" % minor)),
            key=lambda p: [int(x) for x in p.split("/versions/")[1].split("/")[0].split(".")
                           if x.isdigit()],
        )
        paths = [p for p in paths if re.search(r"/versions/%s\.\d+/" % re.escape(minor), p)]
        if paths:
            found.append((minor, paths[-1]))
    if os.path.exists("/usr/bin/python3.11"):
        found.append(("debian-3.11", "/usr/bin/python3.11"))
    if only:
        found = [f for f in found if f[0] in only]
    return found


def build():
    subprocess.check_call(["cargo", "build", "--release", "--quiet"], cwd=ROOT)
    out = subprocess.check_output(
        ["cargo", "bench", "--bench", "churn_reads", "--no-run", "--message-format=json", "--quiet"],
        cwd=ROOT,
    ).decode()
    for line in out.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message.get("executable") and \
                message.get("target", {}).get("name") == "churn_reads":
            return message["executable"]
    raise SystemExit("could not find the churn_reads benchmark binary")


def pyspy_alone(reader, python, seconds, rate, kinds):
    target = subprocess.Popen(
        [python, FIXTURE, "--wait", "--seconds", str(seconds + 1)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    assert target.stdout.readline().strip() == b"ready"
    target.stdin.write(b"go\n")
    target.stdin.flush()
    out = subprocess.check_output([reader, str(target.pid), str(seconds), str(rate)]).decode()
    target.communicate()
    lines = out.splitlines()
    figures = lines[0].split()
    reads, failed, twice = int(figures[1]), int(figures[3]), int(figures[5])
    for line in lines[1:]:
        count, kind = line.split(None, 1)
        kinds[kind] += int(count)
    return failed / max(reads, 1), twice / max(reads, 1)


def attach(tool, python, seconds):
    with tempfile.TemporaryDirectory() as scratch:
        result_path = os.path.join(scratch, "result.json")
        run = subprocess.run(
            [tool, "attach", "-o", result_path, "--", python, FIXTURE, "--seconds", str(seconds)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        if run.returncode != 0:
            raise SystemExit("%s failed: %s" % (tool, run.stderr.decode()))
        with open(result_path) as f:
            result = json.load(f)
    done = re.search(rb"done kept=(\d+) threads=(\d+) seconds=\S+ rate=(\d+)", run.stdout)
    kept, rate = int(done.group(1)), int(done.group(3))
    charged = 0
    for function in result["functions"]:
        if function["function"] == "keep_blocks":
            charged = function["self"]["net"]
    return result["lost_fraction"], rate, charged / kept, result.get("partial_samples", 0) / max(
        result["samples"], 1)


def median(values):
    return statistics.median(values) if values else float("nan")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--tool", action="append")
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    tools = args.tool or [os.path.join(ROOT, "target", "release", "pymemtrace")]
    reader = build()
    only = [o for o in args.only.split(",") if o]
    kinds = collections.Counter()
    header = ["Python", "churn (threads/s)", "py-spy alone: failed (back to back)",
              "failed twice", "py-spy alone: failed (1 kHz)", "failed twice"]
    for tool in tools:
        name = os.path.basename(tool)
        header += ["%s: lost ticks" % name, "%s: keep_blocks charged / kept" % name]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, python in interpreters(only):
        alone_fast, alone_slow, rates = [], [], []
        per_tool = [([], []) for _ in tools]
        for _ in range(args.rounds):
            alone_fast.append(pyspy_alone(reader, python, args.seconds, 0, kinds))
            alone_slow.append(pyspy_alone(reader, python, args.seconds, 1000, kinds))
            for (lost, charged), tool in zip(per_tool, tools):
                fraction, rate, share, _ = attach(tool, python, args.seconds)
                lost.append(fraction)
                charged.append(share)
                rates.append(rate)
        row = [label, "%.0f" % median(rates),
               "%.2f%%" % (100 * median([f for f, _ in alone_fast])),
               "%.2f%%" % (100 * median([t for _, t in alone_fast])),
               "%.2f%%" % (100 * median([f for f, _ in alone_slow])),
               "%.2f%%" % (100 * median([t for _, t in alone_slow]))]
        for lost, charged in per_tool:
            row += ["%.2f%% (max %.2f%%)" % (100 * median(lost), 100 * max(lost)),
                    "%.3f" % median(charged)]
        print("| " + " | ".join(row) + " |", flush=True)
    print()
    print("Why py-spy's reads failed (all interpreters, all rounds):")
    for kind, count in kinds.most_common():
        print("  %6d  %s" % (count, kind))


if __name__ == "__main__":
    main()
