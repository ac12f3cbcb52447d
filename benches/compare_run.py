"""Runs a fixture for benches/compare.py, with its `--wait` served by polling a file instead of
blocking on stdin.

Usage: python compare_run.py GOFILE FIXTURE.py ARGS...

The fixtures' `--wait` prints "ready" and blocks in `sys.stdin.readline()`. A main thread blocked
in read() never runs Python code, so a tool that gets in through the interpreter (memray attach's
gdb breakpoints on malloc/PyErr_CheckSignals) would wait there until the work had started. Here
`sys.stdin.readline()` sleeps in 2 ms steps until GOFILE exists, so every tool attaches to the same
kind of idle target, and the fixture's work starts when the harness creates GOFILE. After the
fixture's main returns, its module globals stay referenced, so what it retained stays retained.
Runs on Python 3.
"""
import os
import runpy
import sys
import time


class PollingStdin(object):
    def __init__(self, path):
        self.path = path

    def readline(self):
        while not os.path.exists(self.path):
            time.sleep(0.002)
        return "go\n"


def main():
    gofile, fixture = sys.argv[1], sys.argv[2]
    sys.argv = [fixture] + sys.argv[3:]
    sys.stdin = PollingStdin(gofile)
    kept = runpy.run_path(fixture, run_name="__main__")
    print("exited", len(kept))
    sys.stdout.flush()
    while True:
        time.sleep(0.05)


if __name__ == "__main__":
    main()
