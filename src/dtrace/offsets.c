/*
 * Prints the structure offsets that the Python-frame probes (probes/py_*.bt) need, for the CPython
 * whose headers it is compiled against. src/dtrace/offsets.rs holds the results per minor version.
 *
 *   d=$(python3.12 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
 *   gcc -w -I$d -I$d/internal src/dtrace/offsets.c -o /tmp/offsets && /tmp/offsets
 *
 * (For 3.8, whose internal headers have no pycore_runtime.h, the same command works.)
 */
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <stdio.h>
#include <frameobject.h>
#if PY_VERSION_HEX >= 0x03090000
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#endif
#include "internal/pycore_pystate.h"
#if PY_VERSION_HEX >= 0x030B0000
#include "internal/pycore_frame.h"
#include "internal/pycore_code.h"
#endif
#if PY_VERSION_HEX >= 0x030C0000
#include "internal/pycore_gil.h"
#endif
#define P(name, expr) printf("%-28s %zu\n", name, (size_t)(expr))
int main(void) {
    printf("version %s\n", PY_VERSION);
#if PY_VERSION_HEX < 0x030C0000
    P("runtime_tstate_current", offsetof(_PyRuntimeState, gilstate.tstate_current));
#else
    P("runtime_interp_main", offsetof(_PyRuntimeState, interpreters.main));
    P("interp_gil", offsetof(PyInterpreterState, ceval.gil));
    P("gil_last_holder", offsetof(struct _gil_runtime_state, last_holder));
    P("gil_locked", offsetof(struct _gil_runtime_state, locked));
#endif
    P("runtime_interp_main2", offsetof(_PyRuntimeState, interpreters.main));
#if PY_VERSION_HEX >= 0x030B0000
    P("interp_threads_head", offsetof(PyInterpreterState, threads.head));
#else
    P("interp_threads_head", offsetof(PyInterpreterState, tstate_head));
#endif
    P("tstate_next", offsetof(PyThreadState, next));
    P("tstate_interp", offsetof(PyThreadState, interp));
    P("tstate_thread_id", offsetof(PyThreadState, thread_id));
#if PY_VERSION_HEX >= 0x030B0000
    P("tstate_native_thread_id", offsetof(PyThreadState, native_thread_id));
#endif
#if PY_VERSION_HEX < 0x030B0000
    P("tstate_frame", offsetof(PyThreadState, frame));
    P("frame_code", offsetof(PyFrameObject, f_code));
    P("frame_back", offsetof(PyFrameObject, f_back));
#elif PY_VERSION_HEX < 0x030D0000
    P("tstate_cframe", offsetof(PyThreadState, cframe));
    P("cframe_current_frame", offsetof(_PyCFrame, current_frame));
    P("frame_code", offsetof(_PyInterpreterFrame, f_code));
    P("frame_back", offsetof(_PyInterpreterFrame, previous));
    P("frame_owner", offsetof(_PyInterpreterFrame, owner));
#else
    P("tstate_current_frame", offsetof(PyThreadState, current_frame));
    P("frame_code", offsetof(_PyInterpreterFrame, f_executable));
    P("frame_back", offsetof(_PyInterpreterFrame, previous));
    P("frame_owner", offsetof(_PyInterpreterFrame, owner));
#endif
    P("code_name", offsetof(PyCodeObject, co_name));
    P("code_filename", offsetof(PyCodeObject, co_filename));
    P("code_firstlineno", offsetof(PyCodeObject, co_firstlineno));
#if PY_VERSION_HEX >= 0x030B0000
    P("code_qualname", offsetof(PyCodeObject, co_qualname));
#endif
    P("ob_type", offsetof(PyObject, ob_type));
    P("ascii_state", offsetof(PyASCIIObject, state));
    P("ascii_data", sizeof(PyASCIIObject));
    PyASCIIObject o; memset(&o, 0, sizeof o); o.state.ascii = 1; o.state.compact = 1;
    unsigned int s; memcpy(&s, &o.state, 4); printf("%-28s 0x%x\n", "ascii_compact_bits", s);
    return 0;
}
