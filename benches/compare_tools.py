"""Setting up and driving the tools for benches/compare.py: the environment (a virtual environment
with py-spy, austin-dist and memray from PyPI, gdb from Debian), targets started under
benches/compare_run.py, and one small class per tool with the same start / stop shape.
"""
from __future__ import print_function

import glob
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import compare_parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "target", "release", "pymemtrace")
RUNNER = os.path.join(ROOT, "benches", "compare_run.py")
CACHE = os.path.expanduser("~/.cache/pymemtrace-bench")
# Tried newest first; the first whose `austin` binary runs on this machine is used.
AUSTIN_VERSIONS = [None, "3.7.0"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*args):
    print(*args, file=sys.stderr)
    sys.stderr.flush()


def first_line(text):
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def short(message):
    """An error message with each absolute path cut to its last component."""
    message = re.sub(r"(?<![\w.])/(?:[^\s/'`]+/)+([^\s/'`]+)", r"\1", message)
    return message.replace("`", "'")  # it goes inside a Markdown code span


class Env(object):
    """Everything the comparisons need: paths of the tools, their versions, and what failed."""

    def __init__(self):
        self.python = None
        self.bin = None
        self.austin = None
        self.versions = {}
        self.notes = []
        self.pyspy_alone = None
        self.aggregator = None


def run_quiet(command, **kwargs):
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, **kwargs)


