//! A webhook receiver on a real socket: records every request it gets (headers and body) and
//! answers what the test tells it, request by request. HTTP/1.1 with keep-alive, as the
//! server's delivery client speaks it; one thread per connection.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// What to answer: status, extra headers, body; or hold the request this long, unanswered.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16, Vec<(String, String)>, String),
    Hang(Duration),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Status(200, Vec::new(), "ok".into())
    }

    pub fn status(code: u16) -> Reply {
        Reply::Status(code, Vec::new(), format!("answer {code}"))
    }
}

type Behaviour = dyn Fn(&Received, usize) -> Reply + Send + Sync;

pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Arc<Behaviour>>>,
}

impl Receiver {
    /// A receiver answering 200 to everything.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a receiver");
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let behaviour: Arc<Mutex<Arc<Behaviour>>> =
            Arc::new(Mutex::new(Arc::new(|_: &Received, _| Reply::ok())));
        let (g, b) = (got.clone(), behaviour.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let (g, b) = (g.clone(), b.clone());
                std::thread::spawn(move || serve(conn, &g, &b));
            }
        });
        Receiver {
            addr,
            got,
            behaviour,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// From now on, answer each request with `f(request, how many came before it)`.
    pub fn answer(&self, f: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static) {
        *self.behaviour.lock().unwrap() = Arc::new(f);
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `done(received)` holds (panics after `within`).
    pub fn wait_for(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let until = Instant::now() + within;
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(
                Instant::now() < until,
                "receiver: {what} not seen within {within:?}; got {} requests",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn serve(conn: TcpStream, got: &Mutex<Vec<Received>>, behaviour: &Mutex<Arc<Behaviour>>) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let req = Received {
            headers,
            body,
            at: Instant::now(),
        };
        let n = {
            let mut g = got.lock().unwrap();
            g.push(req.clone());
            g.len() - 1
        };
        let f = behaviour.lock().unwrap().clone();
        match f(&req, n) {
            Reply::Hang(d) => {
                std::thread::sleep(d);
                return;
            }
            Reply::Status(code, extra, text) => {
                let mut head = format!(
                    "HTTP/1.1 {code} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n",
                    text.len()
                );
                for (k, v) in extra {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                if writer.write_all(head.as_bytes()).is_err()
                    || writer.write_all(text.as_bytes()).is_err()
                {
                    return;
                }
            }
        }
    }
}
