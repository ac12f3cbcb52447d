//! The model that turns (RSS change, stacks) into growth per stack, function and line.
//!
//! Frames and stacks are interned, so an hour of samples costs memory in proportion to the number of
//! distinct stacks, not to the number of samples. Growth and release are kept apart per stack.

use std::collections::HashMap;

pub type FrameId = u32;
pub type StackId = u32;

/// One Python frame as reported to the user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: i32,
}

impl Frame {
    pub fn synthetic(name: &str) -> Frame {
        Frame {
            function: name.to_string(),
            file: String::new(),
            line: 0,
        }
    }

    /// True for the tool's own buckets such as `<unattributed>` and thread roots.
    pub fn is_synthetic(&self) -> bool {
        self.file.is_empty() && self.function.starts_with('<')
    }
}

/// Name of the bucket for changes no Python thread could be charged with (e.g. native threads).
pub const UNATTRIBUTED: &str = "<unattributed>";

/// The frame of a thread that has no Python frame: interpreter start-up and shutdown, or a thread
/// running only native code.
pub const NO_PYTHON_FRAME: &str = "<no Python frame>";

/// Bytes charged to one stack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub grown: u64,
    pub released: u64,
    /// How many RSS changes were charged here (in whole or in part).
    pub charges: u64,
}

impl Totals {
    pub fn net(&self) -> i64 {
        self.grown as i64 - self.released as i64
    }

    fn add(&mut self, delta: i64) {
        if delta >= 0 {
            self.grown += delta as u64;
        } else {
            self.released += delta.unsigned_abs();
        }
        self.charges += 1;
    }

    fn merge(&mut self, other: &Totals) {
        self.grown += other.grown;
        self.released += other.released;
        self.charges += other.charges;
    }
}

/// One thread as seen by one stack read, with its stack already interned.
#[derive(Debug, Clone, Copy)]
pub struct ThreadSample {
    pub stack: StackId,
    pub owns_gil: bool,
    pub active: bool,
    /// The kernel's thread id, when the interpreter exposes it (3.11+, or py-spy found it).
    pub os_thread_id: Option<u64>,
}

/// Which threads of a stack read get charged with an RSS change.
///
/// The GIL holder when there is one (it is the thread running Python code, so the one allocating
/// Python objects); otherwise every thread the OS reports as running, split evenly; with
/// `include_idle`, otherwise every thread; otherwise nobody (the `<unattributed>` bucket).
pub fn chargeable(threads: &[ThreadSample], include_idle: bool) -> Vec<StackId> {
    if let Some(holder) = threads.iter().find(|t| t.owns_gil) {
        return vec![holder.stack];
    }
    let active: Vec<StackId> = threads
        .iter()
        .filter(|t| t.active)
        .map(|t| t.stack)
        .collect();
    if !active.is_empty() {
        return active;
    }
    if include_idle {
        return threads.iter().map(|t| t.stack).collect();
    }
    Vec::new()
}

/// Splits a growth over the threads whose page-fault counters moved, weighted by their faults, each
/// charged with the stack given for it in `stack_of_thread` (kernel thread id -> stack). Faults of
/// threads with no Python stack there (native threads) go to the `<unattributed>` bucket (`None` in
/// the result). Returns `None` when no faulting thread has a Python stack, so the caller falls back
/// to [`chargeable`].
pub fn fault_weighted(
    stack_of_thread: &HashMap<u64, StackId>,
    faults: &HashMap<u64, u64>,
) -> Option<Vec<(Option<StackId>, u64)>> {
    let mut weights: Vec<(Option<StackId>, u64)> = faults
        .iter()
        .map(|(tid, &count)| (stack_of_thread.get(tid).copied(), count))
        .collect();
    // Deterministic order (largest first) so the split's remainder always lands the same way.
    weights.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    weights
        .iter()
        .any(|(stack, _)| stack.is_some())
        .then_some(weights)
}

/// Interned frames and stacks with the bytes charged to each stack.
#[derive(Debug, Default)]
pub struct Profile {
    frames: Vec<Frame>,
    frame_ids: HashMap<Frame, FrameId>,
    /// Each stack from the outermost frame to the innermost.
    stacks: Vec<Vec<FrameId>>,
    stack_ids: HashMap<Vec<FrameId>, StackId>,
    totals: Vec<Totals>,
    unattributed: Option<StackId>,
    /// Root frames of kept-apart threads, by kernel (or Python) thread id, and their latest names.
    thread_roots: HashMap<u64, FrameId>,
    thread_names: HashMap<u64, String>,
}

