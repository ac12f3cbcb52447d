//! Stack reads on a thread of their own, so that the sampling loop keeps `--duration` and Ctrl-C
//! whatever a read costs.
//!
//! A read is several reads of the target's memory per frame: 300 threads 500 frames deep take
//! seconds, and the target decides how deep its threads are. The loop hands each read to this
//! thread and waits for it, looking at the stop flag and the deadline meanwhile; a read still
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

pub struct ReadThread {
    requests: mpsc::Sender<Instant>,
    results: mpsc::Receiver<Outcome>,
}

impl ReadThread {
    pub fn start(spy: Arc<Mutex<PythonSpy>>) -> std::io::Result<ReadThread> {
        let (requests, requested) = mpsc::channel::<Instant>();
        let (done, results) = mpsc::channel();
        let mut reader = Reader::new(&spy.lock().unwrap_or_else(PoisonError::into_inner));
        std::thread::Builder::new()
            .name("stack-reads".into())
            .spawn(move || {
                while let Ok(asked) = requested.recv() {
                    let mut spy = spy.lock().unwrap_or_else(PoisonError::into_inner);
                    let result = reader.read(&mut spy);
                    drop(spy);
                    let outcome = Outcome {
                        result,
                        took: asked.elapsed(),
                        by_thread: reader.by_thread(),
                    };
                    if done.send(outcome).is_err() {
                        break;
                    }
                }
            })?;
        Ok(ReadThread { requests, results })
    }

    /// Reads every thread's stack, unless `deadline` or `stop` comes first.
    pub fn read(&mut self, deadline: Option<Instant>, stop: &AtomicBool) -> Waited {
        let asked = Instant::now();
        if self.requests.send(asked).is_err() {
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
            match self.results.recv_timeout(wait) {
                Ok(outcome) => return Waited::Done(outcome),
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
