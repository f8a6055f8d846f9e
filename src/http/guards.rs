//! http::guards: what every core's HTTP layer shares to guard the node.

use std::sync::Arc;

use super::budget::Budget;
use super::pace::Pace;

/// The node's bound on the memory large bodies hold, and the pace of answers that serve no
/// one; every core holds a clone.
#[derive(Clone, Debug)]
pub struct Guards {
    pub budget: Arc<Budget>,
    pub pace: Arc<Pace>,
}

impl Guards {
    /// The guards of a node of `cores` cores (see `Limits` for the settings).
    pub fn new(body_budget_bytes: usize, pace_answers_per_s: u32, cores: usize) -> Guards {
        Guards {
            budget: Budget::new(body_budget_bytes),
            pace: Pace::new(pace_answers_per_s, cores),
        }
    }
}
