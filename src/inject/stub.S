# The code pymemtrace maps into a target thread (src/inject/stub.rs embeds these bytes).
# Every entry point ends in `resume`, which first sends its own thread SIGURG (tgkill; ignored by
# default): the tool sees that signal, takes the thread back and restores it itself; then, if the tool
# is gone, restores the thread on its own: vector state, general registers, flags, stack, and a
# jump back to where it was stopped (re-entering an interrupted system call when there was one).
    .intel_syntax noprefix
    .text
    .globl _start
_start:
# The page's own start (a local label: rip-relative references to the global _start would be left
# to a linker, and this object is never linked).
page:
# 0x00: check = PyGILState_Check()
check:
    call [rip + fn_check]
    mov [rip + result], rax
    jmp resume
    .org 0x20
# 0x20: result = Py_AddPendingCall(run_then_unmap, page)
pending:
    lea rdi, [rip + run_then_unmap]
    lea rsi, [rip + page]
    call [rip + fn_add_pending]
    mov [rip + result], rax
    jmp resume
    .org 0x50
# 0x50: state = PyGILState_Ensure(); PyRun_SimpleString(code); PyGILState_Release(state)
direct:
    call [rip + fn_ensure]
    mov [rip + gil_state], rax
    mov rdi, [rip + code_ptr]
    call [rip + fn_run]
    mov [rip + result], rax
    mov rdi, [rip + gil_state]
    call [rip + fn_release]
    jmp resume
    .org 0x90
# 0x90
resume:
    mov eax, 39
    syscall
    mov edi, eax
    mov eax, 186
    syscall
    mov esi, eax
    mov edx, 23
    mov eax, 234
    syscall
    mov eax, 0xffffffff
    mov edx, 0xffffffff
    xrstor64 [rip + xsave]
    # rsp stays on the thread's own stack below its red zone (where the calls ran), so a signal
    # arriving now has somewhere to go; each register comes from the block below.
    push qword ptr [rip + registers + 0x78]
    popfq
    mov rax, [rip + registers + 0x00]
    mov rbx, [rip + registers + 0x08]
    mov rcx, [rip + registers + 0x10]
    mov rdx, [rip + registers + 0x18]
    mov rsi, [rip + registers + 0x20]
    mov rdi, [rip + registers + 0x28]
    mov rbp, [rip + registers + 0x30]
    mov r8, [rip + registers + 0x38]
    mov r9, [rip + registers + 0x40]
    mov r10, [rip + registers + 0x48]
    mov r11, [rip + registers + 0x50]
    mov r12, [rip + registers + 0x58]
    mov r13, [rip + registers + 0x60]
    mov r14, [rip + registers + 0x68]
    mov r15, [rip + registers + 0x70]
    mov rsp, [rip + saved_rsp]
    jmp [rip + saved_rip]
    .org 0x140
# 0x140: the pending call itself, int run_then_unmap(void *page), run by the interpreter in the
# main thread at a bytecode boundary, with the GIL: PyRun_SimpleString(code), then these pages are
# freed (nothing needs them once the code has run), by a tail call to the C library's munmap:
# munmap(page, length) returns its 0 straight to the interpreter, never into the pages it just
# removed. Without a munmap (fn_munmap 0), the pages stay and this returns 0 itself.
run_then_unmap:
    push rdi
    mov rdi, [rip + code_ptr]
    call [rip + fn_run]
    pop rdi
    mov rsi, [rip + region_length]
    mov rax, [rip + fn_munmap]
    test rax, rax
    jz 1f
    jmp rax
1:
    xor eax, eax
    ret
    .org 0x180
# 0x180: data, written by the tool
fn_check:       .quad 0
fn_add_pending: .quad 0
fn_run:         .quad 0
fn_ensure:      .quad 0
fn_release:     .quad 0
code_ptr:       .quad 0
result:         .quad 0
gil_state:      .quad 0
saved_rsp:      .quad 0
saved_rip:      .quad 0
fn_munmap:      .quad 0
region_length:  .quad 0
    .org 0x1e0
# 0x1e0: rax rbx rcx rdx rsi rdi rbp r8-r15 rflags (16 quads)
registers:
    .fill 16, 8, 0
    .org 0x280
# 0x280: the thread's XSAVE area (standard format, as PTRACE_GETREGSET NT_X86_XSTATE gives it)
xsave:
