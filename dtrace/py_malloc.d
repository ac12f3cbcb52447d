#!/usr/sbin/dtrace -s
/*
 * py_malloc.d: malloc bytes grouped by the Python function (and file) that caused them.
 *
 * Shows: as probes/py_malloc.bt.
 *
 * UNVERIFIED: written for DTrace (macOS, FreeBSD, illumos, Oracle Linux) but never run: no DTrace
 * exists on the machines pymemtrace is tested on. Its bpftrace twin (probes/py_malloc.bt) is tested.
 *
 * By hand (pymemtrace fills in the placeholders; `pymemtrace dtrace --backend dtrace
 * --print-script` shows them):
 *   pymemtrace dtrace --backend dtrace --pid 1234 --script py_malloc --print-script > /tmp/p.d
 *   sudo dtrace -q -p 1234 -s /tmp/p.d
 *
 * Placeholders: @PID@ the target's pid.
 * Python frames: read from the thread state as in the bpftrace twin (see its header for the
 * placeholders @PYFRAMES@ @RUNTIME@ @OFFSET_RUNTIME_INTERP_MAIN@ @OFFSET_INTERP_THREADS_HEAD@
 * @OFFSET_TSTATE_NEXT@ @OFFSET_TSTATE_THREAD_ID@ @OFFSET_FRAME_CODE@ @OFFSET_CODE_NAME@
 * @OFFSET_CODE_FILENAME@ @OFFSET_CODE_FIRSTLINENO@ @OFFSET_STR_DATA@ @THREAD_SELF@ @TSTATE_FRAME@),
 * with copyin() and up to four thread states (D has no loops); @THREAD_SELF@ is `tid`, which
 * matches native_thread_id (3.11+) only where the OS's thread ids are what CPython stores. The
 * names of each code object are printed once as "PMT code CODE name=N file=F line=L" lines.
 *
 * Output: the same shape as probes/py_malloc.bt: "PMT end NSECS" with @py_calls[CODE] and @py_bytes[CODE].
 *
 * Example: none captured (see UNVERIFIED above); the bpftrace twin's header has a real one.
 */

#pragma D option quiet
#pragma D option dynvarsize=32m

BEGIN
{
	printf("PMT start py_malloc pid @PID@\n");
}

/* The calling thread's Python frame (see the header): up to four thread states are searched. */
pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry
/@PYFRAMES@/
{
	self->co = 0;
	self->me = 0;
	self->ts = *(uint64_t *)copyin(*(uint64_t *)copyin(@RUNTIME@ + @OFFSET_RUNTIME_INTERP_MAIN@, 8) +
	    @OFFSET_INTERP_THREADS_HEAD@, 8);
}

pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry
/@PYFRAMES@ && self->me == 0 && self->ts != 0/
{
	self->me = *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_THREAD_ID@, 8) == @THREAD_SELF@ ? self->ts : 0;
	self->ts = self->me ? self->ts : *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_NEXT@, 8);
}

pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry
/@PYFRAMES@ && self->me == 0 && self->ts != 0/
{
	self->me = *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_THREAD_ID@, 8) == @THREAD_SELF@ ? self->ts : 0;
	self->ts = self->me ? self->ts : *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_NEXT@, 8);
}

pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry
/@PYFRAMES@ && self->me == 0 && self->ts != 0/
{
	self->me = *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_THREAD_ID@, 8) == @THREAD_SELF@ ? self->ts : 0;
	self->ts = self->me ? self->ts : *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_NEXT@, 8);
}

pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry
/@PYFRAMES@ && self->me == 0 && self->ts != 0/
{
	self->me = *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_THREAD_ID@, 8) == @THREAD_SELF@ ? self->ts : 0;
	self->ts = self->me ? self->ts : *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_NEXT@, 8);
}

pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry
/@PYFRAMES@ && self->me != 0/
{
	this->me = self->me;
	this->frame = @TSTATE_FRAME@;
	self->co = this->frame ? *(uint64_t *)copyin(this->frame + @OFFSET_FRAME_CODE@, 8) : 0;
}

pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry
/@PYFRAMES@ && self->co != 0 && py_seen[self->co] == 0/
{
	py_seen[self->co] = 1;
	printf("PMT code %d name=%s file=%s line=%d\n", self->co,
	    copyinstr(*(uint64_t *)copyin(self->co + @OFFSET_CODE_NAME@, 8) + @OFFSET_STR_DATA@),
	    copyinstr(*(uint64_t *)copyin(self->co + @OFFSET_CODE_FILENAME@, 8) + @OFFSET_STR_DATA@),
	    *(int32_t *)copyin(self->co + @OFFSET_CODE_FIRSTLINENO@, 4));
}

pid@PID@::malloc:entry
{
	@py_calls[self->co] = count();
	@py_bytes[self->co] = sum(arg0);
}

pid@PID@::calloc:entry
{
	@py_calls[self->co] = count();
	@py_bytes[self->co] = sum(arg0 * arg1);
}

pid@PID@::realloc:entry
{
	@py_calls[self->co] = count();
	@py_bytes[self->co] = sum(arg1);
}

END
{
	printf("PMT end %d\n", timestamp);
	printa("@py_calls[%d]: %@d\n", @py_calls);
	printa("@py_bytes[%d]: %@d\n", @py_bytes);
}
