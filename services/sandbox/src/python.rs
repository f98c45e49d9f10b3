//! Python runs: CPython for WASI started on a thread of its own with a small boot program
//! that waits on stdin for the caller's program, then runs it as `python -c` would. The
//! start-up (about a quarter of a billion instructions) happens before the program
//! arrives, so a pool of interpreters started ahead of demand makes a run cost only its
//! own code. Each interpreter runs exactly one program and is then thrown away: nothing
//! of one run is ever seen by another. Without a pooled interpreter, a run starts its own
//! the same way, so fuel, time and output count the same either way: the program's, not
//! the interpreter's start-up.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{Notify, oneshot};
use wasmtime::Module;

use crate::error::{Result, SandboxError};
use crate::metrics::SandboxMetrics;
use crate::runner::{self, Claim, Controls, Exit, Feed, Launch, Status};
use crate::runtimes::Runtimes;
use crate::workspace::RunDir;

/// The interpreter's command line: read the program framed on stdin (u32 little-endian
/// code length and argument count, each argument as a u32 length and its bytes, then the
/// code; the rest of stdin is the program's), then run it in a clean `__main__` with
/// `sys.argv`, fresh import path caches and the traceback as `python -c` gives them. It reads
/// with os.read, so not one byte of the program's own stdin is taken.
const BOOT: &str = r#"
def _llmesh_run():
    import os, sys
    compile("pass", "<string>", "exec")  # its first call sets up the compiler: not the program's
    def take(n):
        out = b""
        while len(out) < n:
            got = os.read(0, n - len(out))
            if not got:
                os._exit(0)
            out += got
        return out
    def u32():
        return int.from_bytes(take(4), "little")
    size, count = u32(), u32()
    args = [take(u32()).decode() for _ in range(count)]
    code = take(size).decode()
    os.urandom(1)  # the host starts metering the program here
    sys.argv[:] = ["-c", *args]
    sys.orig_argv[:] = ["python", "-c", code, *args]
    # Path entries are looked at afresh: the workspace was filled after start-up.
    sys.path_importer_cache.clear()
    main = sys.modules["__main__"].__dict__
    for name in [n for n in main if not (n.startswith("__") and n.endswith("__"))]:
        del main[name]
    try:
        exec(compile(code, "<string>", "exec"), main)
    except SystemExit:
        raise
    except BaseException as e:
        e = e.with_traceback(e.__traceback__.tb_next)  # without this function's frame
        sys.excepthook(type(e), e, e.__traceback__)
        sys.exit(1)
_llmesh_run()
"#;

