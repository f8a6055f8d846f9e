//! side: a runtime of its own, on one thread, for work that shares the machine with the
//! measured client but stands for another machine: `hostile`'s attackers, `webhook`'s
//! receiver. Its tasks then never delay the measured client's in one scheduler, and it can be
//! niced or pinned so that it takes only spare CPU, or a CPU of its own.

use tokio::runtime::Runtime;

/// A runtime that shuts down in the background when dropped, so that it may be dropped inside
/// another runtime, on an error path too (dropping a `Runtime` there panics).
pub struct Side(Option<Runtime>);

impl std::ops::Deref for Side {
    type Target = Runtime;

    fn deref(&self) -> &Runtime {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A one-thread runtime named `name`, its thread at niceness `nice` (0 leaves it) and pinned
/// to `cpu` when given.
pub fn runtime(name: &'static str, nice: i32, cpu: Option<usize>) -> std::io::Result<Side> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .on_thread_start(move || {
            lower_priority(name, nice);
            if let Some(cpu) = cpu {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                    eprintln!("{name}: could not pin to CPU {cpu}");
                }
            }
        })
        .enable_all()
        .build()?;
    Ok(Side(Some(rt)))
}

/// Lowers the calling thread's priority to niceness `nice` (on Linux a thread's own).
fn lower_priority(name: &str, nice: i32) {
    if nice == 0 {
        return;
    }
    // `None` is the caller, which Linux takes to mean the calling thread.
    if let Err(e) = rustix::process::setpriority_process(None, nice) {
        eprintln!("{name}: setpriority({nice}): {e}");
    }
}
