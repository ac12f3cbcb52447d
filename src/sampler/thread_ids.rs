//! Kernel thread ids for interpreters that do not record them (CPython < 3.11).
//!
//! There a thread's id is `pthread_self()`, the address of glibc's `struct pthread`, which holds
//! the kernel tid at a fixed offset (0x2d0 on x86_64 since glibc 2.25). Rather than trust a
//! constant, the offset is found once: it is where the main thread's struct holds the PID, and
//! where every other Python thread's struct holds one of the process's live thread ids.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use remoteprocess::ProcessMemory;

use crate::memory::ThreadFaults;

/// The offset glibc has used on x86_64 for years; preferred when several offsets fit.
const USUAL_TID_OFFSET: usize = 0x2d0;
/// How much of `struct pthread` is searched (it is about 2.3 KiB; tid is near its start).
const SEARCH_BYTES: usize = 0x800;

/// A failed search is retried (a read at interpreter start-up can see half-made threads), at most
/// this often and this many times, so a libc without the field costs little.
const RETRY_EVERY: Duration = Duration::from_millis(100);
const MAX_SEARCHES: u32 = 50;

#[derive(Default)]
pub struct ThreadIdResolver {
    offset: Option<usize>,
    searches: u32,
    last_search: Option<Instant>,
    cache: HashMap<u64, u64>,
}

impl ThreadIdResolver {
    /// Fills in missing kernel thread ids. `pthread_ids` are the Python thread ids lacking one;
    /// `live` knows the process's current kernel thread ids. Returns pthread id -> kernel tid.
    pub fn resolve<P: ProcessMemory>(
        &mut self,
        process: &P,
        pid: u64,
        pthread_ids: &[u64],
        live: &ThreadFaults,
    ) -> HashMap<u64, u64> {
        let mut found = HashMap::new();
        if pthread_ids.is_empty() || live.thread_count() == 0 {
            return found;
        }
        if self.offset.is_none()
            && self.searches < MAX_SEARCHES
            && self.last_search.is_none_or(|t| t.elapsed() >= RETRY_EVERY)
        {
            self.searches += 1;
            self.last_search = Some(Instant::now());
            self.offset = find_offset(process, pid, pthread_ids, live);
        }
        let Some(offset) = self.offset else {
            return found;
        };
        for &pthread in pthread_ids {
            // A pthread id can be reused by a new thread after one ends: trust the cache only
            // while the tid it points to is alive, and re-read otherwise.
            let cached = self
                .cache
                .get(&pthread)
                .copied()
                .filter(|&tid| live.has_thread(tid));
            let tid = cached.or_else(|| {
                let tid = process.copy_struct::<u32>(pthread as usize + offset).ok()? as u64;
                live.has_thread(tid).then_some(tid)
            });
            if let Some(tid) = tid {
                self.cache.insert(pthread, tid);
                found.insert(pthread, tid);
            }
        }
        if self.cache.len() > 4 * live.thread_count() + 64 {
            self.cache.retain(|_, tid| live.has_thread(*tid));
        }
        found
    }
}

fn find_offset<P: ProcessMemory>(
    process: &P,
    pid: u64,
    pthread_ids: &[u64],
    live: &ThreadFaults,
) -> Option<usize> {
    let structs: Vec<Vec<u8>> = pthread_ids
        .iter()
        .filter_map(|&p| process.copy(p as usize, SEARCH_BYTES).ok())
        .collect();
    let word = |bytes: &[u8], offset: usize| {
        u32::from_ne_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes")) as u64
    };
    let fits = |offset: usize| {
        let values: Vec<u64> = structs.iter().map(|s| word(s, offset)).collect();
        values.contains(&pid) && values.iter().all(|&v| live.has_thread(v))
    };
    if structs.is_empty() {
        return None;
    }
    if fits(USUAL_TID_OFFSET) {
        return Some(USUAL_TID_OFFSET);
    }
    (0..SEARCH_BYTES - 4)
        .step_by(4)
        .find(|&offset| fits(offset))
}
