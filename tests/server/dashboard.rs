//! The dashboard: its admin guard over plain HTTP, its data, and the page itself in a real
//! browser (headless Chromium from the OS packages, driven over the DevTools protocol): it
//! loads under its own Content-Security-Policy, draws, and updates as events arrive.
//!
//! Without Chromium the browser test says so and passes, unless `TRIGGERS_BROWSER_TESTS=required`
//! (as `.ci/run` sets, after installing `chromium-headless-shell`): then it fails.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use testkit::{new_org, post_numbered, Client, Server};

const TOKEN: &str = "dash-admin-token";

fn basic(password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("operator:{password}"));
    format!("Basic {encoded}")
}

fn get(s: &Server, path: &str, authorization: Option<&str>) -> testkit::Resp {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    Client::connect(s.addr)
        .unwrap()
        .request("GET", path, &headers, b"")
        .unwrap()
}

#[test]
fn the_dashboard_needs_the_admin_token_and_a_browser_may_give_it_as_a_password() {
    let s = Server::start(&["--admin-token", TOKEN]);
    for (authorization, status) in [
        (None, 401),
        (Some(basic("wrong")), 401),
        (Some(format!("Bearer {TOKEN}")), 200),
        (Some(basic(TOKEN)), 200),
    ] {
        for path in ["/dashboard", "/dashboard/data", "/api/queue/stats"] {
            let r = get(&s, path, authorization.as_deref());
            assert_eq!(r.status, status, "{path} with {authorization:?}");
            if status == 401 {
                assert_eq!(r.code(), "admin_token_required");
                // The challenge a browser answers with its sign-in prompt.
                assert!(r
                    .headers
                    .iter()
                    .any(|(k, v)| k.eq_ignore_ascii_case("www-authenticate")
                        && v.starts_with("Basic realm=")));
            }
        }
    }
    let page = get(&s, "/dashboard", Some(&basic(TOKEN)));
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let policy = page.header("content-security-policy").unwrap();
    assert!(policy.contains("default-src 'none'") && !policy.contains("unsafe"));
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("uPlot") && !html.contains("<script src"));
}

#[test]
fn dashboard_data_gives_each_second_its_own_rates_and_percentiles() {
    let s = Server::start(&[]);
    let data = |since: Option<f64>| {
        let path = since.map_or("/dashboard/data".to_string(), |t| {
            format!("/dashboard/data?since={t}")
        });
        let r = get(&s, &path, None);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    };
    // The first read starts the timeline; a point needs a second sample a step later.
    let first = data(None);
    assert_eq!(first["points"]["t"], json!([]));
    let (key, _) = new_org(s.addr, "dash-data");
    post_numbered(s.addr, &key, 20, Duration::ZERO);
    std::thread::sleep(Duration::from_millis(1_100));
    let second = data(None);
    let points = &second["points"];
    assert_eq!(points["t"].as_array().unwrap().len(), 1, "{points}");
    let dt = points["dt"][0].as_f64().unwrap();
    let committed = points["rates"]["committed"][0].as_f64().unwrap();
    assert!(
        (committed * dt - 20.0).abs() < 0.1,
        "{committed}/s over {dt} s"
    );
    assert_eq!(points["latency_us"]["ingest"]["count"][0], json!(20));
    assert!(points["latency_us"]["ingest"]["p99"][0].as_u64().unwrap() > 0);
    assert_eq!(second["node"]["events"]["committed"], json!(20));
    // Nothing happened in the next second: its point has a rate of 0 and no percentiles.
    std::thread::sleep(Duration::from_millis(1_100));
    let t = points["t"][0].as_f64().unwrap();
    let third = data(Some(t));
    assert_eq!(third["points"]["t"].as_array().unwrap().len(), 1);
    assert_eq!(third["points"]["rates"]["committed"][0], json!(0.0));
    assert_eq!(
        third["points"]["latency_us"]["ingest"]["p99"][0],
        Value::Null
    );
    let bad = get(&s, "/dashboard/data?since=soon", None);
    assert_eq!((bad.status, bad.code()), (400, "invalid_parameter".into()));
}

/// The Chromium binary: `CHROMIUM`, else the first of the usual names on `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let names = [
        "chromium-headless-shell",
        "chromium",
        "chromium-browser",
        "google-chrome",
    ];
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// A headless Chromium and a DevTools session with its one page.
struct Browser {
    child: Child,
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    /// Exceptions and console errors the page reported.
    problems: Vec<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch(exe: &PathBuf) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        // Its own process group, killed whole: a distribution's `chromium` is often a shell
        // script around the browser, which a kill of the script would leave running.
        let mut child = Command::new(exe)
            .process_group(0)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1400,1300",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting Chromium");
        // It says where its DevTools endpoint listens on stderr.
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let Ok(browser_url) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!("Chromium did not open its DevTools endpoint");
        };
        let host = browser_url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .unwrap()
            .to_string();
        let page_url = Self::page_target(&host);
        let stream = TcpStream::connect(&host).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (ws, _) = tungstenite::client(page_url.as_str(), stream).expect("DevTools handshake");
        Browser {
            child,
            ws,
            next_id: 0,
            problems: Vec::new(),
            _profile: profile,
        }
    }

    /// The WebSocket address of the browser's page, from its `/json/list`, once the page is
    /// there. (That endpoint answers HTTP/1.1 only, and keeps the connection open.)
    fn page_target(host: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Its Host must name an address: it refuses others (DNS rebinding).
            let mut c = Client::connect(host.parse().unwrap()).unwrap();
            c.send_raw(format!("GET /json/list HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
                .unwrap();
            let answer = c.read_response().unwrap();
            let targets: Vec<Value> = serde_json::from_slice(&answer.body).unwrap_or_default();
            let page = targets
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str());
            if let Some(url) = page {
                return url.to_string();
            }
            assert!(Instant::now() < deadline, "no page target: {targets:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Calls a DevTools method and returns its result, noting the page's problems reported
    /// meanwhile.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .unwrap();
        loop {
            let msg = self.ws.read().expect("a DevTools message");
            let Ok(text) = msg.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap();
            match v["method"].as_str() {
                Some("Runtime.exceptionThrown") => self
                    .problems
                    .push(v["params"]["exceptionDetails"].to_string()),
                Some("Log.entryAdded") if v["params"]["entry"]["level"] == "error" => {
                    self.problems.push(v["params"]["entry"]["text"].to_string());
                }
                _ => {}
            }
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        assert!(r["exceptionDetails"].is_null(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page.
    fn wait_for(&mut self, what: &str, expression: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while self.eval(expression) != json!(true) {
            let state = self.eval("JSON.stringify(window.triggersDashboard)");
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; page state {state}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Pixels of the canvas of chart `id` within a few steps of the RGB colour of its first line.
fn first_line_pixels(chart: &str) -> String {
    format!(
        r##"(() => {{
            const c = document.querySelector("#chart-{chart} canvas");
            const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < px.length; i += 4) {{
                if (Math.abs(px[i] - 37) < 12 && Math.abs(px[i + 1] - 99) < 12
                    && Math.abs(px[i + 2] - 235) < 12 && px[i + 3] > 200) n++;
            }}
            return n;
        }})()"##
    )
}

#[test]
fn the_dashboard_loads_draws_and_updates_in_a_real_browser() {
    let Some(exe) = chromium() else {
        let required = std::env::var("TRIGGERS_BROWSER_TESTS").is_ok_and(|v| v == "required");
        assert!(
            !required,
            "TRIGGERS_BROWSER_TESTS=required but no Chromium was found: \
             apt-get install chromium-headless-shell, or set CHROMIUM"
        );
        eprintln!(
            "NOT RUN: no Chromium (apt-get install chromium-headless-shell, or set CHROMIUM)"
        );
        return;
    };
    let s = Server::start(&["--admin-token", TOKEN]);
    let mut browser = Browser::launch(&exe);
    browser.call("Runtime.enable", json!({}));
    browser.call("Log.enable", json!({}));
    // What a browser sends once its user typed the token into the sign-in prompt.
    browser.call("Network.enable", json!({}));
    browser.call(
        "Network.setExtraHTTPHeaders",
        json!({"headers": {"Authorization": basic(TOKEN)}}),
    );
    browser.call(
        "Page.navigate",
        json!({"url": format!("{}/dashboard", s.url())}),
    );
    let within = Duration::from_secs(30);
    browser.wait_for(
        "the page polls and is live",
        "window.triggersDashboard?.status === 'live' && triggersDashboard.polls >= 2",
        within,
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('.chart canvas').length"),
        json!(8),
        "a canvas per chart"
    );
    let draws = browser.eval("triggersDashboard.draws").as_u64().unwrap();
    let idle_blue = browser
        .eval(&first_line_pixels("throughput"))
        .as_u64()
        .unwrap();

    // Events arrive over a couple of seconds: the charts must show them.
    let bearer = format!("Bearer {TOKEN}");
    let org = Client::connect(s.addr)
        .unwrap()
        .request(
            "POST",
            "/api/keys/generate",
            &[("Authorization", &bearer)],
            br#"{"organization_name":"dash-browser","tier":"unlimited"}"#,
        )
        .unwrap();
    assert_eq!(org.status, 201);
    let key = org.json()["api_key"].as_str().unwrap().to_string();
    post_numbered(s.addr, &key, 40, Duration::from_millis(50));
    browser.wait_for(
        "the committed events are drawn",
        "triggersDashboard.series('rate.committed').some((v) => v > 0) \
         && triggersDashboard.series('ms.ingest.p99').some((v) => v > 0)",
        within,
    );
    browser.wait_for(
        "the tiles count them",
        "[...document.querySelectorAll('.tile')].some((t) => \
         t.querySelector('h2').textContent === 'Events committed' \
         && t.querySelector('small').textContent === '40 since start')",
        within,
    );
    let now_draws = browser.eval("triggersDashboard.draws").as_u64().unwrap();
    assert!(
        now_draws > draws,
        "the charts were redrawn: {draws} -> {now_draws}"
    );
    // The first line of the throughput chart (requests, blue) rose off the axis, and the
    // ingest chart drew its p50 line: both are pixels on their canvases.
    let busy_blue = browser
        .eval(&first_line_pixels("throughput"))
        .as_u64()
        .unwrap();
    assert!(
        busy_blue > idle_blue,
        "requests line drawn: {idle_blue} -> {busy_blue} pixels"
    );
    let ingest_blue = browser.eval(&first_line_pixels("ingest")).as_u64().unwrap();
    assert!(
        ingest_blue > 20,
        "ingest p50 line drawn: {ingest_blue} pixels"
    );

    let shot = browser.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let path = std::env::var_os("DASHBOARD_SCREENSHOT").map_or_else(
        || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"),
        PathBuf::from,
    );
    std::fs::write(&path, png).unwrap();
    eprintln!("dashboard screenshot: {}", path.display());

    let errors = browser.eval("triggersDashboard.errors");
    assert_eq!(errors, json!([]), "the page reported problems");
    assert!(
        browser.problems.is_empty(),
        "console: {:?}",
        browser.problems
    );
}

/// Every string under a key named `key`, anywhere in `v`.
fn strings_under<'a>(v: &'a Value, key: &str, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                match child.as_str() {
                    Some(s) if k == key => out.push(s),
                    _ => strings_under(child, key, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| strings_under(i, key, out)),
        _ => {}
    }
}

#[test]
fn every_metric_the_grafana_dashboard_queries_is_one_the_server_exports() {
    let s = Server::start(&[]);
    let metrics = String::from_utf8(get(&s, "/metrics", None).body).unwrap();
    let exported: std::collections::HashSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let dashboard: Value =
        serde_json::from_str(include_str!("../../tuning/grafana-dashboard.json")).unwrap();
    let mut queries = Vec::new();
    strings_under(&dashboard, "expr", &mut queries);
    strings_under(&dashboard, "definition", &mut queries);
    let mut queried: Vec<&str> = queries
        .iter()
        .flat_map(|q| q.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|word| word.starts_with("triggers_"))
        .collect();
    queried.sort_unstable();
    queried.dedup();
    assert!(queried.len() >= 15, "the dashboard queries {queried:?}");
    let missing: Vec<_> = queried.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
    let mut ids: Vec<u64> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    let panels = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels, "panel ids are unique");
}
