#!/usr/sbin/dtrace -s
/*
 * pymalloc.d: CPython's object allocator, PyObject_Malloc/Calloc/Realloc/Free, per second and
 * in total.
 *
 * Shows: as probes/pymalloc.bt.
 *
 * UNVERIFIED: written for DTrace (macOS, FreeBSD, illumos, Oracle Linux) but never run: no DTrace
 * exists on the machines pymemtrace is tested on. Its bpftrace twin (probes/pymalloc.bt) is tested.
 *
 * By hand (pymemtrace fills in the placeholders; `pymemtrace dtrace --backend dtrace
 * --print-script` shows them):
 *   sed -e 's|@PID@|1234|g' pymalloc.d > /tmp/p.d && sudo dtrace -q -p 1234 -s /tmp/p.d
 *
 * Placeholders: @PID@ the target's pid.
 *
 * Output: the same shape as probes/pymalloc.bt: "PMT second N" with @s_calls/@s_bytes, "PMT end NSECS" with @calls,
 * @bytes and @sizes, keyed by function name followed by "()".
 *
 * Example: none captured (see UNVERIFIED above); the bpftrace twin's header has a real one.
 */

#pragma D option quiet
#pragma D option dynvarsize=32m

BEGIN
{
	printf("PMT start pymalloc pid @PID@\n");
	seconds = 0;
}

tick-1s
{
	seconds++;
	printf("PMT second %d\n", seconds);
	printa("@s_calls[%s]: %@d\n", @s_calls);
	printa("@s_bytes[%s]: %@d\n", @s_bytes);
	trunc(@s_calls);
	trunc(@s_bytes);
}

pid@PID@::PyObject_Malloc:entry
{
	@calls["PyObject_Malloc()"] = count();
	@bytes["PyObject_Malloc()"] = sum(arg0);
	@sizes["PyObject_Malloc()"] = quantize(arg0);
	@s_calls["PyObject_Malloc()"] = count();
	@s_bytes["PyObject_Malloc()"] = sum(arg0);
}

pid@PID@::PyObject_Calloc:entry
{
	@calls["PyObject_Calloc()"] = count();
	@bytes["PyObject_Calloc()"] = sum(arg0 * arg1);
	@sizes["PyObject_Calloc()"] = quantize(arg0 * arg1);
	@s_calls["PyObject_Calloc()"] = count();
	@s_bytes["PyObject_Calloc()"] = sum(arg0 * arg1);
}

pid@PID@::PyObject_Realloc:entry
{
	@calls["PyObject_Realloc()"] = count();
	@bytes["PyObject_Realloc()"] = sum(arg1);
	@sizes["PyObject_Realloc()"] = quantize(arg1);
	@s_calls["PyObject_Realloc()"] = count();
	@s_bytes["PyObject_Realloc()"] = sum(arg1);
}

pid@PID@::PyObject_Free:entry
/arg0 != 0/
{
	@calls["PyObject_Free()"] = count();
	@s_calls["PyObject_Free()"] = count();
}

END
{
	printf("PMT end %d\n", timestamp);
	printa("@calls[%s]: %@d\n", @calls);
	printa("@bytes[%s]: %@d\n", @bytes);
	printa("@sizes[%s]: \n%@d\n", @sizes);
}
