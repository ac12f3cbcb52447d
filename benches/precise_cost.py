"""What `pymemtrace attach --precise` costs and buys, in one run, into docs/benchmarks.md
(section "precise-cost"):

  truth     the share error (percentage points, worst function, "everything else" counted as an
            error) of `attach` (sampling), `attach --precise` with each engine (bpftrace, perf)
            and `austin -m`, on the same fixtures: the four of benches/compare.py plus
            native_thread.py (growth in a C thread with no Python frame)
  slowdown  the target's wall time under each --precise engine against alone, on an
            allocation-heavy fixture (aim: under 1.5x) and a CPU-only one (aim: under 1.02x)
  tool CPU  the tool's own CPU (the pymemtrace process and its children: bpftrace) while memory
            moves, against full-speed stack reading (`pymemtrace attach --rate 20000 --max-rate
            20000`, which reads stacks as fast as it can) on the same fixture (aim: a tenth)

Usage (as root, for the bpftrace engine; austin-dist from PyPI in the harness's venv, see
benches/compare_tools.py):
    python3 benches/precise_cost.py [--rounds N] [--python PATH] [--no-write]
Rounds default to 3; every figure is the median over rounds. Takes about 5 minutes with 3.
"""
from __future__ import print_function

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compare  # noqa: E402
import compare_parse  # noqa: E402
import compare_tools as ct  # noqa: E402
from sections import replace_section  # noqa: E402

NATIVE = ("native_thread.py", "growth in a C thread with no Python frame (pthread, named)",
          [("<native nat-grower>", 2 / 3.0), ("py_grow", 1 / 3.0), ("compute", 0.0)], {"full": []})
FIXTURES = compare.TRUTH_FIXTURES + [NATIVE]
FULL_SPEED = ["--rate", "20000", "--max-rate", "20000"]


def tree_cpu(pid):
    """CPU seconds of a process and its children (the bpftrace engine's work is in bpftrace)."""
    total = ct.cpu_seconds(pid) or 0.0
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as handle:
            for child in handle.read().split():
                total += tree_cpu(int(child))
    except OSError:
        pass
    return total


class Precise(ct.PymemtraceAttach):
    """`attach --precise --precise-engine ENGINE`: observing once it says it is tracing."""

    def __init__(self, env, workdir, engine):
        ct.PymemtraceAttach.__init__(self, env, workdir, ["--precise", "--precise-engine", engine],
                                     "attach --precise (%s)" % engine)

    def start(self, pid):
        self.out = self.path(".json")
        self.proc = ct.subprocess.Popen(self.command(pid, self.out), stdout=ct.subprocess.DEVNULL,
                                        stderr=ct.subprocess.PIPE)
        self.pid = self.proc.pid
        self.err = ct.LineReader(self.proc.stderr)
        self.err.wait_for(lambda line: line.startswith("pymemtrace: tracing"), 60)

    def stop(self, parse=True):
        ct.stop_process(self.proc)
        self.proc.stderr.close()
        if self.proc.returncode != 0:
            raise RuntimeError("pymemtrace attach --precise exited %s" % self.proc.returncode)
        with open(self.out) as handle:
            data = json.load(handle)
        # Grown bytes per function too: releases are lengths in the bpftrace engine (a new
        # thread's glibc arena reservation counts as released), so net can mislead there.
        self.grown = {}
        for function in data["functions"]:
            key = (os.path.basename(function["file"]) if function["file"] else "", function["function"])
            self.grown[key] = self.grown.get(key, 0) + function["self"]["grown"]
        result = compare_parse.pymemtrace_attach(self.out) if parse else None
        self.cleanup(self.out)
        return result


def tools(env, workdir):
    out = [ct.PymemtraceAttach(env, workdir, label="attach"), Precise(env, workdir, "bpftrace"),
           Precise(env, workdir, "perf")]
    if env.austin:
        out.append(ct.Austin(env, workdir))
    return out


