# Run by Py_AddPendingCall(PyRun_SimpleString, ...) in the target's main thread, in __main__'s
# namespace: so it binds no name there (the code runs in a fresh dict) and lets no exception out
# (an exception would make the pending call fail and the interpreter raise SystemError).
try:
    exec(compile(r'''
import socket as _s, struct as _st, json as _j
def _run():
    conn = _s.socket(_s.AF_UNIX, _s.SOCK_STREAM)
    conn.settimeout(@TIMEOUT@)
    try:
        try:
            conn.connect(@PATH@ + "/s")
        except BaseException:
            # The tool is gone (it timed out waiting, or was stopped): undo what it may have left.
            exec(compile(@FALLBACK@, "<pymemtrace>", "exec"), {})
            return
        def exact(n):
            data = b""
            while len(data) < n:
                chunk = conn.recv(n - len(data))
                if not chunk:
                    raise EOFError("the tool closed the channel")
                data += chunk
            return data
        size = _st.unpack(">I", exact(4))[0]
        message = _j.loads(exact(size).decode("utf-8"))
        space = {"__name__": "_pymemtrace_helper", "CHANNEL_DIR": @PATH@}
        try:
            exec(compile(message["source"], "<pymemtrace>", "exec"), space)
            reply = {"ok": space["main"](message["request"])}
        except BaseException as error:
            import traceback
            reply = {"error": "%s: %s" % (type(error).__name__, error),
                     "traceback": traceback.format_exc()[-4000:]}
        data = _j.dumps(reply).encode("utf-8")
        conn.sendall(_st.pack(">I", len(data)) + data)
    finally:
        conn.close()
_run()
''', "<pymemtrace>", "exec"), {})
except BaseException:
    pass
