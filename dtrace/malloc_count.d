#!/usr/sbin/dtrace -s
/*
 * malloc_count.d: calls and bytes of the C allocator in one process, per second and in total.
 *
 * Shows: as probes/malloc_count.bt: calls and requested bytes of malloc, calloc, realloc, free,
 * posix_memalign, memalign, valloc, and anonymous mmap/munmap; log2 histograms; -D per_thread.
 *
 * UNVERIFIED: written for DTrace (macOS, FreeBSD, illumos, Oracle Linux) but never run: no DTrace
 * exists on the machines pymemtrace is tested on. Its bpftrace twin (probes/malloc_count.bt) is tested.
 *
 * By hand (pymemtrace fills in the placeholders; `pymemtrace dtrace --backend dtrace
 * --print-script` shows them):
 *   sed -e 's|@PID@|1234|g' -e 's|@per_thread@|0|g' malloc_count.d > /tmp/m.d
 *   sudo dtrace -q -p 1234 -s /tmp/m.d
 *
 * Placeholders: @PID@ the target's pid.
 * Option: per_thread=0   1 keeps calls and bytes per thread id (@thread_calls, @thread_bytes).
 *
 * Output: the same shape as probes/malloc_count.bt: "PMT second N" with @s_calls/@s_bytes, "PMT end NSECS" with @calls,
 * @bytes, @sizes (quantize) and the per-thread maps; keys are function names followed by "()".
 *
 * Example: none captured (see UNVERIFIED above); the bpftrace twin's header has a real one.
 */

#pragma D option quiet
#pragma D option dynvarsize=32m

BEGIN
{
	printf("PMT start malloc_count pid @PID@\n");
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

pid@PID@::malloc:entry
{
	@calls["malloc()"] = count();
	@bytes["malloc()"] = sum(arg0);
	@sizes["malloc()"] = quantize(arg0);
	@s_calls["malloc()"] = count();
	@s_bytes["malloc()"] = sum(arg0);
}

pid@PID@::malloc:entry
/@per_thread@/
{
	@thread_calls[tid] = count();
	@thread_bytes[tid] = sum(arg0);
}

pid@PID@::calloc:entry
{
	@calls["calloc()"] = count();
	@bytes["calloc()"] = sum(arg0 * arg1);
	@sizes["calloc()"] = quantize(arg0 * arg1);
	@s_calls["calloc()"] = count();
	@s_bytes["calloc()"] = sum(arg0 * arg1);
}

pid@PID@::calloc:entry
/@per_thread@/
{
	@thread_calls[tid] = count();
	@thread_bytes[tid] = sum(arg0 * arg1);
}

pid@PID@::realloc:entry
{
	@calls["realloc()"] = count();
	@bytes["realloc()"] = sum(arg1);
	@sizes["realloc()"] = quantize(arg1);
	@s_calls["realloc()"] = count();
	@s_bytes["realloc()"] = sum(arg1);
}

pid@PID@::realloc:entry
/@per_thread@/
{
	@thread_calls[tid] = count();
	@thread_bytes[tid] = sum(arg1);
}

pid@PID@::posix_memalign:entry
{
	@calls["posix_memalign()"] = count();
	@bytes["posix_memalign()"] = sum(arg2);
	@sizes["posix_memalign()"] = quantize(arg2);
	@s_calls["posix_memalign()"] = count();
	@s_bytes["posix_memalign()"] = sum(arg2);
}

pid@PID@::posix_memalign:entry
/@per_thread@/
{
	@thread_calls[tid] = count();
	@thread_bytes[tid] = sum(arg2);
}

pid@PID@::memalign:entry
{
	@calls["memalign()"] = count();
	@bytes["memalign()"] = sum(arg1);
	@sizes["memalign()"] = quantize(arg1);
	@s_calls["memalign()"] = count();
	@s_bytes["memalign()"] = sum(arg1);
}

pid@PID@::memalign:entry
/@per_thread@/
{
	@thread_calls[tid] = count();
	@thread_bytes[tid] = sum(arg1);
}

pid@PID@::valloc:entry
{
	@calls["valloc()"] = count();
	@bytes["valloc()"] = sum(arg0);
	@sizes["valloc()"] = quantize(arg0);
	@s_calls["valloc()"] = count();
	@s_bytes["valloc()"] = sum(arg0);
}

pid@PID@::valloc:entry
/@per_thread@/
{
	@thread_calls[tid] = count();
	@thread_bytes[tid] = sum(arg0);
}

pid@PID@::free:entry
/arg0 != 0/
{
	@calls["free()"] = count();
	@s_calls["free()"] = count();
}

pid@PID@::free:entry
/arg0 != 0 && @per_thread@/
{
	@thread_calls[tid] = count();
}

/* MAP_ANON is 0x20 on Linux, 0x1000 on macOS and the BSDs: both are tested. */
pid@PID@::mmap:entry
/(arg3 & 0x1000) || (arg3 & 0x20)/
{
	@calls["mmap()"] = count(); @bytes["mmap()"] = sum(arg1); @sizes["mmap()"] = quantize(arg1);
	@s_calls["mmap()"] = count(); @s_bytes["mmap()"] = sum(arg1);
}

pid@PID@::munmap:entry
{
	@calls["munmap()"] = count(); @bytes["munmap()"] = sum(arg1);
	@s_calls["munmap()"] = count(); @s_bytes["munmap()"] = sum(arg1);
}

END
{
	printf("PMT end %d\n", timestamp);
	printa("@calls[%s]: %@d\n", @calls);
	printa("@bytes[%s]: %@d\n", @bytes);
	printa("@sizes[%s]: \n%@d\n", @sizes);
	printa("@thread_calls[%d]: %@d\n", @thread_calls);
	printa("@thread_bytes[%d]: %@d\n", @thread_bytes);
}