impl Profile {
    pub fn new() -> Profile {
        Profile::default()
    }

    pub fn intern_frame(&mut self, frame: Frame) -> FrameId {
        if let Some(&id) = self.frame_ids.get(&frame) {
            return id;
        }
        let id = self.frames.len() as FrameId;
        self.frames.push(frame.clone());
        self.frame_ids.insert(frame, id);
        id
    }

    /// Interns a stack given from the outermost frame to the innermost. An empty stack becomes
    /// [`NO_PYTHON_FRAME`], so that every charge lands on a named frame.
    pub fn intern_stack(&mut self, mut frames: Vec<FrameId>) -> StackId {
        if frames.is_empty() {
            frames.push(self.intern_frame(Frame::synthetic(NO_PYTHON_FRAME)));
        }
        if let Some(&id) = self.stack_ids.get(&frames) {
            return id;
        }
        let id = self.stacks.len() as StackId;
        self.stacks.push(frames.clone());
        self.stack_ids.insert(frames, id);
        self.totals.push(Totals::default());
        id
    }

    /// The root frame standing for thread `tid` (`--threads`). A thread is its id: its name, which
    /// can appear only later (the main thread has none until `threading` is imported), is applied
    /// by [`Profile::name_threads`] when sampling ends, so one thread never gets two roots.
    pub fn thread_root(&mut self, tid: u64, name: Option<&str>) -> FrameId {
        if let Some(name) = name {
            if self.thread_names.get(&tid).map(String::as_str) != Some(name) {
                self.thread_names.insert(tid, name.to_string());
            }
        }
        if let Some(&id) = self.thread_roots.get(&tid) {
            return id;
        }
        let id = self.intern_frame(Frame::synthetic(&format!("<thread {tid}>")));
        self.thread_roots.insert(tid, id);
        id
    }

    /// Labels each thread root with the thread's latest name: `<thread NAME TID>`.
    pub fn name_threads(&mut self) {
        for (tid, &id) in &self.thread_roots {
            if let Some(name) = self.thread_names.get(tid) {
                self.frames[id as usize].function = format!("<thread {name} {tid}>");
            }
        }
    }

    pub fn unattributed_stack(&mut self) -> StackId {
        if let Some(id) = self.unattributed {
            return id;
        }
        let frame = self.intern_frame(Frame::synthetic(UNATTRIBUTED));
        let id = self.intern_stack(vec![frame]);
        self.unattributed = Some(id);
        id
    }

    /// Charges `delta` bytes of RSS change to `stacks`, split evenly; to `<unattributed>` if none.
    /// The remainder of an uneven split goes to the first stack so that no byte is lost.
    pub fn charge(&mut self, delta: i64, stacks: &[StackId]) {
        if delta == 0 {
            return;
        }
        if stacks.is_empty() {
            let id = self.unattributed_stack();
            self.totals[id as usize].add(delta);
            return;
        }
        let share = delta / stacks.len() as i64;
        let remainder = delta - share * stacks.len() as i64;
        for (index, &stack) in stacks.iter().enumerate() {
            let part = if index == 0 { share + remainder } else { share };
            self.totals[stack as usize].add(part);
        }
    }

    /// Charges `delta` split in proportion to the weights; `None` means `<unattributed>`.
    pub fn charge_weighted(&mut self, delta: i64, weights: &[(Option<StackId>, u64)]) {
        let total: u64 = weights.iter().map(|(_, w)| *w).sum();
        if delta == 0 || total == 0 {
            return self.charge(delta, &[]);
        }
        let mut given = 0i64;
        for (index, (stack, weight)) in weights.iter().enumerate() {
            let part = if index + 1 == weights.len() {
                delta - given
            } else {
                (delta as i128 * *weight as i128 / total as i128) as i64
            };
            given += part;
            match stack {
                Some(stack) => self.charge(part, &[*stack]),
                None => self.charge(part, &[]),
            }
        }
    }

    pub fn frame(&self, id: FrameId) -> &Frame {
        &self.frames[id as usize]
    }

    pub fn stack(&self, id: StackId) -> &[FrameId] {
        &self.stacks[id as usize]
    }

