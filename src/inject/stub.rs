//! The code mapped into the target's main thread for an injection, and the page it lives in.
//!
//! Calling `Py_AddPendingCall` (or the direct-call sequence) straight from ptrace leaves the thread
//! returning to address 0, which is only safe while the tool is alive to catch it: a tool killed
//! with SIGKILL in that window would kill the target too. So the calls go through a small stub
//! (`stub.S`, assembled into `stub.bin`) that ends every entry point in `resume`:
//!
//! 1. it sends its own thread SIGURG: the tool sees the signal as a stop (it does not deliver it),
//!    puts the thread's registers back itself and lets it go (the normal path). A signal rather
//!    than a system-call stop, so the helper's own system calls (a direct call makes hundreds,
//!    each GIL hand-over among them) run at full speed;
//! 2. if nobody stopped it (the tool is gone), SIGURG is ignored (unless the program handles it:
//!    then its handler sees one spurious SIGURG), and the stub restores the thread on its own from this
//!    page: the vector state (`xrstor`), flags, general registers and stack, then jumps back to
//!    where the thread was stopped, re-entering the system call it was interrupted in.
//!
//! Both paths resume the thread with the same registers ([`Layout::write_resume`]), so the target
//! ends up the same whether or not the tool survives.
//!
//! The pages cannot be unmapped when the thread is let go after a pending call: the queued call
//! runs later, with the bootstrap text still in them. So the call queued is not
//! `PyRun_SimpleString` itself but the stub's `run_then_unmap`, which runs it and then frees these
//! pages by a tail call to the C library's `munmap` (see stub.S): whenever and however the
//! queued call runs (the tool waiting, timed out or killed), nothing of the injection stays
//! mapped after it. No page outlives its call, so no later run ever has to find, trust or reuse
//! one. Pages stay only while a call is still queued, or where no `munmap` was found.

use crate::inject::ptrace;

/// The assembled stub (`as --64 stub.S && objcopy -O binary -j .text`): code, then zeroed data.
const STUB: &[u8] = include_bytes!("stub.bin");

/// Entry points (offsets into the page).
pub const ENTRY_CHECK: u64 = 0x00;
pub const ENTRY_PENDING: u64 = 0x20;
pub const ENTRY_DIRECT: u64 = 0x50;
/// The function the pending call queues: `int run_then_unmap(void *page)` (the stub takes its
/// address itself; named here for the test that checks the source).
#[cfg(test)]
const RUN_THEN_UNMAP: u64 = 0x140;
/// Where rip points when `resume` stops on its own signal (just after the tgkill `syscall`).
pub const RESUME_STOP: u64 = 0xae;
/// The signal `resume` sends its own thread: ignored by default, so harmless with nobody tracing;
/// a tracer sees it as a stop without having to stop at every system call of the helper.
pub const RESUME_SIGNAL: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGURG;

const FN_CHECK: usize = 0x180;
const FN_ADD_PENDING: usize = 0x188;
const FN_RUN: usize = 0x190;
const FN_ENSURE: usize = 0x198;
const FN_RELEASE: usize = 0x1a0;
const CODE_PTR: usize = 0x1a8;
/// What the entry point's call returned (PyGILState_Check, Py_AddPendingCall, PyRun_SimpleString).
pub const RESULT: u64 = 0x1b0;
const SAVED_RSP: usize = 0x1c0;
const SAVED_RIP: usize = 0x1c8;
// write_resume writes the stack pointer and rip together.
const _: () = assert!(SAVED_RIP == SAVED_RSP + 8);
const FN_MUNMAP: usize = 0x1d0;
const REGION_LENGTH: usize = 0x1d8;
const REGISTERS: usize = 0x1e0;
/// The XSAVE area must be 64-byte aligned for `xrstor`.
const XSAVE: usize = 0x280;

/// The interpreter functions the stub calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct Functions {
    pub gil_check: u64,
    pub add_pending_call: u64,
    pub run_simple_string: u64,
    pub gil_ensure: u64,
    pub gil_release: u64,
    /// The C library's `munmap`, with which a pending call frees its pages once it has run; 0 if
    /// none was found (the pages then stay).
    pub munmap: u64,
}

/// Where things go in the page, for a given vector-state size and snippet.
pub struct Layout {
    code_offset: usize,
    /// Bytes to map (whole pages).
    pub length: u64,
}

impl Layout {
    pub fn new(xstate_len: usize, code_len: usize) -> Layout {
        let code_offset = (XSAVE + xstate_len).div_ceil(64) * 64;
        let length = ((code_offset + code_len + 1) as u64).div_ceil(4096) * 4096;
        Layout {
            code_offset,
            length,
        }
    }

