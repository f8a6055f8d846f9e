//! core: one serving core: a pinned monoio runtime with its own `SO_REUSEPORT` listener, its
//! accept loop, and its two background tasks (completions from the persisters; the drain).
//! Imports `http`, `api`, `queue` and `shutdown`.
//!
//! What the core's connections share lives in its `http::Server` (connections, drain state) and
//! its `api::Context` (what handlers use), both touched by this thread alone. The event loop
//! never blocks: database work goes to persisters and query threads.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpListener;

use crate::queue::{deliver_mail, Hub};
use crate::shutdown::Stop;
use crate::{api, http};

/// Pause after a failed accept (say, out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// How often a draining core looks whether its connections are done.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// What every core is built from.
#[derive(Clone)]
pub struct Parts {
    pub http: http::Limits,
    /// The node's bound on large bodies and pace of answers that serve no one, shared by
    /// every core.
    pub guards: http::Guards,
    pub api: Arc<api::Shared>,
    pub hub: Arc<Hub>,
    pub stop: Arc<Stop>,
}

/// Runs core `id` on the calling thread until the drain has finished its connections.
pub fn run(id: usize, parts: Parts, listener: std::net::TcpListener) -> anyhow::Result<()> {
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
        let server = Rc::new(http::Server::new(id, parts.http, parts.guards));
        let api = Rc::new(api::Context::new(id, &parts.api));
        {
            let (hub, api) = (parts.hub.clone(), api.clone());
            monoio::spawn(async move { deliver_mail(&hub.mailboxes[id], api.waiters()).await });
        }
        let drain_by = {
            let (stop, server) = (parts.stop.clone(), server.clone());
            monoio::spawn(async move {
                let by = stop.drained(id).await;
                tracing::debug!(core = id, "drain begins");
                server.begin_drain();
                by
            })
        };
        accept_loop(&server, &api, &listener).await;
        drop(listener);
        let deadline: Instant = drain_by.await;
        while server.open_connections() > 0 && Instant::now() < deadline {
            monoio::time::sleep(DRAIN_POLL).await;
        }
        if server.open_connections() > 0 {
            tracing::warn!(
                core = id,
                open = server.open_connections(),
                "shutdown budget spent with connections still open"
            );
        }
        Ok(())
    })
}

/// Accepts until the drain begins; each connection runs as its own task.
async fn accept_loop(server: &Rc<http::Server>, api: &Rc<api::Context>, listener: &TcpListener) {
    loop {
        let accepted = listener.cancelable_accept(server.cancel_handle()).await;
        if server.is_draining() {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                let (server, api, ip) = (server.clone(), api.clone(), peer.ip().to_canonical());
                if server.at_capacity() {
                    monoio::spawn(http::conn::refuse(server, api, stream, ip));
                } else {
                    monoio::spawn(http::conn::serve(server, api, stream, ip));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                monoio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}