    pub fn totals(&self, id: StackId) -> Totals {
        self.totals[id as usize]
    }

    pub fn stack_count(&self) -> usize {
        self.stacks.len()
    }

    /// Stacks that were charged at least once, with their totals.
    pub fn charged_stacks(&self) -> impl Iterator<Item = (StackId, &[FrameId], Totals)> + '_ {
        self.stacks
            .iter()
            .enumerate()
            .filter(|(id, _)| self.totals[*id].charges > 0)
            .map(|(id, frames)| (id as StackId, frames.as_slice(), self.totals[id]))
    }

    /// All bytes charged anywhere.
    pub fn overall(&self) -> Totals {
        let mut sum = Totals::default();
        for totals in &self.totals {
            sum.merge(totals);
        }
        sum
    }

    /// The denominator of every "share": the growth that stayed, i.e. the sum of the positive
    /// per-function self nets. Functions that released more than they grew do not reduce it, and a
    /// function's allocating and freeing lines net out before the sum.
    pub fn net_growth(&self) -> u64 {
        let mut by_function: HashMap<FrameKey<'_>, i64> = HashMap::new();
        for (_, frames, totals) in self.charged_stacks() {
            if let Some(&leaf) = frames.last() {
                *by_function
                    .entry(FrameKey::of(self.frame(leaf)))
                    .or_default() += totals.net();
            }
        }
        by_function.values().map(|&net| net.max(0) as u64).sum()
    }

    /// Stacks grouped by their function path (lines ignored), with summed totals; each frame of a
    /// group is the one (hence the line) that carried the most bytes in that position. This is what
    /// flamegraphs show: a function that allocates on one line and frees on the next nets out.
    pub fn function_paths(&self) -> Vec<(Vec<FrameId>, Totals)> {
        struct Group {
            totals: Totals,
            /// Per position: frame id -> bytes moved through it.
            weights: Vec<HashMap<FrameId, u64>>,
        }
        let mut groups: HashMap<Vec<FrameKey<'_>>, Group> = HashMap::new();
        for (_, frames, totals) in self.charged_stacks() {
            let key: Vec<FrameKey<'_>> = frames
                .iter()
                .map(|&id| FrameKey::of(self.frame(id)))
                .collect();
            let group = groups.entry(key).or_insert_with(|| Group {
                totals: Totals::default(),
                weights: vec![HashMap::new(); frames.len()],
            });
            group.totals.merge(&totals);
            for (position, &id) in frames.iter().enumerate() {
                *group.weights[position].entry(id).or_default() += totals.grown + totals.released;
            }
        }
        let mut paths: Vec<(Vec<FrameId>, Totals)> = groups
            .into_values()
            .map(|group| {
                let frames = group
                    .weights
                    .iter()
                    .map(|w| {
                        // Ties go to the lowest id, so the output does not depend on hash order.
                        *w.iter()
                            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                            .expect("every position has a frame")
                            .0
                    })
                    .collect();
                (frames, group.totals)
            })
            .collect();
        paths.sort_by(|a, b| a.0.cmp(&b.0));
        paths
    }

    /// The innermost frame of the stack with the largest net growth so far (for the live line).
    pub fn top_leaf(&self) -> Option<(&Frame, i64)> {
        let mut by_function: HashMap<FrameKey<'_>, i64> = HashMap::new();
        for (_, frames, totals) in self.charged_stacks() {
            if let Some(&leaf) = frames.last() {
                let frame = self.frame(leaf);
                *by_function.entry(FrameKey::of(frame)).or_default() += totals.net();
            }
        }
        let (key, net) = by_function.into_iter().max_by_key(|(_, net)| *net)?;
        let frame = self
            .frames
            .iter()
            .find(|f| FrameKey::of(f) == key)
            .expect("key came from a frame");
        Some((frame, net))
    }

    /// Per-function figures, sorted by self net growth (then total), largest first.
    pub fn functions(&self) -> Vec<FunctionSummary> {
        let mut rows: HashMap<FrameKey<'_>, FunctionSummary> = HashMap::new();
        let mut lines: HashMap<FrameKey<'_>, HashMap<i32, i64>> = HashMap::new();
        for (_, frames, totals) in self.charged_stacks() {
            let leaf = frames.last().copied();
            // A recursive function appears once per stack in its total.
            let mut seen: Vec<FrameKey<'_>> = Vec::with_capacity(frames.len());
            for &frame_id in frames {
                let frame = self.frame(frame_id);
                if frame.function.starts_with("<thread") && frame.is_synthetic() {
                    continue;
                }
                let key = FrameKey::of(frame);
                let row = rows.entry(key).or_insert_with(|| FunctionSummary {
                    function: frame.function.clone(),
                    file: frame.file.clone(),
                    line: frame.line,
                    ..FunctionSummary::default()
                });
                if Some(frame_id) == leaf {
                    row.self_totals.merge(&totals);
                    *lines.entry(key).or_default().entry(frame.line).or_default() += totals.net();
                }
                if !seen.contains(&key) {
                    seen.push(key);
                    row.total_totals.merge(&totals);
                    if row.self_totals.charges == 0 {
                        // Until it has self bytes, show the line that led to the growth below it.
                        row.line = frame.line;
                    }
                }
            }
        }
        let net_growth = self.net_growth();
        let mut result: Vec<FunctionSummary> = rows
            .into_iter()
            .map(|(key, mut row)| {
                if let Some(by_line) = lines.get(&key) {
                    if let Some((&line, _)) = by_line.iter().max_by_key(|(_, net)| net.abs()) {
                        row.line = line;
                    }
                }
                row.share = if net_growth > 0 {
                    row.self_totals.net() as f64 / net_growth as f64
                } else {
                    0.0
                };
                row
            })
            .collect();
        result.sort_by(|a, b| {
            b.self_totals
                .net()
                .cmp(&a.self_totals.net())
                .then(b.total_totals.net().cmp(&a.total_totals.net()))
                .then(a.function.cmp(&b.function))
        });
        result
    }
}

