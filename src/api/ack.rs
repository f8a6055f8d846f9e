//! api::ack: marking events delivered. `POST /api/ack/{id}` is idempotent (a second ack answers
//! the same body, with the first ack's time); `POST /api/ack` takes up to 1000 ids. Unknown,
//! malformed and other organizations' ids are the same 404 / `not_found`: nothing tells them
//! apart.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::json;

use super::context::{event_id, path_event_id, Context};
use super::error::{parse_body, ApiError};
use crate::db::events;
use crate::db::orgs::Org;
use crate::db::Work;
use crate::http::{Request, Response};
use crate::ids::{rfc3339, EventId};

const IDS_MAX: usize = 1000;

pub async fn one(ctx: &Context, org: &Org, req: &Request<'_>) -> Result<Response, ApiError> {
    let id = path_event_id(req.path, "/api/ack/", "")?;
    let org_id = org.id;
    let found = ctx
        .queries
        .run(Work::Org(org_id), "ack", move |c| {
            events::acknowledge(c, org_id, &[id])
        })
        .await?;
    let (_, at) = found.first().ok_or(ApiError::EventNotFound)?;
    Ok(Response::json_value(
        200,
        &json!({
            "id": id.to_string(),
            "status": "delivered",
            "delivered_at": rfc3339(*at).to_string(),
        }),
    ))
}

#[derive(Deserialize)]
struct AckIn {
    event_ids: Option<Vec<serde_json::Value>>,
}

/// The ids of a bulk ack, each once, in the order first given. A string that is not a UUID
/// names no event and is simply not found; anything but a string is a bad request.
fn requested_ids(values: Vec<serde_json::Value>) -> Result<Vec<String>, ApiError> {
    let mut seen = HashSet::new();
    let mut ids = Vec::with_capacity(values.len());
    for v in values {
        let serde_json::Value::String(id) = v else {
            return Err(ApiError::InvalidRequest(
                "`event_ids` must hold event id strings".into(),
            ));
        };
        if seen.insert(id.clone()) {
            ids.push(id);
        }
    }
    Ok(ids)
}

pub async fn many(ctx: &Context, org: &Org, req: &Request<'_>) -> Result<Response, ApiError> {
    let input: AckIn = parse_body(req.body, |why| {
        ApiError::InvalidRequest(format!("expected {{\"event_ids\": [id, ...]}}: {why}"))
    })?;
    let requested = input
        .event_ids
        .filter(|ids| (1..=IDS_MAX).contains(&ids.len()))
        .ok_or_else(|| {
            ApiError::InvalidRequest(format!("`event_ids` must hold 1 to {IDS_MAX} ids"))
        })?;
    let requested = requested_ids(requested)?;
    let ids: Vec<EventId> = requested.iter().filter_map(|s| event_id(s)).collect();
    let org_id = org.id;
    let found = ctx
        .queries
        .run(Work::Org(org_id), "ack batch", move |c| {
            events::acknowledge(c, org_id, &ids)
        })
        .await?;
    let found: HashSet<EventId> = found.into_iter().map(|(id, _)| id).collect();
    let (acknowledged, not_found): (Vec<String>, Vec<String>) = requested
        .into_iter()
        .partition(|s| event_id(s).is_some_and(|id| found.contains(&id)));
    Ok(Response::json_value(
        200,
        &json!({"acknowledged": acknowledged.len(), "not_found": not_found}),
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn bulk_ids_count_once_in_first_order_and_must_be_strings() {
        let ids = |v: serde_json::Value| requested_ids(serde_json::from_value(v).unwrap());
        assert_eq!(
            ids(json!(["b", "a", "b", "c", "a"])).unwrap(),
            ["b", "a", "c"]
        );
        for bad in [json!([7]), json!(["a", null]), json!([["a"]])] {
            assert_eq!(ids(bad).unwrap_err().code(), "invalid_request");
        }
    }
}
