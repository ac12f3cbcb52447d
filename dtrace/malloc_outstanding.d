#!/usr/sbin/dtrace -s
/*
 * malloc_outstanding.d: allocations not yet freed, grouped by native stack and Python
 * function: the leak hunter.
 *
 * Shows: as probes/malloc_outstanding.bt. D cannot print a per-block map with stacks as values,
 * so each allocation and each free is printed as it happens ("PMT alloc" / "PMT free" lines, with
 * the stack) for pymemtrace to match by address: UNFINISHED, pymemtrace does not read these yet.
 *
 * UNVERIFIED: written for DTrace (macOS, FreeBSD, illumos, Oracle Linux) but never run: no DTrace
 * exists on the machines pymemtrace is tested on. Its bpftrace twin (probes/malloc_outstanding.bt) is tested.
 *
 * By hand (pymemtrace fills in the placeholders; `pymemtrace dtrace --backend dtrace
 * --print-script` shows them):
 *   pymemtrace dtrace --backend dtrace --pid 1234 --script malloc_outstanding --print-script > /tmp/o.d
 *   sudo dtrace -q -p 1234 -s /tmp/o.d
 *
 * Placeholders: @PID@ the target's pid.
 * Option: min_age_ms=0   report only blocks at least this old at the end (read by pymemtrace)
 * Option: stack_depth=16   native frames kept per block
 * Python frames: read from the thread state as in the bpftrace twin (see its header for the
 * placeholders @PYFRAMES@ @RUNTIME@ @OFFSET_RUNTIME_INTERP_MAIN@ @OFFSET_INTERP_THREADS_HEAD@
 * @OFFSET_TSTATE_NEXT@ @OFFSET_TSTATE_THREAD_ID@ @OFFSET_FRAME_CODE@ @OFFSET_CODE_NAME@
 * @OFFSET_CODE_FILENAME@ @OFFSET_CODE_FIRSTLINENO@ @OFFSET_STR_DATA@ @THREAD_SELF@ @TSTATE_FRAME@),
 * with copyin() and up to four thread states (D has no loops); @THREAD_SELF@ is `tid`, which
 * matches native_thread_id (3.11+) only where the OS's thread ids are what CPython stores. The
 * names of each code object are printed once as "PMT code CODE name=N file=F line=L" lines.
 *
 * Output: the same shape as probes/malloc_outstanding.bt: "PMT alloc ns=CLOCK ptr=HEX bytes=N code=CODE" followed by its ustack, and
 * "PMT free ptr=HEX"; "PMT end NSECS" with @allocs and @alloc_bytes.
 *
 * Example: none captured (see UNVERIFIED above); the bpftrace twin's header has a real one.
 */

#pragma D option quiet
#pragma D option dynvarsize=32m

BEGIN
{
	printf("PMT start malloc_outstanding pid @PID@\n");
}

/* The calling thread's Python frame (see the header): up to four thread states are searched. */
pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry,
pid@PID@::memalign:entry
/@PYFRAMES@/
{
	self->co = 0;
	self->me = 0;
	self->ts = *(uint64_t *)copyin(*(uint64_t *)copyin(@RUNTIME@ + @OFFSET_RUNTIME_INTERP_MAIN@, 8) +
	    @OFFSET_INTERP_THREADS_HEAD@, 8);
}

pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry,
pid@PID@::memalign:entry
/@PYFRAMES@ && self->me == 0 && self->ts != 0/
{
	self->me = *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_THREAD_ID@, 8) == @THREAD_SELF@ ? self->ts : 0;
	self->ts = self->me ? self->ts : *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_NEXT@, 8);
}

pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry,
pid@PID@::memalign:entry
/@PYFRAMES@ && self->me == 0 && self->ts != 0/
{
	self->me = *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_THREAD_ID@, 8) == @THREAD_SELF@ ? self->ts : 0;
	self->ts = self->me ? self->ts : *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_NEXT@, 8);
}

pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry,
pid@PID@::memalign:entry
/@PYFRAMES@ && self->me == 0 && self->ts != 0/
{
	self->me = *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_THREAD_ID@, 8) == @THREAD_SELF@ ? self->ts : 0;
	self->ts = self->me ? self->ts : *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_NEXT@, 8);
}

pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry,
pid@PID@::memalign:entry
/@PYFRAMES@ && self->me == 0 && self->ts != 0/
{
	self->me = *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_THREAD_ID@, 8) == @THREAD_SELF@ ? self->ts : 0;
	self->ts = self->me ? self->ts : *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_NEXT@, 8);
}

pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry,
pid@PID@::memalign:entry
/@PYFRAMES@ && self->me != 0/
{
	this->me = self->me;
	this->frame = @TSTATE_FRAME@;
	self->co = this->frame ? *(uint64_t *)copyin(this->frame + @OFFSET_FRAME_CODE@, 8) : 0;
}

pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry,
pid@PID@::memalign:entry
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
	self->size = arg0;
	self->code = self->co;
	self->in = 1;
}

pid@PID@::malloc:return
/self->in && arg1 != 0/
{
	printf("PMT alloc ns=%d ptr=%x bytes=%d code=%d\n", timestamp, arg1, self->size, self->code);
	ustack(@stack_depth@);
	@allocs = count();
	@alloc_bytes = sum(self->size);
}

pid@PID@::malloc:return
{
	self->in = 0;
}

pid@PID@::calloc:entry
{
	self->size = arg0 * arg1;
	self->code = self->co;
	self->in = 1;
}

pid@PID@::calloc:return
/self->in && arg1 != 0/
{
	printf("PMT alloc ns=%d ptr=%x bytes=%d code=%d\n", timestamp, arg1, self->size, self->code);
	ustack(@stack_depth@);
	@allocs = count();
	@alloc_bytes = sum(self->size);
}

pid@PID@::calloc:return
{
	self->in = 0;
}

pid@PID@::realloc:entry
{
	self->size = arg1;
	self->code = self->co;
	self->in = 1;
}

pid@PID@::realloc:return
/self->in && arg1 != 0/
{
	printf("PMT alloc ns=%d ptr=%x bytes=%d code=%d\n", timestamp, arg1, self->size, self->code);
	ustack(@stack_depth@);
	@allocs = count();
	@alloc_bytes = sum(self->size);
}

pid@PID@::realloc:return
{
	self->in = 0;
}

pid@PID@::memalign:entry
{
	self->size = arg1;
	self->code = self->co;
	self->in = 1;
}

pid@PID@::memalign:return
/self->in && arg1 != 0/
{
	printf("PMT alloc ns=%d ptr=%x bytes=%d code=%d\n", timestamp, arg1, self->size, self->code);
	ustack(@stack_depth@);
	@allocs = count();
	@alloc_bytes = sum(self->size);
}

pid@PID@::memalign:return
{
	self->in = 0;
}

pid@PID@::realloc:entry,
pid@PID@::free:entry
/arg0 != 0/
{
	printf("PMT free ptr=%x\n", arg0);
}

END
{
	printf("PMT end %d\n", timestamp);
	printa("@allocs: %@d\n", @allocs);
	printa("@alloc_bytes: %@d\n", @alloc_bytes);
}