def truth_run(env, workdir, tool, fixture, args, truth):
    """As compare.truth_run, but a `<native NAME>` entry (no file) counts as a truth name too."""
    target = ct.Target(env, fixture, args + ["--linger"], workdir)
    try:
        tool.start(target.pid)
        target.go()
        target.wait_done()
        time.sleep(0.3)
        net = tool.stop()
    finally:
        tool.abort()
        target.kill()
    grown = getattr(tool, "grown", None)
    tool.grown = None
    return worst(net, fixture, truth), (worst(grown, fixture, truth) if grown else None)


def worst(by_function, fixture, truth):
    share, _ = compare_parse.shares(by_function)
    names = set(name for name, _ in truth)
    result = dict((name, 0.0) for name in names)
    result[compare.OTHER] = 0.0
    for (filename, function), value in share.items():
        if function in names and (filename == fixture or (filename == "" and function.startswith("<"))):
            result[function] += value
        else:
            result[compare.OTHER] += value
    errors = [abs(result[name] - expected) for name, expected in truth] + [result[compare.OTHER]]
    return max(errors)


def cost_run(env, workdir, fixture, args, make_tool):
    target = ct.Target(env, fixture, args, workdir)
    tool = None
    try:
        if make_tool:
            tool = make_tool()
            tool.start(target.pid)
        before = tree_cpu(tool.pid) if tool else None
        target.go()
        elapsed, wall = target.wait_done()
        tool_cpu = (tree_cpu(tool.pid) - before) / wall if tool else None
        if tool:
            tool.stop(parse=False)
        return elapsed, tool_cpu
    finally:
        if tool:
            tool.abort()
        target.kill()


