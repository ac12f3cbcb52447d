#!/usr/bin/env python3
"""pymemtrace against the tools users would pick instead: py-spy, Austin, memray.

Usage: python3 benches/compare.py [--quick] [--rounds N] [--only truth,cost,first,throughput,memory]
                                  [--python PATH] [--out docs/benchmarks.md]

Sets everything up itself: a virtual environment under ~/.cache/pymemtrace-bench with py-spy,
austin-dist and memray from PyPI (Austin: the newest austin-dist whose binary runs here), gdb from
Debian for memray attach (apt-get, as root), and the release build and benchmark binaries with cargo.
Then runs five comparisons, each tool on the same fixture in the same round, the tools' order
rotated from round to round, and writes one section of docs/benchmarks.md per comparison
(medians of the rounds, never single runs):

  truth       the share of growth each tool gives each function of four fixtures with known truth
  cost        the target's slowdown and the tool's own CPU at 100 Hz and 1 kHz
  first       time from the command's start to the first data and to a report
  throughput  stack reads per second, `pymemtrace attach` flat out against py-spy's library alone
  memory      the tool's own memory after 3.6M ticks fed to the attribution model

Targets run on the virtual environment's Python (--python, default pyenv's 3.12.1): memray attach
needs memray importable inside the target. Needs root (or CAP_SYS_PTRACE), like every tool here.
--quick: 2 rounds, smaller fixtures, 10x fewer ticks: checks the harness end to end in a few minutes.
"""
from __future__ import print_function

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in benches/

import compare_parse  # noqa: E402
import compare_tools as ct  # noqa: E402
from compare_tools import log  # noqa: E402
from sections import replace_section  # noqa: E402

DEFAULT_PYTHON = os.path.expanduser("~/.pyenv/versions/3.12.1/bin/python")


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def rotate(items, by):
    by %= len(items)
    return items[by:] + items[:by]


def fmt_pct(value, digits=1):
    return "n/a" if value is None else "%.*f%%" % (digits, value * 100)


def clean(message):
    """A failure message fit for a table cell: no colour codes, no pipes, no paths, one line."""
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(message))
    message = ct.short(" ".join(message.split())).replace("|", "/")
    return message if len(message) <= 200 else message[:197] + "..."


def fmt_int(value):
    return "n/a" if value is None else format(int(round(value)), ",")


def fmt(value, pattern):
    return "n/a" if value is None else pattern % value


# ---------------------------------------------------------------------------------------------
# 1. Truth

TRUTH_FIXTURES = [
    ("leak_by_function.py", "retained by function, with temporary churn",
     [("keep_big", 2 / 3.0), ("keep_small", 1 / 3.0), ("churn", 0.0), ("burn_cpu", 0.0)],
     {"full": ["--scale", "0.5"], "quick": ["--scale", "0.3"]}),
    ("bursty.py", "short bursts between CPU-only work, and a worker thread",
     [("burst_big", 0.50), ("burst_small", 0.25), ("worker_alloc", 0.25), ("compute", 0.0), ("worker_idle", 0.0)],
     {"full": [], "quick": []}),
    ("worker_growth.py", "growth only in worker threads while the main thread computes",
     [("load_records", 2 / 3.0), ("fill_cache", 1 / 3.0), ("spin", 0.0)],
     {"full": [], "quick": []}),
    ("join_growth.py", "growth inside one long C-level call (b\"\".join of 2,000 buffers)",
     [("join_all", 2 / 3.0), ("keep_pieces", 1 / 3.0), ("checksum", 0.0)],
     {"full": [], "quick": ["--rounds", "3"]}),
]
OTHER = "everything else"


def truth_tools(env, workdir):
    tools = [ct.PymemtraceAttach(env, workdir)]
    if env.austin:
        tools.append(ct.Austin(env, workdir))
    tools += [ct.Memray(env, workdir), ct.Tracemalloc(env, workdir)]
    return tools


def truth_run(env, workdir, tool, fixture, args, truth):
    target = ct.Target(env, fixture, args + ["--linger"], workdir)
    try:
        tool.start(target.pid)
        target.go()
        target.wait_done()
        time.sleep(0.3)  # the last page faults and frees reach RSS
        net = tool.stop()
    finally:
        tool.abort()
        target.kill()
    share, total = compare_parse.shares(net)
    names = set(name for name, _ in truth)
    result = {name: 0.0 for name in names}
    result[OTHER] = 0.0
    for (filename, function), value in share.items():
        if filename == fixture and function in names:
            result[function] += value
        else:
            result[OTHER] += value
    errors = [abs(result[name] - expected) for name, expected in truth] + [result[OTHER]]
    return result, max(errors), tool.info.get("late_fraction")


