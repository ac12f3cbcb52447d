# The smallest helper: proves the injection round trip and says where it ran.
import os
import sys
import threading


def main(request):
    return {
        "pid": os.getpid(),
        "version": sys.version.split()[0],
        "thread": threading.current_thread().name,
        "echo": request.get("echo"),
    }
