"""Readers for benches/compare.py: each tool's output turned into net bytes per function.

Every reader returns {(file basename, function): net bytes}, with the allocating (innermost) Python
frame as the function; changes with no Python frame go to ("", "<no Python frame>"). A share is a
function's positive net over the sum of all positive nets (`shares`), the definition
`pymemtrace attach` uses for its SHARE column, applied to every tool alike.
"""
import ast
import csv
import json
import os

NO_FRAME = ("", "<no Python frame>")


def shares(net_by_function):
    positive = {key: value for key, value in net_by_function.items() if value > 0}
    total = float(sum(positive.values()))
    if total <= 0:
        return {}, 0
    return {key: value / total for key, value in positive.items()}, total


def pymemtrace_attach(path):
    """`pymemtrace attach -o x.json`: each function's self net (grown minus released)."""
    with open(path) as handle:
        data = json.load(handle)
    result = {}
    for function in data["functions"]:
        key = (os.path.basename(function["file"]), function["function"])
        if not function["file"] and function["function"].startswith("<"):
            key = ("", function["function"])
        result[key] = result.get(key, 0) + function["self"]["net"]
    return result


def austin(path):
    """`austin -m -o FILE`: one line per sample, `P<pid>;T<iid>:<tid>;file:function:line;... DELTA`,
    the process's RSS change in bytes since the previous sample, charged to that thread's stack."""
    result = {}
    with open(path, errors="replace") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if not line.startswith("P"):
                continue
            stack, _, metric = line.rpartition(" ")
            try:
                delta = int(metric)
            except ValueError:
                continue
            frames = [frame for frame in stack.split(";")[2:] if frame]
            key = NO_FRAME
            if frames:
                parts = frames[-1].rsplit(":", 2)
                if len(parts) == 3:
                    key = (os.path.basename(parts[0]), parts[1])
                else:
                    key = ("", frames[-1])
            result[key] = result.get(key, 0) + delta
    return result


def memray_leaks_csv(path):
    """`memray transform csv --leaks`: bytes still allocated when tracking ended, per stack; the
    first frame of `stack_trace` (`function;file;line|...`) is the allocating one."""
    result = {}
    with open(path) as handle:
        for row in csv.DictReader(handle):
            trace = row.get("stack_trace") or ""
            key = NO_FRAME
            if trace:
                function, _, rest = trace.split("|")[0].partition(";")
                key = (os.path.basename(rest.rsplit(";", 1)[0]), function)
            result[key] = result.get(key, 0) + int(row["size"])
    return result


_FUNCTIONS = {}


def function_at(path, line):
    """The innermost function defined around `line` of the Python file `path`, or None."""
    if path not in _FUNCTIONS:
        spans = []
        try:
            with open(path) as handle:
                tree = ast.parse(handle.read())
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    spans.append((node.lineno, getattr(node, "end_lineno", node.lineno), node.name))
        except (OSError, SyntaxError, ValueError):
            pass
        _FUNCTIONS[path] = spans
    inside = [span for span in _FUNCTIONS[path] if span[0] <= line <= span[1]]
    if not inside:
        return None
    return max(inside)[2]


def pymemtrace_tracemalloc(path):
    """`pymemtrace tracemalloc --json`: the change of each line between the two snapshots, each
    line given to the function that contains it (tracemalloc itself names lines, not functions)."""
    with open(path) as handle:
        data = json.load(handle)
    result = {}
    for group in data["top"]:
        frames = group.get("frames") or []
        if not frames:
            key = NO_FRAME
        else:
            filename, line = frames[0][0], int(frames[0][1])
            function = function_at(filename, line) or ("<module>" if filename.endswith(".py") else filename)
            key = (os.path.basename(filename), function)
        result[key] = result.get(key, 0) + int(group["size_diff"])
    return result