def setup(base_python):
    env = Env()
    if not shutil.which("gdb"):
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log("installing gdb (memray attach needs it)")
            run_quiet(["apt-get", "update"])
            run_quiet(["apt-get", "install", "-y", "gdb"])
        if not shutil.which("gdb"):
            env.notes.append("gdb is missing and could not be installed: memray attach cannot work")
    version = subprocess.check_output(
        [base_python, "-c", "import platform; print(platform.python_version())"], universal_newlines=True
    ).strip()
    venv = os.path.join(CACHE, "venv-" + version)
    if not os.path.exists(os.path.join(venv, "bin", "python")):
        log("creating", venv)
        subprocess.check_call([base_python, "-m", "venv", venv])
    env.bin = os.path.join(venv, "bin")
    env.python = os.path.join(env.bin, "python")
    pip = [env.python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    result = run_quiet(pip + ["py-spy", "memray"])
    if result.returncode != 0:
        raise SystemExit("pip install py-spy memray failed:\n" + result.stdout)
    env.austin = find_austin(env, pip)
    env.versions["python"] = version
    env.versions["py-spy"] = first_line(run_quiet([os.path.join(env.bin, "py-spy"), "--version"]).stdout)
    env.versions["memray"] = "memray " + first_line(run_quiet([os.path.join(env.bin, "memray"), "--version"]).stdout)
    env.versions["gdb"] = first_line(run_quiet(["gdb", "--version"]).stdout) if shutil.which("gdb") else "none"
    return env


def find_austin(env, pip):
    """Installs austin-dist, newest first, each version in its own directory, and keeps the first
    whose binary runs here. A version that fails is recorded with its error."""
    for version in AUSTIN_VERSIONS:
        label = version or "latest"
        spec = "austin-dist" + ("==" + version if version else "")
        where = os.path.join(CACHE, "austin-" + label)
        if version is None and os.path.exists(where):
            # Refresh "latest" at most once a day, so a new release is tried soon after it ships.
            if time.time() - os.path.getmtime(where) > 86400:
                shutil.rmtree(where)
        if not os.path.exists(where):
            result = run_quiet(pip + ["--target", where, spec])
            if result.returncode != 0:
                env.notes.append("austin-dist %s: pip install failed: %s" % (label, first_line(result.stdout)))
                continue
        binaries = glob.glob(os.path.join(where, "bin", "austin"))
        if not binaries:
            env.notes.append("austin-dist %s: no `austin` binary in the wheel" % label)
            continue
        installed = "?"
        for meta in glob.glob(os.path.join(where, "austin_dist-*.dist-info")):
            installed = os.path.basename(meta)[len("austin_dist-"):-len(".dist-info")]
        result = run_quiet([binaries[0], "--version"])
        if result.returncode != 0:
            env.notes.append(
                "austin-dist %s (the newest on PyPI) does not run here: `austin --version` says `%s`"
                % (installed, short(first_line(result.stdout))) if version is None else
                "austin-dist %s does not run here: %s" % (installed, short(first_line(result.stdout)))
            )
            continue
        env.versions["austin"] = "%s (austin-dist %s)" % (first_line(result.stdout), installed)
        return binaries[0]
    env.notes.append("no austin-dist version runs here: Austin is left out")
    return None


def cargo_executable(bench):
    out = subprocess.check_output(
        ["cargo", "bench", "--bench", bench, "--no-run", "--message-format=json", "--quiet"], cwd=ROOT
    ).decode()
    for line in out.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message.get("target", {}).get("name") == bench:
            if message.get("executable"):
                return message["executable"]
    raise SystemExit("could not find the %s benchmark binary" % bench)


def build(env):
    subprocess.check_call(["cargo", "build", "--release", "--quiet"], cwd=ROOT)
    env.pyspy_alone = cargo_executable("pyspy_alone")
    env.aggregator = cargo_executable("aggregator_memory")
    env.versions["pymemtrace"] = first_line(run_quiet([TOOL, "--version"]).stdout)
    commit = run_quiet(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
    dirty = run_quiet(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    env.versions["pymemtrace"] += " (commit %s%s)" % (commit, ", work tree with changes" if dirty else "")


class LineReader(object):
    """Reads lines from a pipe with a timeout."""

    def __init__(self, stream):
        self.fd = stream.fileno()
        self.buffer = b""
        self.closed = False

    def readline(self, timeout):
        deadline = time.time() + timeout
        while b"\n" not in self.buffer:
            if self.closed:
                break
            left = deadline - time.time()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    self.closed = True
                self.buffer += chunk
        if b"\n" not in self.buffer:
            line, self.buffer = self.buffer, b""
            return line.decode(errors="replace") if line else None
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode(errors="replace")

    def wait_for(self, predicate, timeout):
        deadline = time.time() + timeout
        seen = []
        while True:
            line = self.readline(max(0.0, deadline - time.time()))
            if line is None:
                raise RuntimeError("timed out or ended waiting; saw: %s" % " | ".join(seen[-5:]))
            seen.append(line)
            if predicate(line):
                return line


def cpu_seconds(pid):
    """CPU time of a process, all its threads: the sum of /proc/PID/task/*/schedstat (nanoseconds;
    /proc/PID/stat's utime + stime count 10 ms ticks, too coarse for a 1% tool over 2 s), or
    utime + stime from /proc/PID/stat where schedstat is missing."""
    total, found = 0, False
    for path in glob.glob("/proc/%d/task/*/schedstat" % pid):
        try:
            with open(path) as handle:
                total += int(handle.read().split()[0])
                found = True
        except (OSError, IndexError, ValueError):
            pass
    if found:
        return total / 1e9
    try:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / float(CLK_TCK)
    except (OSError, IndexError, ValueError):
        return None


def minor_faults(pid):
    """The process's minor page faults so far (all threads), from /proc/PID/stat."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[7])
    except (OSError, IndexError, ValueError):
        return None


def peak_rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class Target(object):
    """A fixture under benches/compare_run.py: idle (sleeping in 2 ms steps) until `go()`."""

    def __init__(self, env, fixture, args, workdir):
        self.fixture = os.path.join(ROOT, "fixtures", fixture)
        self.gofile = os.path.join(workdir, "go-%d" % time.time_ns())
        self.stderr = open(os.path.join(workdir, "target-stderr-%d" % time.time_ns()), "w+")
        self.proc = subprocess.Popen(
            [env.python, RUNNER, self.gofile, self.fixture] + list(args) + ["--wait"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.stderr,
        )
        self.pid = self.proc.pid
        self.out = LineReader(self.proc.stdout)
        self.out.wait_for(lambda line: line.strip() == "ready", 60)
        self.started = None

    def go(self):
        self.started = time.time()
        open(self.gofile, "w").close()

    def wait_done(self, timeout=300):
        line = self.out.wait_for(lambda l: l.startswith("done") or l.startswith("elapsed"), timeout)
        wall = time.time() - self.started
        elapsed = float(line.split("elapsed")[1].split()[0]) if "elapsed" in line else wall
        return elapsed, wall

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()
        for path in (self.gofile, self.stderr.name):
            if os.path.exists(path):
                os.unlink(path)


def stop_process(proc, timeout=60):
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError("did not stop within %d s of SIGINT" % timeout)


class Tool(object):
    """One way of watching a target. `start(pid)` returns once the tool observes; `stop()` ends it
    and returns {(file, function): net bytes} when `parse` is set, else None. `pid` is the tool's
    own process while it runs (None for a tool that lives inside the target)."""

    label = ""
    pid = None

    def __init__(self, env, workdir):
        self.env = env
        self.workdir = workdir
        self.proc = None
        self.info = {}

    def path(self, suffix):
        return os.path.join(self.workdir, "%s-%d%s" % (type(self).__name__, time.time_ns(), suffix))

    def abort(self):
        """Ends the tool's process if a failed run left it behind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cleanup(self, *paths):
        for path in paths:
            if path and os.path.exists(path):
                os.unlink(path)


class PymemtraceAttach(Tool):
    def __init__(self, env, workdir, args=(), label="pymemtrace attach"):
        Tool.__init__(self, env, workdir)
        self.args = list(args)
        self.label = label

    def command(self, pid, out):
        return [TOOL, "attach", "--pid", str(pid), "--no-progress", "-o", out] + self.args

    def start(self, pid):
        self.out = self.path(".json")
        self.proc = subprocess.Popen(self.command(pid, self.out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.pid = self.proc.pid
        self.err = LineReader(self.proc.stderr)
        self.err.wait_for(lambda line: line.startswith("pymemtrace: sampling"), 30)

    def stop(self, parse=True):
        stop_process(self.proc)
        self.proc.stderr.close()
        if self.proc.returncode != 0:
            raise RuntimeError("pymemtrace attach exited %s" % self.proc.returncode)
        with open(self.out) as handle:
            data = json.load(handle)
        self.info = {"samples": data["samples"], "seconds": data["duration_seconds"],
                     "late_fraction": data.get("late_fraction"),
                     "reads_while_moving": data.get("stack_reads_per_second_while_moving")}
        result = compare_parse.pymemtrace_attach(self.out) if parse else None
        self.cleanup(self.out)
        return result


class PySpy(Tool):
    def __init__(self, env, workdir, rate):
        Tool.__init__(self, env, workdir)
        self.rate = rate
        self.label = "py-spy record --nonblocking --rate %d" % rate

    def start(self, pid):
        self.out = self.path(".txt")
        self.proc = subprocess.Popen(
            [os.path.join(self.env.bin, "py-spy"), "record", "--pid", str(pid), "--nonblocking",
             "--rate", str(self.rate), "-f", "raw", "-o", self.out],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,  # its messages go to stdout when it is a pipe
        )
        self.pid = self.proc.pid
        self.err = LineReader(self.proc.stdout)
        self.err.wait_for(lambda line: "Sampling process" in line, 30)

    def stop(self, parse=False):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        rest = []
        while True:
            line = self.err.readline(60)
            if line is None:
                break
            rest.append(line)
        self.proc.wait(30)
        self.proc.stdout.close()
        for line in rest:
            if "Samples:" in line:
                self.info["samples"] = int(line.split("Samples:")[1].split()[0])
        self.cleanup(self.out)
        return None


class Austin(Tool):
    def __init__(self, env, workdir, interval_us=None):
        Tool.__init__(self, env, workdir)
        self.interval = interval_us
        self.label = "austin -m" + (" -i %dus" % interval_us if interval_us else "")

    def start(self, pid):
        self.out = self.path(".austin")
        self.errfile = self.path(".err")
        command = [self.env.austin, "-m", "-p", str(pid), "-o", self.out]
        if self.interval:
            command[2:2] = ["-i", "%dus" % self.interval]
        self.err = open(self.errfile, "w")
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.err)
        self.pid = self.proc.pid
        # Austin prints the target's Python version on stderr once it has attached (its output
        # file is buffered: nothing shows there until samples fill the buffer).
        deadline = time.time() + 30
        while time.time() < deadline:
            if "version" in open(self.errfile, errors="replace").read():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.002)
        raise RuntimeError("austin did not start: %s" % first_line(open(self.errfile, errors="replace").read()))

    def stop(self, parse=True):
        stop_process(self.proc)
        self.err.close()
        result = compare_parse.austin(self.out) if parse else None
        self.cleanup(self.out, self.errfile)
        return result


class Memray(Tool):
    """memray attach: gdb loads memray into the target, whose tracker then runs inside the target
    and writes every allocation to a file; `memray detach` ends it."""

    label = "memray attach"

    def start(self, pid):
        self.target = pid
        self.out = self.path(".bin")
        result = run_quiet([os.path.join(self.env.bin, "memray"), "attach", "-f", "-o", self.out, str(pid)], timeout=120)
        if result.returncode != 0:
            raise RuntimeError("memray attach failed: %s" % first_line(result.stdout))

    def stop(self, parse=True):
        result = run_quiet([os.path.join(self.env.bin, "memray"), "detach", str(self.target)], timeout=120)
        if result.returncode != 0:
            self.cleanup(self.out)
            raise RuntimeError("memray detach failed: %s" % first_line(result.stdout))
        net = None
        if parse:
            leaks = self.path(".csv")
            result = run_quiet([os.path.join(self.env.bin, "memray"), "transform", "csv", "--leaks", "-f",
                                "-o", leaks, self.out], timeout=300)
            if result.returncode != 0:
                self.cleanup(self.out)
                raise RuntimeError("memray transform failed: %s" % first_line(result.stdout))
            net = compare_parse.memray_leaks_csv(leaks)
            self.cleanup(leaks)
        self.cleanup(self.out)
        return net


class Tracemalloc(Tool):
    label = "pymemtrace tracemalloc"

    def start(self, pid):
        self.out = self.path(".json")
        self.proc = subprocess.Popen(
            [TOOL, "tracemalloc", "--pid", str(pid), "--top", "100000", "--json", self.out],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.pid = self.proc.pid
        self.err = LineReader(self.proc.stderr)
        self.err.wait_for(lambda line: "first snapshot taken" in line, 60)

    def stop(self, parse=True):
        stop_process(self.proc, 120)
        self.proc.stderr.close()
        if self.proc.returncode != 0:
            raise RuntimeError("pymemtrace tracemalloc exited %s" % self.proc.returncode)
        result = compare_parse.pymemtrace_tracemalloc(self.out) if parse else None
        self.cleanup(self.out)
        return result


def workdir():
    return tempfile.mkdtemp(prefix="pymemtrace-compare-")
