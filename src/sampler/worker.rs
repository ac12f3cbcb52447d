//! Stack reads on a thread of their own when they are costly, so that the sampling loop keeps
//! `--duration` and Ctrl-C whatever a read costs.
//!
//! A read is several reads of the target's memory per frame: 300 threads 500 frames deep take
//! seconds, and the target decides how deep its threads are. The loop hands each costly read to
//! this thread and waits for it, looking at the stop flag and the deadline meanwhile; a read still
//! running when either comes is abandoned: the loop reports what it has, and the thread ends with
//! the process (it only reads the target's memory: there is nothing to undo).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use py_spy::PythonSpy;

use super::recover::{Read, ReadError, Reader};

/// How often the loop looks at the stop flag while a read runs.
const STOP_POLL: Duration = Duration::from_millis(20);

/// One finished read.
pub struct Outcome {
    pub result: Result<Read, ReadError>,
    /// From the request to the result.
    pub took: Duration,
    /// Whether reading thread by thread is possible (see [`Reader::by_thread`]).
    pub by_thread: bool,
}

/// How a wait for a read ended.
pub enum Waited {
    Done(Outcome),
    /// The deadline came first; the read was abandoned after running this long.
    Deadline(Duration),
    /// Ctrl-C came first; the read was abandoned after running this long.
    Stopped(Duration),
}

/// Reads are made on the sampling loop's own thread while they are cheap: the hand-over to
/// another thread and back costs two wake-ups, which on a loaded machine delay the read that an
/// RSS change is charged to. A target with more than this many thread states, or whose last read
/// took longer than [`INLINE_MAX_READ`], is read on the other thread. So an inline read can
/// overrun the deadline by at most one read of this many threads (py-spy stops at 4096 frames
/// each).
const INLINE_MAX_THREADS: usize = 8;
const INLINE_MAX_READ: Duration = Duration::from_millis(20);

/// The other thread's ends: requests (when asked) and outcomes (with the thread states walked).
type Channel = (mpsc::Sender<Instant>, mpsc::Receiver<(Outcome, usize)>);

pub struct ReadThread {
    spy: Arc<Mutex<PythonSpy>>,
    reader: Arc<Mutex<Reader>>,
    /// Whether the next read may be made inline (see [`INLINE_MAX_THREADS`]).
    inline: bool,
    /// The other thread, started at the first read made there.
    thread: Option<Channel>,
}

/// A whole read on the calling thread (the list walked, then py-spy), and the number of thread
/// states it found.
fn read_now(spy: &Mutex<PythonSpy>, reader: &Mutex<Reader>, asked: Instant) -> (Outcome, usize) {
    let mut reader = reader.lock().unwrap_or_else(PoisonError::into_inner);
    let mut spy = spy.lock().unwrap_or_else(PoisonError::into_inner);
    let (result, threads) = match reader.walk_list(&spy) {
        Ok(threads) => (reader.read_walked(&mut spy), threads),
        Err(error) => (Err(error), 0),
    };
    let outcome = Outcome {
        result,
        took: asked.elapsed(),
        by_thread: reader.by_thread(),
    };
    (outcome, threads)
}

impl ReadThread {
    pub fn start(spy: Arc<Mutex<PythonSpy>>) -> ReadThread {
        let reader = Reader::new(&spy.lock().unwrap_or_else(PoisonError::into_inner));
        ReadThread {
            spy,
            reader: Arc::new(Mutex::new(reader)),
            // The first read is made on the other thread: nothing is known of the target yet.
            inline: false,
            thread: None,
        }
    }

    fn spawn(&self) -> std::io::Result<Channel> {
        let (requests, requested) = mpsc::channel::<Instant>();
        let (done, results) = mpsc::channel();
        let (spy, reader) = (self.spy.clone(), self.reader.clone());
        std::thread::Builder::new()
            .name("stack-reads".into())
            .spawn(move || {
                while let Ok(asked) = requested.recv() {
                    if done.send(read_now(&spy, &reader, asked)).is_err() {
                        break;
                    }
                }
            })?;
        Ok((requests, results))
    }

    /// Reads every thread's stack, unless `deadline` or `stop` comes first.
    pub fn read(&mut self, deadline: Option<Instant>, stop: &AtomicBool) -> Waited {
        let asked = Instant::now();
        if self.inline {
            // The list is walked first, here: a target that started many threads since the last
            // read is read on the other thread from this read on.
            let mut reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
            let mut spy = self.spy.lock().unwrap_or_else(PoisonError::into_inner);
            match reader.walk_list(&spy) {
                Ok(threads) if threads <= INLINE_MAX_THREADS => {
                    let result = reader.read_walked(&mut spy);
                    let took = asked.elapsed();
                    self.inline = took <= INLINE_MAX_READ;
                    return Waited::Done(Outcome {
                        result,
                        took,
                        by_thread: reader.by_thread(),
                    });
                }
                Ok(_) => self.inline = false,
                Err(error) => {
                    return Waited::Done(Outcome {
                        result: Err(error),
                        took: asked.elapsed(),
                        by_thread: reader.by_thread(),
                    })
                }
            }
        }
        if self.thread.is_none() {
            match self.spawn() {
                Ok(thread) => self.thread = Some(thread),
                Err(_) => return Waited::Done(ended()),
            }
        }
        let (requests, results) = self.thread.as_ref().expect("started above");
        if requests.send(asked).is_err() {
            return Waited::Done(ended());
        }
        loop {
            let now = Instant::now();
            if stop.load(Ordering::Relaxed) {
                return Waited::Stopped(asked.elapsed());
            }
            let wait = match deadline {
                Some(deadline) if now >= deadline => return Waited::Deadline(asked.elapsed()),
                Some(deadline) => STOP_POLL.min(deadline - now),
                None => STOP_POLL,
            };
            match results.recv_timeout(wait) {
                Ok((outcome, threads)) => {
                    self.inline = threads <= INLINE_MAX_THREADS && outcome.took <= INLINE_MAX_READ;
                    return Waited::Done(outcome);
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Waited::Done(ended()),
            }
        }
    }
}

/// What a read is when the thread is gone (it panicked: the panic hook has said so).
fn ended() -> Outcome {
    Outcome {
        result: Err(ReadError::Failed),
        took: Duration::ZERO,
        by_thread: false,
    }
}
