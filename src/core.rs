//! core: one serving core: a pinned monoio runtime with its own `SO_REUSEPORT` listener.
//!
//! Everything a core's connections share lives in `Core` and is touched by that thread alone;
//! what crosses threads (rings, mailboxes, stats, the key cache) lives in `Shared`. The core's
//! event loop never blocks: database work goes to persisters and query threads.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use monoio::io::{CancelHandle, Canceller};
use monoio::net::TcpListener;

use crate::http;
use crate::queue::{Mail, Waiters};
use crate::Shared;

/// Pause after a failed accept (say, out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// How often a draining core looks whether its connections are done.
const DRAIN_POLL: Duration = Duration::from_millis(5);

pub struct Core {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub waiters: Waiters,
    /// Cancels the accept and every idle read at once when shutdown begins.
    canceller: RefCell<Canceller>,
    pub draining: Cell<bool>,
    pub connections: Cell<usize>,
    /// `Date` header value, rebuilt once a second.
    date: RefCell<(u64, String)>,
    request_ids: Cell<u64>,
}

impl Core {
    fn new(id: usize, shared: Arc<Shared>) -> Core {
        // Request ids: core, then a per-run random tag, then a counter; unique within a run and
        // unlikely to repeat across runs.
        let mut tag = [0u8; 4];
        let _ = getrandom::fill(&mut tag);
        Core {
            id,
            shared,
            waiters: Waiters::default(),
            canceller: RefCell::new(Canceller::new()),
            draining: Cell::new(false),
            connections: Cell::new(0),
            date: RefCell::new((0, String::new())),
            request_ids: Cell::new((u32::from_be_bytes(tag) as u64) << 24),
        }
    }

    pub fn cancel_handle(&self) -> CancelHandle {
        self.canceller.borrow().handle()
    }

    /// The current `Date` header value.
    pub fn date(&self) -> std::cell::Ref<'_, str> {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if self.date.borrow().0 != secs {
            *self.date.borrow_mut() = (secs, httpdate::fmt_http_date(now));
        }
        std::cell::Ref::map(self.date.borrow(), |(_, s)| s.as_str())
    }

    pub fn next_request_id(&self) -> String {
        let n = self.request_ids.get().wrapping_add(1);
        self.request_ids.set(n);
        format!("{:02x}{:014x}", self.id, n & 0x00ff_ffff_ffff_ffff)
    }

    fn begin_drain(&self) {
        self.draining.set(true);
        let old = self.canceller.replace(Canceller::new());
        drop(old.cancel());
    }
}

/// Runs core `id` on the calling thread until shutdown has drained its connections.
pub fn run(id: usize, shared: Arc<Shared>, listener: std::net::TcpListener) -> anyhow::Result<()> {
    if let Some(cpu) =
        core_affinity::get_core_ids().and_then(|ids| ids.get(id % ids.len()).copied())
    {
        if !core_affinity::set_for_current(cpu) {
            tracing::warn!(core = id, "could not pin the core's thread to a CPU");
        }
    }
    let uring = monoio::utils::detect_uring();
    if id == 0 {
        if uring {
            tracing::info!("I/O driver: io_uring");
        } else {
            tracing::warn!("I/O driver: legacy epoll (io_uring is unavailable or refused here, e.g. by a container's seccomp profile)");
        }
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        let core = Rc::new(Core::new(id, shared));
        monoio::spawn(mail_loop(core.clone()));
        accept_loop(&core, &listener).await;
        tracing::debug!(core = id, "accept loop ended");
        drop(listener);
        let deadline = Instant::now() + core.shared.config.shutdown_timeout;
        while core.connections.get() > 0 && Instant::now() < deadline {
            monoio::time::sleep(DRAIN_POLL).await;
        }
        if core.connections.get() > 0 {
            tracing::warn!(
                core = id,
                open = core.connections.get(),
                "shutdown budget spent with connections still open"
            );
        }
        Ok(())
    })
}

async fn accept_loop(core: &Rc<Core>, listener: &TcpListener) {
    loop {
        let accepted = listener.cancelable_accept(core.cancel_handle()).await;
        if core.draining.get() {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                let ip = peer.ip().to_canonical();
                if core.connections.get() >= core.shared.config.connections_max {
                    monoio::spawn(http::conn::refuse(core.clone(), stream, ip));
                } else {
                    monoio::spawn(http::conn::serve(core.clone(), stream, ip));
                }
            }
            Err(e) => {
                tracing::warn!(core = core.id, error = %e, "accept failed");
                monoio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Delivers completions from persisters to waiting requests, and starts the drain on shutdown.
async fn mail_loop(core: Rc<Core>) {
    let mailbox = &core.shared.hub.mailboxes[core.id];
    loop {
        match mailbox.next(core.draining.get()).await {
            Mail::Completions(batch) => {
                for c in batch {
                    core.waiters.complete(c);
                }
            }
            Mail::Shutdown => {
                tracing::debug!(core = core.id, "drain begins");
                core.begin_drain()
            }
        }
    }
}
