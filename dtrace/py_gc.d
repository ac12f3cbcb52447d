#!/usr/sbin/dtrace -s
/*
 * py_gc.d: each garbage collection of the cyclic collector: generation, duration, objects
 * collected.
 *
 * Shows: as probes/py_gc.bt, with python$target:::gc-start/gc-done where the build has them,
 * else pid$target::gc_collect_main:entry/return.
 *
 * UNVERIFIED: written for DTrace (macOS, FreeBSD, illumos, Oracle Linux) but never run: no DTrace
 * exists on the machines pymemtrace is tested on. Its bpftrace twin (probes/py_gc.bt) is tested.
 *
 * By hand (pymemtrace fills in the placeholders; `pymemtrace dtrace --backend dtrace
 * --print-script` shows them):
 *   pymemtrace dtrace --backend dtrace --pid 1234 --script py_gc --print-script > /tmp/g.d
 *   sudo dtrace -q -p 1234 -s /tmp/g.d
 *
 * Placeholders: @PID@ the target's pid; @GC_START@ and @GC_DONE@ the probes
 * (python1234:::gc-start or pid1234::gc_collect_main:entry, and their ends); @GC_GENERATION@
 * (arg0 or arg1) and @GC_COLLECTED@ (arg0, or arg1 at a pid return probe: the return value).
 *
 * Output: the same shape as probes/py_gc.bt: "PMT gc generation=G duration_ns=N collected=C" per collection,
 * "PMT end NSECS" with @collections[G], @collected[G], @duration_us[G] (quantize).
 *
 * Example: none captured (see UNVERIFIED above); the bpftrace twin's header has a real one.
 */

#pragma D option quiet
#pragma D option dynvarsize=32m

BEGIN
{
	printf("PMT start py_gc pid @PID@\n");
}

@GC_START@
{
	self->generation = @GC_GENERATION@;
	self->start = timestamp;
}

@GC_DONE@
/self->start/
{
	this->ns = timestamp - self->start;
	this->collected = (int64_t)@GC_COLLECTED@;
	printf("PMT gc generation=%d duration_ns=%d collected=%d\n", self->generation, this->ns,
	    this->collected);
	@collections[self->generation] = count();
	@collected[self->generation] = sum(this->collected);
	@duration_us[self->generation] = quantize(this->ns / 1000);
	self->start = 0;
	self->generation = 0;
}

END
{
	printf("PMT end %d\n", timestamp);
	printa("@collections[%d]: %@d\n", @collections);
	printa("@collected[%d]: %@d\n", @collected);
	printa("@duration_us[%d]: \n%@d\n", @duration_us);
}
