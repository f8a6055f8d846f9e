//! bare_http: the bare-HTTP ceiling. A may_minihttp server (the fastest known Rust HTTP stack)
//! that reads each request's body and answers 202 to any POST, doing nothing else, so a run
//! against it measures what the machine, the kernel and the load generator allow before any
//! server work. `GET /health` and `POST /api/keys/generate` answer as the contract does (a
//! stand-in key), so that `loadtest` can check the target and set up.
//! Usage: bare_http [ADDR] (default 127.0.0.1:8099).

use std::io::Read;

use may_minihttp::{HttpServer, HttpService, Request, Response};

#[derive(Clone)]
struct Bare;

impl HttpService for Bare {
    fn call(&mut self, req: Request, rsp: &mut Response) -> std::io::Result<()> {
        let path = req.path().to_string();
        let mut body = req.body();
        std::io::copy(&mut body.by_ref(), &mut std::io::sink())?;
        rsp.header("Content-Type: application/json");
        if path == "/health" {
            rsp.body(r#"{"status":"ok","version":"bare_http"}"#);
        } else if path == "/api/keys/generate" {
            rsp.status_code(201, "Created");
            rsp.body(r#"{"api_key":"bare"}"#);
        } else {
            rsp.status_code(202, "Accepted");
            rsp.body(r#"{"status":"accepted"}"#);
        }
        Ok(())
    }
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".into());
    let server = HttpServer(Bare)
        .start(&addr)
        .expect("binding the bare HTTP server");
    eprintln!("bare_http listening on {addr}");
    server.wait();
}
