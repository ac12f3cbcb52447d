//! Functions of the target's C library, at their addresses in the target.
//!
//! A queued helper's pages are freed by the pending call itself once it has run (stub.S,
//! `run_then_unmap`). It cannot unmap its own code with a `syscall` instruction of its own (the
//! next instruction would be gone), so it ends by jumping to the C library's `munmap`, which
//! returns straight to the interpreter. This finds that function.

use object::read::elf::ElfFile64;
use object::read::ReadCache;
use object::{Endianness, Object, ObjectSymbol};

use super::debug_offsets::{self, Mapping};

/// The address in `pid` of the function `name` of its C library (or of its executable, for a
/// static build), checked to fall inside an executable mapping of that same file. None when it
/// cannot be found: the caller then does without.
pub(crate) fn function(pid: i32, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let maps = debug_offsets::parse_maps(&text);
    let libc = crate::dtrace::target::find_libc(&crate::dtrace::target::mapped_files(&text))
        .map(|file| file.name.clone());
    let executable = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|path| path.to_string_lossy().into_owned());
    for path in libc.into_iter().chain(executable) {
        let Some(first) = maps.iter().find(|m| m.offset == 0 && m.path == path) else {
            continue;
        };
        let Some(address) = symbol_in(pid, first, name) else {
            continue;
        };
        let in_code = maps
            .iter()
            .any(|m| m.path == first.path && m.executable && m.start <= address && address < m.end);
        if in_code {
            return Some(address);
        }
    }
    None
}

/// The address of the defined function `name` in the file mapped at `first` (its offset-0
/// mapping): its dynamic symbols first (what the dynamic linker would bind), then its symbol table.
fn symbol_in(pid: i32, first: &Mapping, name: &str) -> Option<u64> {
    let file = debug_offsets::open_mapped_file(pid, first).ok()?;
    // ReadCache reads only the parts of the file that are looked at.
    let cache = ReadCache::new(file);
    let elf = ElfFile64::<Endianness, _>::parse(&cache).ok()?;
    let bias = first.start.checked_sub(debug_offsets::first_load(&elf)?)?;
    let symbol = elf.dynamic_symbols().chain(elf.symbols()).find(|s| {
        s.is_definition() && s.kind() == object::SymbolKind::Text && s.name() == Ok(name)
    })?;
    bias.checked_add(symbol.address())
}

#[cfg(test)]
mod tests {
    /// Our own munmap, found from outside as a target's would be, is the one we link against.
    #[test]
    fn finds_our_own_munmap() {
        let found = super::function(std::process::id() as i32, "munmap");
        assert_eq!(found, Some(libc::munmap as *const () as usize as u64));
        assert_eq!(
            super::function(std::process::id() as i32, "no_such_function_here"),
            None
        );
    }
}