    /// The page's contents: the stub, its data, the thread's vector state, the snippet
    /// (NUL-terminated). The resume registers are filled in by [`Layout::write_resume`].
    pub fn image(&self, page: u64, functions: &Functions, xstate: &[u8], code: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; self.code_offset + code.len() + 1];
        image[..STUB.len()].copy_from_slice(STUB);
        let mut put =
            |at: usize, value: u64| image[at..at + 8].copy_from_slice(&value.to_ne_bytes());
        put(FN_CHECK, functions.gil_check);
        put(FN_ADD_PENDING, functions.add_pending_call);
        put(FN_RUN, functions.run_simple_string);
        put(FN_ENSURE, functions.gil_ensure);
        put(FN_RELEASE, functions.gil_release);
        put(CODE_PTR, page + self.code_offset as u64);
        put(FN_MUNMAP, functions.munmap);
        put(REGION_LENGTH, self.length);
        image[XSAVE..XSAVE + xstate.len()].copy_from_slice(xstate);
        image[self.code_offset..self.code_offset + code.len()].copy_from_slice(code);
        image
    }

    /// Writes the registers the thread resumes with if the tool is gone: the same ones the tool
    /// itself would put back.
    pub fn write_resume(
        pid: i32,
        page: u64,
        resume: &libc::user_regs_struct,
    ) -> Result<(), ptrace::PtraceError> {
        let registers = [
            resume.rax,
            resume.rbx,
            resume.rcx,
            resume.rdx,
            resume.rsi,
            resume.rdi,
            resume.rbp,
            resume.r8,
            resume.r9,
            resume.r10,
            resume.r11,
            resume.r12,
            resume.r13,
            resume.r14,
            resume.r15,
            resume.eflags,
        ];
        let bytes: Vec<u8> = registers.iter().flat_map(|r| r.to_ne_bytes()).collect();
        ptrace::write_memory(pid, page + REGISTERS as u64, &bytes)?;
        let mut stack_and_rip = resume.rsp.to_ne_bytes().to_vec();
        stack_and_rip.extend_from_slice(&resume.rip.to_ne_bytes());
        ptrace::write_memory(pid, page + SAVED_RSP as u64, &stack_and_rip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_keeps_the_vector_state_aligned_and_the_code_after_it() {
        let layout = Layout::new(2696, 5000);
        assert_eq!(XSAVE % 64, 0);
        assert_eq!(layout.code_offset % 64, 0);
        assert!(layout.code_offset >= XSAVE + 2696);
        assert_eq!(layout.length % 4096, 0);
        assert!(layout.length as usize > layout.code_offset + 5000);
        let image = layout.image(
            0x7000_0000,
            &Functions {
                run_simple_string: 0x1234,
                ..Default::default()
            },
            &[0xaa; 2696],
            b"pass",
        );
        assert_eq!(&image[..0x10], &STUB[..0x10]);
        assert_eq!(image[FN_RUN..FN_RUN + 8], 0x1234u64.to_ne_bytes());
        assert_eq!(
            image[REGION_LENGTH..REGION_LENGTH + 8],
            layout.length.to_ne_bytes()
        );
        assert_eq!(
            image[CODE_PTR..CODE_PTR + 8],
            (0x7000_0000 + layout.code_offset as u64).to_ne_bytes()
        );
        assert_eq!(&image[layout.code_offset..], b"pass\0");
    }

    /// stub.bin is what stub.S assembles to (checked where binutils is installed, as in CI).
    #[test]
    fn stub_bin_matches_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let object = dir.path().join("stub.o");
        let binary = dir.path().join("stub.bin");
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/src/inject/stub.S");
        let assembled = std::process::Command::new("as")
            .args(["--64", "-o"])
            .arg(&object)
            .arg(source)
            .status();
        let Ok(status) = assembled else {
            eprintln!("skipping: no `as` (binutils) to check stub.bin against stub.S");
            return;
        };
        assert!(status.success());
        let copied = std::process::Command::new("objcopy")
            .args(["-O", "binary", "-j", ".text"])
            .arg(&object)
            .arg(&binary)
            .status()
            .unwrap();
        assert!(copied.success());
        assert_eq!(std::fs::read(binary).unwrap(), STUB);
        // Every address is rip-relative to the page itself: a reference left for a linker (this
        // object is never linked) would assemble to a wrong displacement without any error.
        let relocations = std::process::Command::new("objdump")
            .arg("-r")
            .arg(&object)
            .output()
            .unwrap();
        let relocations = String::from_utf8_lossy(&relocations.stdout);
        assert!(!relocations.contains("R_X86_64"), "{relocations}");
        // The offsets above name the stub's own labels.
        let symbols = std::process::Command::new("nm")
            .arg(&object)
            .output()
            .unwrap();
        let symbols = String::from_utf8_lossy(&symbols.stdout);
        for (name, offset) in [
            ("check", ENTRY_CHECK as usize),
            ("pending", ENTRY_PENDING as usize),
            ("direct", ENTRY_DIRECT as usize),
            ("run_then_unmap", RUN_THEN_UNMAP as usize),
            ("fn_munmap", FN_MUNMAP),
            ("region_length", REGION_LENGTH),
            ("result", RESULT as usize),
            ("saved_rsp", SAVED_RSP),
            ("registers", REGISTERS),
            ("xsave", XSAVE),
        ] {
            assert!(
                symbols.contains(&format!("{offset:016x} t {name}\n")),
                "{name} is not at {offset:#x}: {symbols}"
            );
        }
        assert_eq!(
            &STUB[RESUME_STOP as usize - 2..RESUME_STOP as usize],
            [0x0f, 0x05]
        );
    }
}