def compare_truth(env, args, workdir):
    mode = "quick" if args.quick else "full"
    tool_labels = [t.label for t in truth_tools(env, workdir)]
    runs = {(f[0], label): [] for f in TRUTH_FIXTURES for label in tool_labels}
    failures = {}
    for round_index in range(args.rounds):
        for fixture, _, truth, fixture_args in TRUTH_FIXTURES:
            for tool in rotate(truth_tools(env, workdir), round_index):
                try:
                    shares, worst, late = truth_run(env, workdir, tool, fixture, fixture_args[mode], truth)
                    runs[(fixture, tool.label)].append((shares, worst, late))
                    log("truth round %d %s %s: worst %.1f points%s" % (
                        round_index + 1, fixture, tool.label, worst * 100,
                        "" if late is None else ", late %.0f%%" % (late * 100)))
                except Exception as error:  # a tool that cannot do it here is a result, not a crash
                    failures.setdefault((fixture, tool.label), []).append(str(error))
                    log("truth round %d %s %s FAILED: %s" % (round_index + 1, fixture, tool.label, error))
    return {"runs": runs, "failures": failures, "tools": tool_labels, "mode": mode}


def truth_section(env, args, data, header):
    lines = [
        "## Truth: the share of growth each tool gives each function",
        "",
        header,
        "",
        "Each fixture retains known amounts in known functions (its docstring states the truth). A tool"
        " attaches to the running fixture while it idles, the work runs, and the tool is stopped once the"
        " work is done (the fixture keeps what it retained). For every tool alike, a function's share is"
        " its net growth (grown minus released, or bytes still allocated) over the sum of all positive"
        " per-function nets; the function is the innermost Python frame. *Error* is the distance from the"
        " truth in percentage points, per function; *worst* is the largest of them, counting what went to"
        " functions outside the truth (*%s*, truth 0%%) as an error too. Every figure is the median of %d"
        " rounds; the tools' order rotates from round to round." % (OTHER, args.rounds),
        "",
        "What each tool measures: `pymemtrace attach` (default settings) and `austin -m` (its default"
        " 100 us interval; RSS change between two samples, charged to the sampled stack) watch the"
        " process's RSS from outside; memray attach (default options: no `--native`, no"
        " `--trace-python-allocators`; read with `memray transform csv --leaks`) and `pymemtrace"
        " tracemalloc` (`--top 100000`, lines mapped to their functions) count the allocations themselves"
        " from inside the interpreter, and report what is still allocated at the end.",
        "",
    ]
    worst_by_tool = {}
    for fixture, description, truth, fixture_args in TRUTH_FIXTURES:
        mode_args = fixture_args[data["mode"]]
        lines += [
            "### `fixtures/%s%s`: %s" % (fixture, (" " + " ".join(mode_args)) if mode_args else "", description),
            "",
            "| tool | " + " | ".join("%s (%s)" % (name, fmt_pct(expected, 0)) for name, expected in truth)
            + " | %s (0%%) | worst error |" % OTHER,
            "|---|" + "---|" * (len(truth) + 2),
        ]
        for label in data["tools"]:
            runs = data["runs"][(fixture, label)]
            failed = data["failures"].get((fixture, label), [])
            if not runs:
                lines.append("| %s | failed in every round: %s |" % (label, clean(failed[0]) if failed else "no run")
                             + " |" * (len(truth) + 1))
                continue
            cells = []
            for name, expected in truth:
                value = median([r[0][name] for r in runs])
                cells.append("%s (%+.1f)" % (fmt_pct(value), (value - expected) * 100))
            other = median([r[0][OTHER] for r in runs])
            worst = median([r[1] for r in runs])
            worst_by_tool.setdefault(label, []).append((fixture, worst))
            note = " (%d of %d rounds failed: %s)" % (len(failed), args.rounds, clean(failed[0])) if failed else ""
            lines.append("| %s | %s | %s | **%.1f points**%s |" % (label, " | ".join(cells), fmt_pct(other), worst * 100, note))
        lines.append("")
    lines += ["Cells: median share (signed error in points). Per round, worst error in points:", ""]
    for fixture, _, _, _ in TRUTH_FIXTURES:
        parts = []
        for label in data["tools"]:
            runs = data["runs"][(fixture, label)]
            if runs:
                parts.append("%s %s" % (label, ", ".join("%.1f" % (r[1] * 100) for r in runs)))
        late = [r[2] for r in data["runs"][(fixture, "pymemtrace attach")] if r[2] is not None]
        lines.append("- `%s`: %s.%s" % (fixture, "; ".join(parts), (
            " pymemtrace attach's own *late* figure (the share of change it saw only after going"
            " over 3 ms without CPU; it warns above 5%%): %s." % ", ".join("%.0f%%" % (v * 100) for v in late))
            if late else ""))
    lines += ["", "### Verdict", ""]
    ours = "pymemtrace attach"
    for fixture, _, _, _ in TRUTH_FIXTURES:
        scores = [(dict(worst_by_tool.get(label, [])).get(fixture), label) for label in data["tools"]]
        scores = [(w, label) for w, label in scores if w is not None]
        if not scores:
            continue
        best = min(scores)
        mine = dict((label, w) for w, label in scores).get(ours)
        rss = [(w, label) for w, label in scores if label.startswith("austin")]
        text = "- `%s`: closest to the truth: %s (%.1f points worst)." % (fixture, best[1], best[0] * 100)
        if mine is not None and best[1] != ours:
            text += " pymemtrace attach is %.1f points off, %.1f more than %s." % (mine * 100, (mine - best[0]) * 100, best[1])
        if mine is not None and rss:
            text += " Against the other RSS sampler (%s, %.1f points), pymemtrace attach is %s." % (
                rss[0][1], rss[0][0] * 100, "closer" if mine < rss[0][0] else "**NOT closer**")
        late = median([r[2] for r in data["runs"].get((fixture, ours), []) if r[2] is not None])
        if late is not None and late > 0.05:
            text += (" pymemtrace attach warned in its own report that the machine was busy (median %.0f%%"
                     " of the change seen late): its figure here is not the one a quiet machine gives." % (late * 100))
        lines.append(text)
    lines += [
        "",
        "The two tools that count allocations inside the interpreter see exactly what each line"
        " allocated, so where they work they are the reference an RSS sampler is measured against; their"
        " price is in the next section (they run inside the target and slow it down) and in what they"
        " need there (memray attach: gdb on the host and memray installed in the target's own Python"
        " environment; `pymemtrace tracemalloc`: nothing installed). RSS samplers see only the pages"
        " the process gains and returns, and charge them to the code that was running.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 2. Cost

COST_TARGETS = [
    ("cpu_only.py", "CPU-only, RSS flat", {"full": ["--work", "300"], "quick": ["--work", "150"]}),
    ("alloc_heavy.py", "allocation-heavy, RSS moving", {"full": ["--rounds", "1500"], "quick": ["--rounds", "500"]}),
]


def cost_variants(env, workdir):
    variants = [("alone", None)]
    for rate in (100, 1000):
        variants.append(("pymemtrace attach --rate %d" % rate,
                         lambda rate=rate: ct.PymemtraceAttach(env, workdir, ["--rate", str(rate)])))
        variants.append(("pymemtrace attach --rate %d --max-rate %d" % (rate, rate),
                         lambda rate=rate: ct.PymemtraceAttach(env, workdir, ["--rate", str(rate), "--max-rate", str(rate)])))
        variants.append(("py-spy record --nonblocking --rate %d" % rate, lambda rate=rate: ct.PySpy(env, workdir, rate)))
        if env.austin:
            variants.append(("austin -m -i %dus" % (1000000 // rate),
                             lambda rate=rate: ct.Austin(env, workdir, 1000000 // rate)))
    variants.append(("memray attach (tracking)", lambda: ct.Memray(env, workdir)))
    variants.append(("pymemtrace tracemalloc (between snapshots)", lambda: ct.Tracemalloc(env, workdir)))
    return variants


def cost_run(env, workdir, fixture, args, make_tool):
    target = ct.Target(env, fixture, args, workdir)
    tool = None
    try:
        if make_tool:
            tool = make_tool()
            tool.start(target.pid)
        cpu_before = ct.cpu_seconds(tool.pid) if tool and tool.pid else None
        target_cpu_before = ct.cpu_seconds(target.pid)
        faults_before = ct.minor_faults(target.pid)
        target.go()
        elapsed, wall = target.wait_done()
        cpu_after = ct.cpu_seconds(tool.pid) if tool and tool.pid else None
        target_cpu = ct.cpu_seconds(target.pid) - target_cpu_before
        faults = ct.minor_faults(target.pid) - faults_before
        tool_cpu = (cpu_after - cpu_before) / wall if cpu_before is not None and cpu_after is not None else None
        reads = None
        if tool:
            tool.stop(parse=False)
            reads = tool.info.get("reads_while_moving")
        return {"elapsed": elapsed, "tool_cpu": tool_cpu, "target_cpu": target_cpu / wall, "reads": reads,
                "faults": faults}
    finally:
        if tool:
            tool.abort()
        target.kill()


def compare_cost(env, args, workdir):
    mode = "quick" if args.quick else "full"
    variants = cost_variants(env, workdir)
    results = {(t[0], v[0]): [] for t in COST_TARGETS for v in variants}
    failures = {}
    for round_index in range(args.rounds):
        for fixture, _, fixture_args in COST_TARGETS:
            for label, make_tool in rotate(variants, round_index * 3):
                try:
                    run = cost_run(env, workdir, fixture, fixture_args[mode], make_tool)
                    results[(fixture, label)].append(run)
                    log("cost round %d %s %s: %.3f s, tool CPU %s" % (
                        round_index + 1, fixture, label, run["elapsed"], fmt_pct(run["tool_cpu"])))
                except Exception as error:
                    failures.setdefault((fixture, label), []).append(str(error))
                    log("cost round %d %s %s FAILED: %s" % (round_index + 1, fixture, label, error))
    return {"results": results, "failures": failures, "variants": [v[0] for v in variants], "mode": mode}


def cost_section(env, args, data, header):
    lines = [
        "## Cost: the target's slowdown and the tool's own CPU",
        "",
        header,
        "",
        "Each target does a fixed amount of work and measures its own time; *slowdown* is the median time"
        " under the tool over the median time alone (all variants interleaved, in an order rotated each"
        " round; %d rounds). *Tool CPU* is the tool process's CPU time over the work (the sum of its"
        " threads' /proc/PID/task/TID/schedstat, in nanoseconds; one core = 100%%); *target CPU* is the target's own, which shows a tool working inside"
        " it. `pymemtrace attach --rate R` reads stacks at R per second while RSS is flat and back to"
        " back while it moves (its default behaviour, where its accuracy comes from);"
        " `--rate R --max-rate R` holds it to R reads per second, the same budget as py-spy and Austin at"
        " that rate. memray attach and `pymemtrace tracemalloc` are measured while active: memray's"
        " tracker and tracemalloc run inside the target, so their cost is the slowdown, and their tool"
        " process is idle (memray's exits after gdb has loaded the tracker). *Stack reads/s while RSS"
        " moved* is pymemtrace attach's own figure from its JSON; py-spy and Austin read at their fixed"
        " rate." % args.rounds,
        "",
    ]
    for fixture, description, fixture_args in COST_TARGETS:
        alone = median([r["elapsed"] for r in data["results"][(fixture, "alone")]])
        lines += [
            "### `fixtures/%s %s`: %s (alone: %s s)" % (fixture, " ".join(fixture_args[data["mode"]]), description,
                                                         fmt(alone, "%.3f")),
            "",
            "| tool | time (s) | slowdown | tool CPU (% of a core) | target CPU | target page faults | stack reads/s while RSS moved |",
            "|---|---|---|---|---|---|---|",
        ]
        for label in data["variants"]:
            runs = data["results"][(fixture, label)]
            failed = data["failures"].get((fixture, label), [])
            if not runs:
                lines.append("| %s | failed: %s | | | | | |" % (label, clean(failed[0]) if failed else "no run"))
                continue
            elapsed = median([r["elapsed"] for r in runs])
            tool_cpu = median([r["tool_cpu"] for r in runs])
            lines.append("| %s | %.3f | %s | %s | %s | %s | %s |" % (
                label if label != "alone" else "(alone)", elapsed,
                fmt(elapsed / alone if alone else None, "%.3fx"),
                fmt_pct(tool_cpu) if label != "alone" else "",
                fmt_pct(median([r["target_cpu"] for r in runs]), 0),
                fmt_int(median([r["faults"] for r in runs])),
                fmt(median([r["reads"] for r in runs]), "%.0f")))
        lines.append("")
    lines += ["### Verdict", ""]
    res = data["results"]

    def figures(fixture, label):
        runs = res.get((fixture, label)) or []
        alone = median([r["elapsed"] for r in res[(fixture, "alone")]])
        if not runs or not alone:
            return None
        return median([r["elapsed"] for r in runs]) / alone, median([r["tool_cpu"] for r in runs])

    for fixture, _, _ in COST_TARGETS:
        alone_runs = [r["elapsed"] for r in res[(fixture, "alone")]]
        # Differences in slowdown smaller than the spread of the alone runs are noise.
        noise = max(0.02, (max(alone_runs) - min(alone_runs)) / median(alone_runs)) if alone_runs else 0.02
        inside = []
        for label in ("memray attach (tracking)", "pymemtrace tracemalloc (between snapshots)"):
            f = figures(fixture, label)
            if f:
                inside.append("%s %.3fx" % (label.split(" (")[0], f[0]))
        if inside:
            lines.append("- `%s`, the tools that work inside the target, while active: %s." % (fixture, "; ".join(inside)))
        for rate in (100, 1000):
            ours = figures(fixture, "pymemtrace attach --rate %d" % rate)
            capped = figures(fixture, "pymemtrace attach --rate %d --max-rate %d" % (rate, rate))
            others = [(label, figures(fixture, label)) for label in data["variants"]
                      if not label.startswith("pymemtrace") and (label.endswith("--rate %d" % rate)
                                                                  or label.endswith("-i %dus" % (1000000 // rate)))]
            others = [(label, f) for label, f in others if f]
            if not ours or not others:
                continue
            text = "- `%s` at %d Hz: pymemtrace attach %.3fx slowdown, %s of a core; capped to %d reads/s %s;" % (
                fixture, rate, ours[0], fmt_pct(ours[1]), rate,
                "%.3fx, %s" % (capped[0], fmt_pct(capped[1])) if capped else "n/a")
            text += " " + "; ".join("%s %.3fx, %s" % (label, f[0], fmt_pct(f[1])) for label, f in others) + "."
            cpu_others = [(f[1], label) for label, f in others if f[1] is not None]
            if cpu_others and ours[1] is not None:
                least = min(cpu_others)
                if ours[1] > least[0] + 0.005:
                    text += " **pymemtrace attach loses on its own CPU: %s against %s for %s**" % (
                        fmt_pct(ours[1]), fmt_pct(least[0]), least[1])
                    if capped and capped[1] is not None:
                        text += " (capped to the same rate: %s, %s)" % (
                            fmt_pct(capped[1]), "still more" if capped[1] > least[0] + 0.005 else "no more")
                    text += "."
            least_slow = min(f[0] for _, f in others)
            if ours[0] > least_slow + noise:
                text += " **It slows the target more: %.3fx against %.3fx.**" % (ours[0], least_slow)
            elif ours[0] > least_slow:
                text += " Its slowdown is within the noise of the alone runs (their spread: %.0f%%)." % (noise * 100)
            lines.append(text)
    lines += [
        "",
        "Notes on the figures: with its default (uncapped) settings pymemtrace attach reads stacks back"
        " to back while RSS moves, so on an allocation-heavy target its cost does not depend on `--rate`;"
        " that is what buys its accuracy in the truth tables. Every stack read (py-spy's, Austin's or"
        " ours) takes the target's memory-map lock, which its page faults need too. A slowdown under 1x"
        " means the target ran faster: the *target page faults* column says why when it differs from"
        " the alone row (glibc's allocator serves the 64 KiB buffers from its heap instead of fresh"
        " mmaps once a large block has been freed, as the tracemalloc helper's snapshot does)."
        " `pymemtrace tracemalloc`'s cost while active is tracemalloc's own: every Python object"
        " allocation is traced, so the int-heavy CPU-only loop runs many times slower; running that"
        " fixture under `python -X tracemalloc` costs the same.",
    ]
    lines += [
        "",
        "Per round, target time (s):",
        "",
    ]
    for fixture, _, _ in COST_TARGETS:
        for label in data["variants"]:
            runs = data["results"][(fixture, label)]
            if runs:
                lines.append("- `%s`, %s: %s" % (fixture, label, ", ".join("%.3f" % r["elapsed"] for r in runs)))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 3. Time to the first answer


def first_answer_run(env, workdir, tool_name, window):
    """Starts leaky_service.py, lets it run 1 s, then times one tool command with a `window`-second
    observation: to its first data, and to a report a person can read."""
    target = ct.subprocess.Popen(
        [env.python, os.path.join(ct.ROOT, "fixtures", "leaky_service.py"), "--seconds", "120"],
        stdout=ct.subprocess.DEVNULL, stderr=ct.subprocess.PIPE,
    )
    out = os.path.join(workdir, "first-%d" % time.time_ns())
    try:
        time.sleep(1.0)
        started = time.time()
        first = None
        if tool_name == "pymemtrace attach":
            proc = ct.subprocess.Popen([ct.TOOL, "attach", "--pid", str(target.pid), "--no-progress",
                                        "--duration", str(window), "-o", out + ".json"],
                                       stdout=ct.subprocess.DEVNULL, stderr=ct.subprocess.PIPE)
            ct.LineReader(proc.stderr).wait_for(lambda l: l.startswith("pymemtrace: sampling"), 30)
            first = time.time() - started
            proc.wait(60)
            if proc.returncode != 0:
                raise RuntimeError("exit %s" % proc.returncode)
        elif tool_name == "pymemtrace tracemalloc":
            proc = ct.subprocess.Popen([ct.TOOL, "tracemalloc", "--pid", str(target.pid), "--duration", str(window),
                                        "--json", out + ".json"],
                                       stdout=ct.subprocess.DEVNULL, stderr=ct.subprocess.PIPE)
            ct.LineReader(proc.stderr).wait_for(lambda l: "first snapshot taken" in l, 60)
            first = time.time() - started
            proc.wait(60)
            if proc.returncode != 0:
                raise RuntimeError("exit %s" % proc.returncode)
        elif tool_name == "austin -m":
            proc = ct.subprocess.Popen([env.austin, "-m", "-x", str(window), "-p", str(target.pid), "-o", out],
                                       stdout=ct.subprocess.DEVNULL, stderr=ct.subprocess.DEVNULL)
            while proc.poll() is None:
                if first is None and os.path.exists(out):
                    with open(out, errors="replace") as handle:
                        if any(line.startswith("P") for line in handle):
                            first = time.time() - started
                time.sleep(0.002)
            if proc.returncode != 0:
                raise RuntimeError("exit %s" % proc.returncode)
        elif tool_name == "memray attach":
            memray = os.path.join(env.bin, "memray")
            result = ct.run_quiet([memray, "attach", "-f", "--duration", str(window), "-o", out, str(target.pid)],
                                  timeout=120)
            if result.returncode != 0:
                raise RuntimeError("memray attach failed: %s" % ct.first_line(result.stdout))
            first = time.time() - started
            # The tracker stops inside the target after the window and says so on its stderr.
            ct.LineReader(target.stderr).wait_for(lambda l: "Deactivating tracking" in l, window + 60)
            result = ct.run_quiet([memray, "transform", "csv", "--leaks", "-f", "-o", out + ".csv", out], timeout=120)
            if result.returncode != 0:
                raise RuntimeError("memray transform failed: %s" % ct.first_line(result.stdout))
        answer = time.time() - started
        return first, answer
    finally:
        target.kill()
        target.wait()
        target.stderr.close()
        for suffix in ("", ".json", ".csv"):
            if os.path.exists(out + suffix):
                os.unlink(out + suffix)


def compare_first(env, args, workdir):
    tools = ["pymemtrace attach", "pymemtrace tracemalloc", "memray attach"] + (["austin -m"] if env.austin else [])
    window = 1
    results = {tool: [] for tool in tools}
    failures = {}
    for round_index in range(args.rounds):
        for tool in rotate(tools, round_index):
            try:
                first, answer = first_answer_run(env, workdir, tool, window)
                results[tool].append((first, answer))
                log("first round %d %s: first data %.3f s, report %.3f s" % (round_index + 1, tool, first, answer))
            except Exception as error:
                failures.setdefault(tool, []).append(str(error))
                log("first round %d %s FAILED: %s" % (round_index + 1, tool, error))
    return {"results": results, "failures": failures, "tools": tools, "window": window}


FIRST_COMMANDS = {
    "pymemtrace attach": "pymemtrace attach --pid PID --duration 1 -o x.json",
    "pymemtrace tracemalloc": "pymemtrace tracemalloc --pid PID --duration 1 --json x.json",
    "memray attach": "memray attach --duration 1 -o x.bin PID, then memray transform csv --leaks x.bin",
    "austin -m": "austin -m -x 1 -p PID -o x.austin",
}

FIRST_DATA = {
    "pymemtrace attach": "its `sampling PID ...` line (the interpreter is found; the sampling loop starts)",
    "pymemtrace tracemalloc": "its `first snapshot taken` line",
    "memray attach": "`memray attach` returns (gdb has loaded the tracker, which is recording)",
    "austin -m": "the first sample line in its output file",
}


def first_section(env, args, data, header):
    lines = [
        "## Time to the first answer",
        "",
        header,
        "",
        "Against `fixtures/leaky_service.py` (running for 1 s before each command, a fresh one per run):"
        " seconds from the command's start to its first data, and to a report a person can read with a"
        " %d s observation window (the window is included: subtract it for the tool's own delay)."
        " Medians of %d rounds." % (data["window"], args.rounds),
        "",
        "| tool | command | first data (s) | report (s) | first data is when |",
        "|---|---|---|---|---|",
    ]
    for tool in data["tools"]:
        runs = data["results"][tool]
        failed = data["failures"].get(tool, [])
        if not runs:
            lines.append("| %s | `%s` | failed: %s | | |" % (tool, FIRST_COMMANDS[tool], clean(failed[0]) if failed else "no run"))
            continue
        lines.append("| %s | `%s` | %s | %.3f | %s |" % (
            tool, FIRST_COMMANDS[tool], fmt(median([r[0] for r in runs]), "%.3f"),
            median([r[1] for r in runs]), FIRST_DATA[tool]))
    ranked = sorted((median([r[0] for r in data["results"][t]]), t) for t in data["tools"] if data["results"][t])
    lines += ["", "Per round (first data / report, s): " + "; ".join(
        "%s %s" % (t, ", ".join("%.3f/%.3f" % r for r in data["results"][t])) for t in data["tools"] if data["results"][t]) + "."]
    if ranked:
        ours = dict((t, v) for v, t in ranked).get("pymemtrace attach")
        if ranked[0][1] != "pymemtrace attach" and ours is not None:
            lines += ["", "pymemtrace attach is NOT the first to data here: %s gets there in %.3f s, pymemtrace attach in %.3f s."
                      % (ranked[0][1], ranked[0][0], ours)]
        else:
            lines += ["", "First to data: %s (%.3f s)." % (ranked[0][1], ranked[0][0])]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 4. Throughput


def compare_throughput(env, args, workdir):
    seconds = 2.0 if args.quick else 3.0
    results = {"pymemtrace attach --rate 1000000": [], "py-spy library alone": [], "py-spy record --rate 100000": []}
    failures = {}
    for round_index in range(args.rounds):
        target = ct.subprocess.Popen([env.python, os.path.join(ct.ROOT, "fixtures", "cpu_only.py"), "--work", "100000"],
                                     stdout=ct.subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            for label in rotate(list(results), round_index):
                try:
                    if label.startswith("pymemtrace"):
                        out = os.path.join(workdir, "tp.json")
                        ct.subprocess.check_call([ct.TOOL, "attach", "--pid", str(target.pid), "--no-progress", "--rate",
                                                  "1000000", "--duration", str(seconds), "-o", out],
                                                 stdout=ct.subprocess.DEVNULL, stderr=ct.subprocess.DEVNULL)
                        with open(out) as handle:
                            data = json.load(handle)
                        os.unlink(out)
                        value = data["samples"] / data["duration_seconds"]
                    elif label == "py-spy library alone":
                        value = float(ct.subprocess.check_output([env.pyspy_alone, str(target.pid), str(seconds)]).split()[0])
                    else:
                        tool = ct.PySpy(env, workdir, 100000)
                        tool.start(target.pid)
                        began = time.time()
                        time.sleep(seconds)
                        wall = time.time() - began
                        tool.stop()  # Ctrl-C
                        # Samples over the time from its first message to Ctrl-C (its start-up
                        # excluded, its last partial interval included).
                        value = tool.info["samples"] / wall
                    results[label].append(value)
                    log("throughput round %d %s: %.0f/s" % (round_index + 1, label, value))
                except Exception as error:
                    failures.setdefault(label, []).append(str(error))
                    log("throughput round %d %s FAILED: %s" % (round_index + 1, label, error))
        finally:
            target.kill()
            target.wait()
    return {"results": results, "failures": failures, "seconds": seconds}


def throughput_section(env, args, data, header):
    res = data["results"]
    ours = median(res["pymemtrace attach --rate 1000000"])
    alone = median(res["py-spy library alone"])
    cli = median(res["py-spy record --rate 100000"])
    lines = [
        "## Throughput: stack reads per second",
        "",
        header,
        "",
        "On `fixtures/cpu_only.py` (5 Python frames, one thread), %.1f s each, medians of %d rounds:"
        " `pymemtrace attach --rate 1000000` (as fast as reads go: `--rate` takes no `max`; a read"
        " every loop turn, with its RSS and per-thread page-fault polls in between) against py-spy's"
        " library alone calling `get_stack_traces()` in a loop (`benches/pyspy_alone.rs`, the same"
        " crate version pymemtrace links), and, for context, the py-spy command at `--rate 100000`"
        " (its own sampling loop and output; stopped with Ctrl-C after the same time: its `-d`"
        " stops after duration x rate samples however long they take)." % (data["seconds"], args.rounds),
        "",
        "| reader | stack reads/s | ratio to py-spy's library |",
        "|---|---|---|",
    ]
    for label, value in (("pymemtrace attach --rate 1000000", ours), ("py-spy library alone", alone),
                         ("py-spy record --nonblocking --rate 100000", cli)):
        lines.append("| %s | %s | %s |" % (label, fmt(value, "%.0f"), fmt(value / alone if value and alone else None, "%.2f")))
    lines += ["", "Per round: " + "; ".join("%s %s" % (label, ", ".join("%.0f" % v for v in values))
                                             for label, values in res.items()) + "."]
    for label, errors in data["failures"].items():
        lines.append("%s failed in %d rounds: %s" % (label, len(errors), clean(errors[0])))
    if ours and alone:
        if ours < 0.95 * alone:
            lines += ["", "pymemtrace attach reads %.0f%% as many stacks per second as py-spy's library alone: each of its"
                      " loop turns also reads RSS and every thread's page-fault counter." % (100 * ours / alone)]
        else:
            lines += ["", "pymemtrace attach reads as fast as py-spy's library alone (ratio %.2f)." % (ours / alone)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 5. The tool's own memory


def compare_memory(env, args, workdir):
    ticks = 360000 if args.quick else 3600000
    bench = {}
    for workload in ("service", "distinct"):
        out = ct.subprocess.check_output([env.aggregator, workload, str(ticks)]).decode()
        bench[workload] = json.loads(out.strip().splitlines()[-1])
        log("memory", workload, bench[workload])
    # A real attach run too: the whole binary, reading as fast as it can on a target whose stacks vary.
    seconds = 10 if args.quick else 30
    target = ct.subprocess.Popen([env.python, os.path.join(ct.ROOT, "fixtures", "leaky_service.py"),
                                  "--seconds", str(seconds + 30)], stdout=ct.subprocess.DEVNULL)
    out = os.path.join(workdir, "mem.json")
    try:
        time.sleep(0.5)
        tool = ct.subprocess.Popen([ct.TOOL, "attach", "--pid", str(target.pid), "--no-progress", "--rate", "1000000",
                                    "--duration", str(seconds), "-o", out],
                                   stdout=ct.subprocess.DEVNULL, stderr=ct.subprocess.DEVNULL)
        peaks = []
        started = time.time()
        while tool.poll() is None:
            peak = ct.peak_rss_kib(tool.pid)
            if peak:
                peaks.append((time.time() - started, peak))
            time.sleep(0.25)
        with open(out) as handle:
            data = json.load(handle)
        os.unlink(out)
        attach = {"seconds": data["duration_seconds"], "samples": data["samples"], "stacks": len(data.get("stacks", [])),
                  "peaks": peaks}
    finally:
        target.kill()
        target.wait()
    return {"bench": bench, "attach": attach, "ticks": ticks}


def memory_section(env, args, data, header):
    lines = [
        "## The tool's own memory",
        "",
        header,
        "",
        "`benches/aggregator_memory.rs` feeds the attribution model %s ticks (3.6M in a full run: an"
        " hour of stack reads at 1 kHz), each one stack read of every thread as the attach loop makes"
        " it: each frame arrives as fresh strings and is interned, the stack is interned, the"
        " chargeable thread is picked, and one tick in four charges an RSS change; then the report's"
        " figures (per-function summary, collapsed stacks) are computed. It prints its own peak RSS"
        " (VmHWM, the whole process). Two workloads, one process each:" % format(data["ticks"], ","),
        "",
        "| workload | ticks | distinct stacks | RSS before (MiB) | peak after the ticks (MiB) | peak after the report (MiB) | time per tick (us) |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"service": "service: 4 threads, 25 frames, ~3,200 distinct stacks",
             "distinct": "distinct: the same, plus 100,000 distinct stacks on one thread"}
    for workload in ("service", "distinct"):
        b = data["bench"][workload]
        lines.append("| %s | %s | %s | %.1f | %.1f | %.1f | %.2f |" % (
            names[workload], format(b["ticks"], ","), format(b["stacks"], ","), b["rss_before_kib"] / 1024.0,
            b["peak_after_feed_kib"] / 1024.0, b["peak_after_report_kib"] / 1024.0, b["ns_per_tick"] / 1000.0))
    service, distinct = data["bench"]["service"], data["bench"]["distinct"]
    per_stack = (distinct["peak_after_feed_kib"] - service["peak_after_feed_kib"]) * 1024.0 / max(
        1, distinct["stacks"] - service["stacks"])
    attach = data["attach"]
    final_peak = attach["peaks"][-1][1] if attach["peaks"] else None
    early = [p for t, p in attach["peaks"] if t >= 2.0]
    lines += [
        "",
        "The model's memory grows with distinct stacks, not with ticks: about %.0f bytes per distinct"
        " stack (the difference of the two rows; each of those stacks also brings a new leaf frame),"
        " and nothing per tick once the stacks are known."
        " This is a single-run figure per workload (a peak RSS is deterministic here: the ticks are)."
        % per_stack,
        "",
        "The whole binary, for comparison: `pymemtrace attach --rate 1000000 --duration %d` on"
        " `fixtures/leaky_service.py` took %s stack reads (%s charged stacks in its JSON) and its peak"
        " RSS (VmHWM from /proc, polled every 0.25 s) was %s MiB at the end%s."
        % (int(round(attach["seconds"])), format(attach["samples"], ","), format(attach["stacks"], ","),
           fmt(final_peak / 1024.0 if final_peak else None, "%.1f"),
           ", %.1f MiB after 2 s" % (early[0] / 1024.0) if early else ""),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def header_line(env, args, what):
    command = "python3 benches/compare.py" + (" --quick" if args.quick else "") + " --rounds %d" % args.rounds
    if args.only:
        command += " --only " + what
    versions = ", ".join("%s" % env.versions[k] for k in ("pymemtrace", "py-spy", "austin", "memray", "gdb") if k in env.versions)
    text = ("Produced by `%s` on %s (%s, %d cores, %s), Python %s as the target (`%s`). Tools: %s."
            % (command, time.strftime("%Y-%m-%d"), platform.machine(), os.cpu_count(), platform.platform(),
               env.versions["python"], env.python.replace(os.path.expanduser("~"), "~"), versions))
    if args.quick:
        text += " **Quick mode** (%d rounds, smaller fixtures): a check of the harness, not figures to quote." % args.rounds
    if env.notes:
        text += " Setup: " + "; ".join(env.notes) + "."
    return text


SECTIONS = [
    ("truth", "compare-truth", compare_truth, truth_section),
    ("cost", "compare-cost", compare_cost, cost_section),
    ("first", "compare-first-answer", compare_first, first_section),
    ("throughput", "compare-throughput", compare_throughput, throughput_section),
    ("memory", "compare-memory", compare_memory, memory_section),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--only", default="", help="comma-separated: truth,cost,first,throughput,memory")
    parser.add_argument("--python", default=DEFAULT_PYTHON if os.path.exists(DEFAULT_PYTHON) else sys.executable)
    parser.add_argument("--out", default=os.path.join(ct.ROOT, "docs", "benchmarks.md"))
    parser.add_argument("--no-write", action="store_true", help="print the sections instead of writing them")
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 2 if args.quick else 5
    wanted = [w for w in args.only.split(",") if w] or [s[0] for s in SECTIONS]
    began = time.time()
    env = ct.setup(args.python)
    ct.build(env)
    log("versions", env.versions, "notes", env.notes)
    workdir = ct.workdir()
    for key, section, run, write in SECTIONS:
        if key not in wanted:
            continue
        step = time.time()
        data = run(env, args, workdir)
        text = write(env, args, data, header_line(env, args, key))
        text += "\n\nThis comparison took %.0f s of the harness's run." % (time.time() - step)
        if args.no_write:
            print(text + "\n")
        else:
            replace_section(args.out, section, text)
        log("%s done in %.0f s" % (key, time.time() - step))
    shutil.rmtree(workdir, ignore_errors=True)
    log("all done in %.0f s" % (time.time() - began))


if __name__ == "__main__":
    main()
