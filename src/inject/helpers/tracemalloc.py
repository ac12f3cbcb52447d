# Two steps of `pymemtrace tracemalloc`: "start" (start tracemalloc unless it runs, take the first
# snapshot and keep it on the tracemalloc module) and "finish" (take the second, compare, restore
# the target as it was: stop tracemalloc if we started it, drop our snapshot). "abort" only
# restores. tracemalloc's own frames and this helper's are filtered out of both snapshots, as the
# original pymemtrace's trace_malloc does.
import sys
import time

try:
    import tracemalloc
except ImportError:
    tracemalloc = None

STATE = "_pymemtrace_state"


def _filtered(snapshot):
    return snapshot.filter_traces((
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<pymemtrace>"),
    ))


def _restore():
    state = getattr(tracemalloc, STATE, None)
    if state is None:
        return False
    delattr(tracemalloc, STATE)
    if state["started_by_us"] and tracemalloc.is_tracing():
        tracemalloc.stop()
    return state["started_by_us"]


def _stat(stat):
    frames = list(stat.traceback)
    if sys.version_info >= (3, 7):
        # Oldest first since 3.7: the reply lists the innermost (allocating) frame first.
        frames.reverse()
    return {
        "frames": [[frame.filename, frame.lineno] for frame in frames],
        "size": stat.size,
        "size_diff": stat.size_diff,
        "count": stat.count,
        "count_diff": stat.count_diff,
    }


def main(request):
    if tracemalloc is None:
        raise RuntimeError("this Python has no tracemalloc (it came in 3.4)")
    action = request["action"]
    if action == "abort":
        return {"stopped": _restore()}
    if action == "start":
        _restore()
        started_by_us = not tracemalloc.is_tracing()
        if started_by_us:
            tracemalloc.start(int(request["frames"]))
        state = {
            "started_by_us": started_by_us,
            "memory": tracemalloc.get_tracemalloc_memory(),
            "time": time.time(),
        }
        state["snapshot"] = _filtered(tracemalloc.take_snapshot())
        setattr(tracemalloc, STATE, state)
        return {
            "started_by_us": started_by_us,
            "frames": tracemalloc.get_traceback_limit(),
            "tracemalloc_memory": state["memory"],
            "traced": list(tracemalloc.get_traced_memory()),
        }
    if action == "finish":
        state = getattr(tracemalloc, STATE, None)
        if state is None:
            raise RuntimeError("no first snapshot: tracemalloc was stopped or the first step was lost")
        if not tracemalloc.is_tracing():
            _restore()
            raise RuntimeError("tracemalloc was stopped by the program since the first snapshot")
        snapshot = _filtered(tracemalloc.take_snapshot())
        memory = tracemalloc.get_tracemalloc_memory()
        traced = list(tracemalloc.get_traced_memory())
        stats = snapshot.compare_to(state["snapshot"], request["granularity"])
        total_diff = sum(s.size_diff for s in stats)
        count_diff = sum(s.count_diff for s in stats)
        total_after = sum(s.size for s in stats)
        top = int(request["top"])
        result = {
            "seconds": time.time() - state["time"],
            "started_by_us": state["started_by_us"],
            "frames": tracemalloc.get_traceback_limit(),
            "tracemalloc_memory_before": state["memory"],
            "tracemalloc_memory_after": memory,
            "traced": traced,
            "total_size_after": total_after,
            "total_size_diff": total_diff,
            "total_count_diff": count_diff,
            "groups": len(stats),
            "top": [_stat(s) for s in stats[:top]],
        }
        del snapshot, stats
        _restore()
        return result
    raise ValueError("unknown action %r" % (action,))