def machine_note(load_before, load_after):
    """What the load averages say about the figures: a busy machine slows the perf engine's reads
    and every target, so its figures are not ones to quote."""
    if load_before > 0.5:
        return ("**This run shared the machine with other work (load average %.1f before it started,"
                " %.1f at the end)**: the figures that depend on the tool getting the CPU at once (the"
                " perf engine's shares, every slowdown) are worse than on a quiet machine; rerun there"
                " for figures to quote." % (load_before, load_after))
    return ("The machine was otherwise quiet (load average %.1f before the run; %.1f at the end, the"
            " run's own)." % (load_before, load_after))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--python", default=compare.DEFAULT_PYTHON if os.path.exists(compare.DEFAULT_PYTHON)
                        else sys.executable)
    parser.add_argument("--out", default=os.path.join(ct.ROOT, "docs", "benchmarks.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    # The one-minute load average before anything of ours runs: what else the machine was doing.
    load_before = os.getloadavg()[0]
    began = time.time()
    env = ct.setup(args.python)
    ct.build(env)
    workdir = ct.workdir()
    labels = [t.label for t in tools(env, workdir)]
    errors = dict(((f[0], label), []) for f in FIXTURES for label in labels)
    failures = {}
    for round_index in range(args.rounds):
        for fixture, _, truth, fixture_args in FIXTURES:
            for tool in compare.rotate(tools(env, workdir), round_index):
                try:
                    net, grown = truth_run(env, workdir, tool, fixture, fixture_args["full"], truth)
                    errors[(fixture, tool.label)].append((net, grown))
                    ct.log("truth %d %s %s: worst %.1f points (grown: %s)" % (
                        round_index + 1, fixture, tool.label, net * 100,
                        "%.1f" % (grown * 100) if grown is not None else "-"))
                except Exception as error:  # one failed run is a figure missing, not the whole bench
                    failures[(fixture, tool.label)] = compare.clean(str(error))
                    ct.log("truth %s %s FAILED: %s" % (fixture, tool.label, error))

    cost_targets = [("alloc_heavy.py", ["--rounds", "1500"]), ("cpu_only.py", ["--work", "300"])]
    variants = [("alone", None),
                ("attach --precise (bpftrace)", lambda: Precise(env, workdir, "bpftrace")),
                ("attach --precise (perf)", lambda: Precise(env, workdir, "perf")),
                ("full-speed stack reading (attach --rate 20000 --max-rate 20000)",
                 lambda: ct.PymemtraceAttach(env, workdir, FULL_SPEED))]
    costs = dict(((t[0], v[0]), []) for t in cost_targets for v in variants)
    for round_index in range(args.rounds):
        for fixture, fixture_args in cost_targets:
            for name, make in compare.rotate(variants, round_index):
                try:
                    costs[(fixture, name)].append(cost_run(env, workdir, fixture, fixture_args, make))
                    ct.log("cost %d %s %s: %s" % (round_index + 1, fixture, name, costs[(fixture, name)][-1]))
                except Exception as error:
                    failures[(fixture, name)] = compare.clean(str(error))
                    ct.log("cost %s %s FAILED: %s" % (fixture, name, error))

    lines = [
        "Produced by `sudo python3 benches/precise_cost.py --rounds %d` on %s (%s, %d cores, %s), Python %s as"
        " the target. Tools: %s. %s" % (
            args.rounds, time.strftime("%Y-%m-%d"), platform.machine(), os.cpu_count(), platform.platform(),
            env.versions["python"], ", ".join(env.versions[k] for k in ("pymemtrace", "austin") if k in env.versions),
            machine_note(load_before, os.getloadavg()[0])),
        "",
        "**Share error**, percentage points, worst function of each fixture (median of %d rounds; what"
        " went to functions outside the truth counts as an error too). Shares of net growth, as in the"
        " comparison above; for the --precise engines also of bytes grown in brackets, since the bpftrace"
        " engine counts release lengths, and a new thread's glibc arena reservation (64 MiB, unmapped in"
        " part untouched) then shows as released (docs/attach.md): `native_thread.py`'s and"
        " `worker_growth.py`'s truths hold for both." % args.rounds,
        "",
        "| fixture | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for fixture, _, _, _ in FIXTURES:
        cells = []
        for label in labels:
            values = errors[(fixture, label)]
            if not values:
                cells.append("failed: %s" % failures.get((fixture, label), "?"))
                continue
            cell = "%.1f" % (compare.median([n for n, _ in values]) * 100)
            grown = [g for _, g in values if g is not None]
            if grown:
                cell += " (grown %.1f)" % (compare.median(grown) * 100)
            cells.append(cell)
        lines.append("| `%s` | %s |" % (fixture, " | ".join(cells)))
    lines += ["", "**Cost** (median of %d rounds): the target's wall time against alone, and the tool's"
              " own CPU (its process and children) as a fraction of one core over the run. The bpftrace engine's"
              " BPF program runs in the kernel on the target's own faults, so its cost shows as the target's"
              " slowdown, not as tool CPU (bpftrace's process only prints and aggregates); the perf engine's"
              " work is in the tool:" % args.rounds, "",
              "| fixture | variant | target wall time | slowdown | tool CPU |", "|---|---|---|---|---|"]
    for fixture, _ in cost_targets:
        alone = costs[(fixture, "alone")]
        alone_s = compare.median([e for e, _ in alone]) if alone else None
        for name, _ in variants:
            runs = costs[(fixture, name)]
            if not runs:
                lines.append("| `%s` | %s | failed: %s | | |" % (fixture, name, failures.get((fixture, name), "?")))
                continue
            wall = compare.median([e for e, _ in runs])
            cpu = [c for _, c in runs if c is not None]
            lines.append("| `%s` | %s | %.2f s | %s | %s |" % (
                fixture, name, wall, "%.2fx" % (wall / alone_s) if alone_s else "?",
                "%.1f%%" % (compare.median(cpu) * 100) if cpu else "-"))
    full = costs[("alloc_heavy.py", variants[3][0])]
    full_cpu = compare.median([c for _, c in full]) if full else None
    for name in ("attach --precise (bpftrace)", "attach --precise (perf)"):
        runs = costs[("alloc_heavy.py", name)]
        if runs and full_cpu:
            lines.append("")
            lines.append("- %s while memory moves (`alloc_heavy.py`): %.2f of full-speed stack reading's CPU"
                         " (aim: 0.10)." % (name, compare.median([c for _, c in runs]) / full_cpu))
    lines += ["", "This run took %.0f s." % (time.time() - began)]
    text = "\n".join(lines)
    if args.no_write:
        print(text)
    else:
        replace_section(args.out, "precise-cost", text)
    ct.shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
