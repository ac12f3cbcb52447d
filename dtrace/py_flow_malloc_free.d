#!/usr/sbin/dtrace -s
/*
 * py_flow_malloc_free.d: the flow of malloc and free calls, each with the Python function it
 * happened in, and malloc bytes by Python function.
 *
 * Shows: as probes/py_flow_malloc_free.bt.
 *
 * UNVERIFIED: written for DTrace (macOS, FreeBSD, illumos, Oracle Linux) but never run: no DTrace
 * exists on the machines pymemtrace is tested on. Its bpftrace twin (probes/py_flow_malloc_free.bt) is tested.
 *
 * By hand (pymemtrace fills in the placeholders; `pymemtrace dtrace --backend dtrace
 * --print-script` shows them):
 *   pymemtrace dtrace --backend dtrace --pid 1234 --script py_flow_malloc_free --print-script > /tmp/f.d
 *   sudo dtrace -q -p 1234 -s /tmp/f.d
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
 * Output: the same shape as probes/py_flow_malloc_free.bt: "PMT flow ns=CLOCK tid=TID event=E bytes=N ptr=HEX code=CODE" per call,
 * "PMT end NSECS" with @py_calls[CODE], @py_bytes[CODE], @py_sizes[CODE].
 *
 * Example: none captured (see UNVERIFIED above); the bpftrace twin's header has a real one.
 */

#pragma D option quiet
#pragma D option dynvarsize=32m

BEGIN
{
	printf("PMT start py_flow_malloc_free pid @PID@\n");
}

/* The calling thread's Python frame (see the header): up to four thread states are searched. */
pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry,
pid@PID@::free:entry
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
pid@PID@::free:entry
/@PYFRAMES@ && self->me == 0 && self->ts != 0/
{
	self->me = *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_THREAD_ID@, 8) == @THREAD_SELF@ ? self->ts : 0;
	self->ts = self->me ? self->ts : *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_NEXT@, 8);
}

pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry,
pid@PID@::free:entry
/@PYFRAMES@ && self->me == 0 && self->ts != 0/
{
	self->me = *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_THREAD_ID@, 8) == @THREAD_SELF@ ? self->ts : 0;
	self->ts = self->me ? self->ts : *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_NEXT@, 8);
}

pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry,
pid@PID@::free:entry
/@PYFRAMES@ && self->me == 0 && self->ts != 0/
{
	self->me = *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_THREAD_ID@, 8) == @THREAD_SELF@ ? self->ts : 0;
	self->ts = self->me ? self->ts : *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_NEXT@, 8);
}

pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry,
pid@PID@::free:entry
/@PYFRAMES@ && self->me == 0 && self->ts != 0/
{
	self->me = *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_THREAD_ID@, 8) == @THREAD_SELF@ ? self->ts : 0;
	self->ts = self->me ? self->ts : *(uint64_t *)copyin(self->ts + @OFFSET_TSTATE_NEXT@, 8);
}

pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry,
pid@PID@::free:entry
/@PYFRAMES@ && self->me != 0/
{
	this->me = self->me;
	this->frame = @TSTATE_FRAME@;
	self->co = this->frame ? *(uint64_t *)copyin(this->frame + @OFFSET_FRAME_CODE@, 8) : 0;
}

pid@PID@::malloc:entry,
pid@PID@::calloc:entry,
pid@PID@::realloc:entry,
pid@PID@::free:entry
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
/self->in/
{
	printf("PMT flow ns=%d tid=%d event=malloc bytes=%d ptr=%x code=%d\n", timestamp, tid, self->size, arg1,
	    self->code);
	@py_calls[self->code] = count();
	@py_bytes[self->code] = sum(self->size);
	@py_sizes[self->code] = quantize(self->size);
	self->in = 0;
}

pid@PID@::calloc:entry
{
	self->size = arg0 * arg1;
	self->code = self->co;
	self->in = 1;
}

pid@PID@::calloc:return
/self->in/
{
	printf("PMT flow ns=%d tid=%d event=calloc bytes=%d ptr=%x code=%d\n", timestamp, tid, self->size, arg1,
	    self->code);
	@py_calls[self->code] = count();
	@py_bytes[self->code] = sum(self->size);
	@py_sizes[self->code] = quantize(self->size);
	self->in = 0;
}

pid@PID@::realloc:entry
{
	self->size = arg1;
	self->code = self->co;
	self->in = 1;
}

pid@PID@::realloc:return
/self->in/
{
	printf("PMT flow ns=%d tid=%d event=realloc bytes=%d ptr=%x code=%d\n", timestamp, tid, self->size, arg1,
	    self->code);
	@py_calls[self->code] = count();
	@py_bytes[self->code] = sum(self->size);
	@py_sizes[self->code] = quantize(self->size);
	self->in = 0;
}

pid@PID@::free:entry
/arg0 != 0/
{
	printf("PMT flow ns=%d tid=%d event=free bytes=0 ptr=%x code=%d\n", timestamp, tid, arg0, self->co);
}

END
{
	printf("PMT end %d\n", timestamp);
	printa("@py_calls[%d]: %@d\n", @py_calls);
	printa("@py_bytes[%d]: %@d\n", @py_bytes);
	printa("@py_sizes[%d]: \n%@d\n", @py_sizes);
}