/// The interpreter's environment: unbuffered (output streams as it is written), no
/// bytecode files in the workspace, the workspace's lib/ importable.
fn environment() -> Vec<(String, String)> {
    [
        ("PYTHONUNBUFFERED", "1"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("PYTHONPATH", "/workspace/lib:/workspace"),
        ("HOME", "/workspace"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Frames a program for the boot program.
fn frame(code: &str, args: &[String], stdin: &[u8]) -> Bytes {
    let size = 8 + args.iter().map(|a| 4 + a.len()).sum::<usize>() + code.len() + stdin.len();
    let mut out = BytesMut::with_capacity(size);
    out.put_u32_le(code.len() as u32);
    out.put_u32_le(args.len() as u32);
    for a in args {
        out.put_u32_le(a.len() as u32);
        out.put_slice(a.as_bytes());
    }
    out.put_slice(code.as_bytes());
    out.put_slice(stdin);
    out.freeze()
}

/// An interpreter started and (soon) waiting for its program.
struct Started {
    feed: Closing,
    controls: Arc<Controls>,
    dir: RunDir,
    exit: oneshot::Receiver<Exit>,
}

impl Started {
    /// Starts an interpreter on a thread of its own, within `memory_bytes` until claimed.
    fn start(runtimes: &Arc<Runtimes>, module: Module, memory_bytes: usize) -> Result<Started> {
        let dir = RunDir::empty()?;
        let controls = Controls::new(memory_bytes);
        let feed = Feed::for_guest(&controls);
        let (tx, exit) = oneshot::channel();
        let (guest_feed, guest_controls) = (feed.clone(), controls.clone());
        let workspace = dir.path.clone();
        let runtimes = runtimes.clone();
        std::thread::Builder::new()
            .name("sandbox-python".into())
            .spawn(move || {
                let args = ["python".to_owned(), "-c".to_owned(), BOOT.to_owned()];
                let env = environment();
                let exit = runner::run(
                    runtimes.engine(),
                    runtimes.linker(),
                    Launch {
                        module: &module,
                        args: &args,
                        env: &env,
                        stdin: guest_feed,
                        workspace: &workspace,
                        boots: true,
                    },
                    guest_controls,
                );
                let _ = tx.send(exit);
            })
            .map_err(|e| SandboxError::Internal(format!("starting a python thread: {e}")))?;
        Ok(Started {
            feed: Closing(feed),
            controls,
            dir,
            exit,
        })
    }

    /// Whether the interpreter has ended without a program (its start-up failed).
    fn ended(&mut self) -> bool {
        !matches!(
            self.exit.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        )
    }
}

/// A guest's stdin that ends when dropped: an interpreter never given a program reads
/// end of file and exits.
struct Closing(Feed);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A Python run under way: its workspace copy and, when it ends, its exit.
pub struct Running {
    pub dir: RunDir,
    pub exit: oneshot::Receiver<Exit>,
}

/// The interpreters waiting for programs, refilled in the background.
pub struct PythonPool {
    runtimes: Arc<Runtimes>,
    size: usize,
    /// What an interpreter may hold before it is claimed (the largest ceiling).
    memory_bytes: usize,
    idle: Mutex<VecDeque<Started>>,
    refill: Arc<Notify>,
    refilling: AtomicBool,
    metrics: SandboxMetrics,
}

/// After an interpreter dies before its program arrives, the refiller waits this long.
const BACKOFF: Duration = Duration::from_secs(5);

impl PythonPool {
    pub fn new(
        runtimes: Arc<Runtimes>,
        size: usize,
        memory_bytes: usize,
        metrics: SandboxMetrics,
    ) -> Arc<PythonPool> {
        Arc::new(PythonPool {
            runtimes,
            size,
            memory_bytes,
            idle: Mutex::new(VecDeque::new()),
            refill: Arc::new(Notify::new()),
            refilling: AtomicBool::new(false),
            metrics,
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Started>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `size` interpreters started from now on (once the module is compiled).
    pub fn fill(self: &Arc<Self>, module: &Module) {
        if self.size == 0 || self.refilling.swap(true, Ordering::SeqCst) {
            return;
        }
        // The refiller holds the pool weakly: dropping the service stops it.
        let pool = Arc::downgrade(self);
        let refill = self.refill.clone();
        let module = module.clone();
        tokio::spawn(async move {
            loop {
                let Some(this) = pool.upgrade() else { return };
                let mut failed = false;
                loop {
                    let mut idle = this.idle();
                    // Interpreters that died waiting (a failed start-up) are dropped.
                    let before = idle.len();
                    idle.retain_mut(|s| !s.ended());
                    failed |= idle.len() < before;
                    if idle.len() >= this.size || failed {
                        break;
                    }
                    match Started::start(&this.runtimes, module.clone(), this.memory_bytes) {
                        Ok(started) => idle.push_back(started),
                        Err(e) => {
                            tracing::warn!(error = %e, "starting a pooled python interpreter failed");
                            failed = true;
                            break;
                        }
                    }
                }
                this.metrics.pool_idle.set(this.idle().len() as i64);
                if failed {
                    tracing::warn!(
                        "a pooled python interpreter ended before it was used; retrying in {} s",
                        BACKOFF.as_secs()
                    );
                    drop(this);
                    tokio::time::sleep(BACKOFF).await;
                    continue;
                }
                drop(this);
                refill.notified().await;
            }
        });
    }

    /// An interpreter for one run: a pooled one that is ready (or the oldest still
    /// starting), or one started now.
    fn take(&self, module: &Module) -> Result<Started> {
        let taken = {
            let mut idle = self.idle();
            idle.retain_mut(|s| !s.ended());
            let ready = idle.iter().position(|s| s.feed.0.asked()).or(
                // None ready yet: the oldest is closest to it.
                (!idle.is_empty()).then_some(0),
            );
            let taken = ready.and_then(|i| idle.remove(i));
            self.metrics.pool_idle.set(idle.len() as i64);
            taken
        };
        self.refill.notify_one();
        match taken {
            Some(started) => {
                self.metrics
                    .python_starts
                    .with_label_values(&["pool"])
                    .inc();
                Ok(started)
            }
            None => {
                self.metrics
                    .python_starts
                    .with_label_values(&["fresh"])
                    .inc();
                Started::start(&self.runtimes, module.clone(), self.memory_bytes)
            }
        }
    }

    /// Runs `code` with `args` and `stdin` in an interpreter of its own, against a copy of
    /// `files`, within `claim`.
    pub async fn run(
        &self,
        module: &Module,
        files: BTreeMap<String, Vec<u8>>,
        code: &str,
        args: &[String],
        stdin: &[u8],
        claim: Claim,
    ) -> Result<Running> {
        let started = self.take(module)?;
        // The workspace goes in before the program: the guest reads nothing until then.
        let started = tokio::task::spawn_blocking(move || {
            let mut started = started;
            started.dir.fill(files).map(|()| started)
        })
        .await
        .map_err(|e| SandboxError::Internal(format!("workspace copy: {e}")))??;
        let Started {
            feed,
            controls,
            dir,
            exit,
        } = started;
        let claimed_at = Instant::now();
        if let Err((_, message)) = controls.claim(claim) {
            // Too little memory for the interpreter itself: the run ends before it starts
            // (and the interpreter, its stdin closed, exits).
            let (tx, exit) = oneshot::channel();
            let _ = tx.send(Exit {
                status: Status::OutOfMemory,
                exit_code: -1,
                message,
                fuel_used: 0,
                peak_memory_bytes: 0,
                wall: claimed_at.elapsed(),
            });
            return Ok(Running { dir, exit });
        }
        feed.0.push(frame(code, args, stdin));
        drop(feed);
        Ok(Running { dir, exit })
    }
}

impl Drop for PythonPool {
    fn drop(&mut self) {
        // The refiller wakes, finds the pool gone, and ends.
        self.refill.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_framed_as_the_boot_program_reads_them() {
        let framed = frame("print(1)", &["a".into(), "bc".into()], b"in");
        let mut want = Vec::new();
        want.extend(8u32.to_le_bytes());
        want.extend(2u32.to_le_bytes());
        want.extend(1u32.to_le_bytes());
        want.extend(b"a");
        want.extend(2u32.to_le_bytes());
        want.extend(b"bc");
        want.extend(b"print(1)");
        want.extend(b"in");
        assert_eq!(&framed[..], &want[..]);
    }
}
