//! api::renders: the operator's figures (`/api/queue/stats`, `/metrics`, `/dashboard/data`)
//! rendered afresh within a node-wide budget, and the last renders, answered past it. Knows
//! nothing of what it renders.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::error::ApiError;
use crate::http::Response;
use crate::ratelimit::Limiter;

/// Fresh renders of the operator's figures (`/api/queue/stats`, `/metrics`, `/dashboard/data`)
/// per minute, node-wide (the burst too). Past it, a caller gets the last render of exactly
/// what it asked, a moment old (`Age` in milliseconds says how old), or, when there is none,
/// 503 `overloaded`: polling the figures as fast as the pace allows costs the node at most 20
/// renders a second, while a dashboard, a scraper or a test polling a few times a second always
/// gets a fresh one.
const FRESH_RENDERS_PER_MINUTE: u64 = 1200;
/// Renders kept to answer from (route and query string each); the oldest goes first.
const RENDERS_KEPT: usize = 32;

/// One render kept: the answer but its lease.
struct Kept {
    route: &'static str,
    query: String,
    at: Instant,
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Arc<[u8]>,
}

/// The renders budget, and the last renders.
#[derive(Default)]
pub struct Renders {
    budget: Limiter<()>,
    kept: Mutex<VecDeque<Kept>>,
}

impl Renders {
    /// The answer of `route` (its path) to `query`: `render`ed, while the budget lasts; else
    /// the last render, whose body the caller covers with the node's budget (`Context::held`).
    pub(super) fn answer(
        &self,
        route: &'static str,
        query: &str,
        render: impl FnOnce() -> Result<Response, ApiError>,
    ) -> Result<Response, ApiError> {
        let now = Instant::now();
        let kept = || self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if self
            .budget
            .take((), FRESH_RENDERS_PER_MINUTE, 1, now)
            .is_ok()
        {
            let resp = render()?;
            let mut kept = kept();
            kept.retain(|k| k.route != route || k.query != query);
            if kept.len() >= RENDERS_KEPT {
                kept.pop_front();
            }
            kept.push_back(Kept {
                route,
                query: query.to_string(),
                at: now,
                status: resp.status,
                content_type: resp.content_type,
                headers: resp.headers.clone(),
                body: resp.body.as_slice().into(),
            });
            return Ok(resp);
        }
        let kept = kept();
        let k = kept
            .iter()
            .find(|k| k.route == route && k.query == query)
            .ok_or(ApiError::Overloaded)?;
        let mut resp = Response::text(k.status, k.content_type, k.body.to_vec());
        resp.headers.clone_from(&k.headers);
        let age = now.saturating_duration_since(k.at).as_millis();
        Ok(resp.header("age", age.to_string()))
    }
}