/// A function is its name and file; lines within it are aggregated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FrameKey<'a> {
    function: &'a str,
    file: &'a str,
}

impl<'a> FrameKey<'a> {
    fn of(frame: &'a Frame) -> FrameKey<'a> {
        FrameKey {
            function: &frame.function,
            file: &frame.file,
        }
    }
}

/// One row of the function table.
#[derive(Debug, Clone, Default)]
pub struct FunctionSummary {
    pub function: String,
    pub file: String,
    /// The line with the most self growth (or, without any, the call site on the hottest path).
    pub line: i32,
    /// Bytes charged while this function was the innermost frame.
    pub self_totals: Totals,
    /// Bytes charged while this function was anywhere on the stack.
    pub total_totals: Totals,
    /// Self net growth as a fraction of the profile's net growth.
    pub share: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str, line: i32) -> Frame {
        Frame {
            function: name.into(),
            file: "app.py".into(),
            line,
        }
    }

    fn stack(profile: &mut Profile, names: &[(&str, i32)]) -> StackId {
        let ids = names
            .iter()
            .map(|(n, l)| profile.intern_frame(frame(n, *l)))
            .collect();
        profile.intern_stack(ids)
    }

    #[test]
    fn gil_holder_takes_everything() {
        let threads = [
            ThreadSample {
                stack: 1,
                owns_gil: false,
                active: true,
                os_thread_id: None,
            },
            ThreadSample {
                stack: 2,
                owns_gil: true,
                active: true,
                os_thread_id: None,
            },
        ];
        assert_eq!(chargeable(&threads, false), vec![2]);
    }

    #[test]
    fn active_threads_split_and_idle_ones_do_not() {
        let threads = [
            ThreadSample {
                stack: 1,
                owns_gil: false,
                active: true,
                os_thread_id: None,
            },
            ThreadSample {
                stack: 2,
                owns_gil: false,
                active: false,
                os_thread_id: None,
            },
            ThreadSample {
                stack: 3,
                owns_gil: false,
                active: true,
                os_thread_id: None,
            },
        ];
        assert_eq!(chargeable(&threads, false), vec![1, 3]);
        let idle = [ThreadSample {
            stack: 2,
            owns_gil: false,
            active: false,
            os_thread_id: None,
        }];
        assert!(chargeable(&idle, false).is_empty());
        assert_eq!(chargeable(&idle, true), vec![2]);
    }

