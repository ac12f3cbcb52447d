# Run by Py_AddPendingCall(PyRun_SimpleString, ...) in the target's main thread, in __main__'s
# namespace: so it binds no name there (the code runs in a fresh dict) and lets no exception out
# (an exception would make the pending call fail and the interpreter raise SystemError).
# It carries the helper and its request itself, imports only what is built in (_socket, marshal),
# registers nothing in sys.modules, and gives the GIL away twice at most (connect, send): in a
# target whose other threads hold the GIL, each of those waits costs a switch interval or more.
try:
    exec(compile(r'''
import _socket, marshal, sys
# Never SIGPIPE: a target that restored SIGPIPE's default action would die of a tool gone mid-send.
_NO_SIGNAL = getattr(_socket, "MSG_NOSIGNAL", 0)
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
            # The tool is gone (it timed out waiting, or was killed): the helper does not run.
            # Remove the tool's private directory if it could not (files first, then the
            # directory; each fails harmlessly if the tool already did it).
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
        # Version 3+ writes a shared object once (tracemalloc's tracebacks and file names).
        data = marshal.dumps(reply, min(marshal.version, 4))
        # A large reply (raw traces) is freed before the send, which waits for the tool to read.
        del reply
        n = len(data)
        header = bytes(bytearray([(n >> 24) & 255, (n >> 16) & 255, (n >> 8) & 255, n & 255]))
        def send():
            if n < 65536:
                conn.sendall(header + data, _NO_SIGNAL)
            else:
                conn.sendall(header, _NO_SIGNAL)
                conn.sendall(data, _NO_SIGNAL)
        sent = False
        try:
            _quickly(send)
            sent = True
        finally:
            # A helper may keep the connection (tracemalloc's watchdog, which puts the target back
            # when the tool goes away); it is told whether its reply reached the tool.
            after = space.get("after_reply")
            if after is not None and after(conn, sent):
                conn = None
    finally:
        if conn is not None:
            conn.close()
_run()
''', "<pymemtrace>", "exec"), {})
except BaseException:
    pass
