# Run by Py_AddPendingCall(PyRun_SimpleString, ...) in the target's main thread, in __main__'s
# namespace: so it binds no name there (the code runs in a fresh dict) and lets no exception out
# (an exception would make the pending call fail and the interpreter raise SystemError).
# It carries the helper and its request itself, imports only what is built in (_socket, marshal),
# and gives the GIL away twice at most (connect, send): in a target whose other threads hold the
# GIL, each of those waits costs a switch interval or more.
try:
    exec(compile(r'''
import _socket, marshal, sys
def _quickly(call, *args):
    # connect and send give the GIL away; with other threads wanting it, taking it back waits a
    # switch interval (5 ms) per rival. A short interval for just that wait, then the old one.
    if not hasattr(sys, "setswitchinterval"):
        return call(*args)  # Python 2 switches threads by bytecode count: nothing to shorten
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    try:
        return call(*args)
    finally:
        sys.setswitchinterval(interval)
def _run():
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    conn.settimeout(@TIMEOUT@)
    try:
        try:
            _quickly(conn.connect, @PATH@ + "/s")
        except BaseException:
            # The tool is gone (it timed out waiting, or was killed): undo what it may have left,
            # and remove its private directory if it could not (files first, then the directory;
            # each fails harmlessly if the tool already did it).
            exec(compile(@FALLBACK@, "<pymemtrace>", "exec"), {})
            import posix
            for name in ("/s", "/helper.py", ""):
                try:
                    (posix.rmdir if not name else posix.unlink)(@PATH@ + name)
                except BaseException:
                    pass
            return
        space = {"__name__": "_pymemtrace_helper", "CHANNEL_DIR": @PATH@}
        try:
            exec(compile(@SOURCE@, "<pymemtrace>", "exec"), space)
            reply = {"ok": space["main"](@REQUEST@)}
        except BaseException as error:
            import traceback
            reply = {"error": "%s: %s" % (type(error).__name__, error),
                     "traceback": traceback.format_exc()[-4000:]}
        data = marshal.dumps(reply, 2)
        n = len(data)
        header = bytes(bytearray([(n >> 24) & 255, (n >> 16) & 255, (n >> 8) & 255, n & 255]))
        _quickly(conn.sendall, header + data)
    finally:
        conn.close()
_run()
''', "<pymemtrace>", "exec"), {})
except BaseException:
    pass
