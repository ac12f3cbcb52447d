# The two steps of `pymemtrace tracemalloc`, run in the target's main thread. Each is a few C
# calls, however large the heap: "start" starts tracemalloc unless it runs and sends the raw
# traces (tracemalloc._get_traces(), marshalled by the bootstrap); "finish" sends them again and
# puts the target back as it was. Filtering, grouping, comparing and sorting are the tool's work:
# a comparison in here (Snapshot.compare_to) held the main thread for minutes on a large heap.
#
# Between the steps the target keeps only a small state dict on the tracemalloc module and a
# watchdog thread holding the first step's connection to the tool. The tool sends a byte every
# second on it; when the connection ends (the tool finished, failed or was killed) or stays silent
# for the lease (the tool is stopped or hung), the watchdog restores the target by itself: stops
# tracemalloc if this run started it, removes the state, closes the connection and ends.
# Restoring goes through the state's lock and happens once, whoever gets there first (the finish
# step, the watchdog, or a later run finding a killed run's state). Nothing is imported by the
# watchdog thread and nothing is registered in sys.modules, so a run's leftovers cannot break a
# later run's imports.
import gc
import sys
import time
import _socket
import _thread

try:
    import _signal
except ImportError:  # 3.4: the built-in module was still called signal
    import signal as _signal

try:
    import tracemalloc
except ImportError:
    tracemalloc = None

STATE = "_pymemtrace_state"
# The state made by this helper's start step, for after_reply (the bootstrap calls it).
_started = None


def _current():
    return vars(tracemalloc).get(STATE)


def _restore_locked(state):
    if _current() is not state:
        return False
    stopped = state["started_by_us"] and tracemalloc.is_tracing()
    if stopped:
        tracemalloc.stop()
    vars(tracemalloc).pop(STATE, None)
    return stopped


def _restore(state):
    """Puts the target back as `state`'s run found it; once, whoever calls. Wakes its watchdog."""
    with state["lock"]:
        stopped = _restore_locked(state)
    connection = state["connection"]
    if connection is not None:
        try:
            connection.shutdown(_socket.SHUT_RDWR)
        except BaseException:
            pass
    return stopped


def _block_signals():
    # Signals sent to the process are for the program's main thread: none may land here.
    try:
        _signal.pthread_sigmask(_signal.SIG_BLOCK, _signal.valid_signals())
    except BaseException:
        pass


def _watch(state, connection):
    try:
        _block_signals()
        connection.settimeout(state["lease"])
        while connection.recv(64):
            pass
    except BaseException:
        pass  # silent for the whole lease, or the connection failed: the tool is not coming back
    try:
        _restore(state)
        connection.close()
    except BaseException:
        pass
    state["ended"].release()


def after_reply(connection, sent):
    """Called by the bootstrap after the reply: arms the watchdog on the connection (True: it
    keeps the connection), or restores at once if the reply did not reach the tool."""
    state = _started
    if state is None:
        return False
    if sent:
        state["connection"] = connection
        state["ended"].acquire()
        try:
            _thread.start_new_thread(_watch, (state, connection))
            return True
        except BaseException:
            state["ended"].release()
            state["connection"] = None
    _restore(state)
    return False


def _figures():
    return {
        "frames": tracemalloc.get_traceback_limit(),
        "tracemalloc_memory": tracemalloc.get_tracemalloc_memory(),
        "traced": list(tracemalloc.get_traced_memory()),
        "time": time.time(),
    }


def _traces():
    # A million new tuples would start the cyclic garbage collector again and again, and its full
    # collections walk the whole heap: none while they are made (put back as it was).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return tracemalloc._get_traces()
    finally:
        if enabled:
            gc.enable()


def _reply(state, figures, traces):
    reply = dict(figures)
    reply.update({
        "started_by_us": state["started_by_us"],
        "version": list(sys.version_info[:2]),
        # Traces whose newest frame is in these files are the measurement's own, not the program's.
        "own_files": [tracemalloc.__file__, "<pymemtrace>"],
        "traces": traces,
    })
    return reply


def main(request):
    global _started
    if tracemalloc is None or not hasattr(tracemalloc, "_get_traces"):
        raise RuntimeError("this Python has no tracemalloc (it came in 3.4)")
    action = request["action"]
    if action == "start":
        left = _current()
        if left is not None:
            # A killed run whose watchdog has not run yet, or a run still going: undo it first,
            # so this run sees the target as it was before any of ours.
            _restore(left)
        started_by_us = not tracemalloc.is_tracing()
        if started_by_us:
            tracemalloc.start(int(request["frames"]))
        figures = _figures()
        state = {
            "run": request["run"],
            "started_by_us": started_by_us,
            "tracemalloc_memory": figures["tracemalloc_memory"],
            "time": figures["time"],
            "lease": float(request["lease"]),
            "lock": _thread.allocate_lock(),
            "ended": _thread.allocate_lock(),
            "connection": None,
        }
        vars(tracemalloc)[STATE] = state
        _started = state
        return _reply(state, figures, _traces())
    if action == "finish":
        state = _current()
        if state is None or state["run"] != request["run"]:
            raise RuntimeError(
                "the first step's state is gone: the tool was silent for longer than its lease, "
                "or another pymemtrace run started on this process since")
        with state["lock"]:
            if not tracemalloc.is_tracing():
                _restore_locked(state)
                raise RuntimeError("tracemalloc was stopped by the program since the first snapshot")
            figures = _figures()
            traces = _traces()
            _restore_locked(state)
        _restore(state)  # wakes the watchdog
        # Wait (bounded) for the watchdog's end, so no thread of ours outlives the reply.
        if state["connection"] is not None and state["ended"].acquire(True, 1.0):
            state["ended"].release()
        figures["seconds"] = figures["time"] - state["time"]
        figures["tracemalloc_memory_before"] = state["tracemalloc_memory"]
        return _reply(state, figures, traces)
    raise ValueError("unknown action %r" % (action,))
