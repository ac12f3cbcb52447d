"""Each benchmark script owns one section of docs/benchmarks.md, between its own markers."""
import os


def replace_section(path, name, text, first=False):
    """Replaces section `name` of the page with `text`, keeping the others. A new section goes at
    the end, or at the start with `first`."""
    begin, end = "<!-- begin %s -->" % name, "<!-- end %s -->" % name
    old = open(path).read() if os.path.exists(path) else ""
    block = begin + "\n" + text + "\n" + end
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end):]
    elif first:
        new = block + "\n" + old
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as handle:
        handle.write(new)