    #[test]
    fn split_loses_no_byte_and_keeps_growth_and_release_apart() {
        let mut profile = Profile::new();
        let a = stack(&mut profile, &[("main", 1), ("a", 10)]);
        let b = stack(&mut profile, &[("main", 1), ("b", 20)]);
        profile.charge(4099, &[a, b]);
        profile.charge(-1000, &[a]);
        profile.charge(77, &[]);
        assert_eq!(profile.totals(a).grown + profile.totals(b).grown, 4099);
        assert_eq!(profile.totals(a).released, 1000);
        assert_eq!(profile.overall().net(), 4099 - 1000 + 77);
        let functions = profile.functions();
        let main = functions.iter().find(|f| f.function == "main").unwrap();
        assert_eq!(main.self_totals.charges, 0);
        assert_eq!(main.total_totals.net(), 4099 - 1000);
        let unattributed = functions
            .iter()
            .find(|f| f.function == UNATTRIBUTED)
            .unwrap();
        assert_eq!(unattributed.self_totals.grown, 77);
    }

    #[test]
    fn faults_pick_the_thread_that_grew_even_without_the_gil() {
        let mut profile = Profile::new();
        let main = stack(&mut profile, &[("compute", 1)]);
        let worker = stack(&mut profile, &[("worker_alloc", 1)]);
        let stacks = HashMap::from([(10u64, main), (11, worker)]);
        let faults = HashMap::from([(11u64, 300u64), (10, 100), (99, 100)]);
        let weights = fault_weighted(&stacks, &faults).unwrap();
        profile.charge_weighted(1000, &weights);
        assert_eq!(profile.totals(worker).grown, 600);
        assert_eq!(profile.totals(main).grown, 200);
        assert_eq!(
            profile.overall().grown,
            1000,
            "the native thread's 200 go to <unattributed>"
        );
        assert!(fault_weighted(&HashMap::new(), &faults).is_none());
        assert!(fault_weighted(&stacks, &HashMap::new()).is_none());
    }

    #[test]
    fn a_thread_keeps_one_root_and_takes_its_latest_name() {
        let mut profile = Profile::new();
        let before = profile.thread_root(7, None);
        let after = profile.thread_root(7, Some("MainThread"));
        assert_eq!(before, after);
        profile.name_threads();
        assert_eq!(profile.frame(before).function, "<thread MainThread 7>");
        let unnamed = profile.thread_root(8, None);
        profile.name_threads();
        assert_eq!(profile.frame(unnamed).function, "<thread 8>");
    }

    #[test]
    fn empty_stack_is_named() {
        let mut profile = Profile::new();
        let s = profile.intern_stack(Vec::new());
        assert_eq!(profile.frame(profile.stack(s)[0]).function, NO_PYTHON_FRAME);
    }

    #[test]
    fn recursion_counts_once_in_total() {
        let mut profile = Profile::new();
        let s = stack(&mut profile, &[("f", 1), ("f", 2), ("f", 3)]);
        profile.charge(100, &[s]);
        let f = &profile.functions()[0];
        assert_eq!(f.total_totals.grown, 100);
        assert_eq!(f.self_totals.grown, 100);
        assert_eq!(f.line, 3);
    }

    #[test]
    fn shares_use_positive_nets() {
        let mut profile = Profile::new();
        let a = stack(&mut profile, &[("a", 1)]);
        let b = stack(&mut profile, &[("b", 1)]);
        let c = stack(&mut profile, &[("c", 1)]);
        profile.charge(200, &[a]);
        profile.charge(100, &[b]);
        profile.charge(50, &[c]);
        profile.charge(-80, &[c]);
        assert_eq!(profile.net_growth(), 300);
        // A second line of `a` releasing part of it nets out within the function.
        let a2 = stack(&mut profile, &[("a", 2)]);
        profile.charge(-50, &[a2]);
        assert_eq!(profile.net_growth(), 250);
        let paths = profile.function_paths();
        let a_path = paths
            .iter()
            .find(|(f, _)| profile.frame(f[0]).function == "a")
            .unwrap();
        assert_eq!(a_path.1.net(), 150);
        assert_eq!(
            profile.frame(a_path.0[0]).line,
            1,
            "line 1 moved more bytes than line 2"
        );
        profile.charge(50, &[a2]);
        let functions = profile.functions();
        assert!((functions[0].share - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(functions[0].function, "a");
        assert_eq!(profile.top_leaf().unwrap().0.function, "a");
    }
}
