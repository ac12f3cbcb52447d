# Captures sys._debugmallocstats(), which CPython writes to the C-level stderr (fd 2): fd 2 is
# pointed at a private file for the call and put back at once. Whatever another thread writes to
# fd 2 in that window (reported as `window_seconds`) lands in the capture instead of the target's
# stderr.
import os
import sys
import time


def main(request):
    if not hasattr(sys, "_debugmallocstats"):
        raise RuntimeError("this Python has no sys._debugmallocstats() (it came in 3.3)")
    path = os.path.join(CHANNEL_DIR, "capture")  # noqa: F821 (given by the bootstrap)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    capture = os.open(path, flags, 0o600)
    try:
        os.unlink(path)
        try:
            sys.stderr.flush()
        except Exception:
            pass
        saved = os.dup(2)
        started = time.time()
        try:
            os.dup2(capture, 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        window = time.time() - started
        size = os.lseek(capture, 0, os.SEEK_END)
        os.lseek(capture, 0, os.SEEK_SET)
        limit = min(size, 8 << 20)
        chunks = []
        while limit > 0:
            chunk = os.read(capture, min(limit, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            limit -= len(chunk)
    finally:
        os.close(capture)
    return {
        "text": b"".join(chunks).decode("utf-8", "replace"),
        "window_seconds": window,
        "time": time.time(),
    }
