//! The OpenAPI document and the API docs match the router, both ways.

use serde_json::Value;
use testkit::*;
use triggers::api::{Route, ROUTES};
use triggers::http::Method;

fn method(name: &str) -> Method {
    match name {
        "get" => Method::Get,
        "post" => Method::Post,
        "delete" => Method::Delete,
        "head" => Method::Head,
        other => panic!("unexpected method {other}"),
    }
}

fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in item.as_object().unwrap().keys() {
            ops.push((m.clone(), path.clone()));
        }
    }
    ops
}

#[test]
fn every_documented_operation_is_routed_and_every_route_is_documented() {
    let doc: Value = serde_json::from_str(triggers::api::OPENAPI_JSON).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let ops = operations(&doc);
    for (m, path) in &ops {
        let concrete = path.replace("{id}", "01a2192b-490c-70b2-aae1-ed3987281eb8");
        assert!(
            Route::resolve(method(m), &concrete).is_ok(),
            "{m} {path} is documented but not routed"
        );
    }
    for (pattern, _, methods) in ROUTES {
        for m in methods.list.iter().filter(|m| **m != Method::Head) {
            let key = m.as_str().to_ascii_lowercase();
            assert!(
                ops.contains(&(key.clone(), pattern.to_string())),
                "{key} {pattern} is routed but not in docs/openapi.json"
            );
        }
    }
}

#[test]
fn the_api_docs_show_every_operation() {
    let doc: Value = serde_json::from_str(triggers::api::OPENAPI_JSON).unwrap();
    let md = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
    for (m, path) in operations(&doc) {
        let heading = format!("### {} {path}\n", m.to_ascii_uppercase());
        assert!(
            md.contains(&heading),
            "docs/api.md lacks `{}`",
            heading.trim()
        );
    }
    assert!(md.matches("curl ").count() >= operations(&doc).len());
}

#[test]
fn the_server_serves_the_document() {
    let s = Server::start(&[]);
    let r = call(s.addr, "GET", "/openapi.json", None, "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["info"]["title"], "Triggers API");
}
