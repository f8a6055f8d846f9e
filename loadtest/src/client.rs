//! client: a minimal HTTP/1.1 keep-alive client, enough for the contract's JSON requests. It
//! writes requests by hand and frames responses with httparse by `Content-Length`, so what it
//! measures is the server, not a client library's pooling or retries.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for one response before the request counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Room made in the read buffer before each read.
const READ_CHUNK_BYTES: usize = 16 * 1024;

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// `Retry-After` in seconds, when given.
    pub retry_after: Option<u64>,
}

/// A target: where to connect and what to put in `Host`.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    /// How the target is named in summaries and plots.
    pub name: String,
    /// Several nodes of one deployment (`--spread`): connection `c` goes to `nodes[c % len]`;
    /// empty for a single server at `addr`.
    pub nodes: Vec<Target>,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .context("only http:// targets are supported")?;
        let host = rest.split('/').next().unwrap_or(rest).to_string();
        let with_port = if host.contains(':') {
            host.clone()
        } else {
            format!("{host}:80")
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)?
            .next()
            .with_context(|| format!("cannot resolve {host}"))?;
        Ok(Target {
            addr,
            host,
            name: url.trim_end_matches('/').to_string(),
            nodes: Vec::new(),
        })
    }

    /// Nodes sharing one database, as one deployment: requests are spread over them by
    /// connection; set-up and verification talk to the first.
    pub fn spread(urls: &[String]) -> anyhow::Result<Target> {
        let nodes = urls
            .iter()
            .map(|u| Target::parse(u))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let first = nodes.first().context("--spread needs a --url")?;
        Ok(Target {
            name: format!("{} nodes ({})", nodes.len(), urls.join(", ")),
            addr: first.addr,
            host: first.host.clone(),
            nodes,
        })
    }

    /// Where connection `c` goes.
    pub fn for_connection(&self, c: usize) -> Target {
        match self.nodes.len() {
            0 => self.clone(),
            n => self.nodes[c % n].clone(),
        }
    }
}

pub struct Conn {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
    req: Vec<u8>,
}

impl Conn {
    pub async fn connect(target: &Target) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            host: target.host.clone(),
            buf: Vec::with_capacity(16 * 1024),
            req: Vec::with_capacity(4 * 1024),
        })
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: &[u8],
    ) -> anyhow::Result<Response> {
        self.req.clear();
        self.req.extend_from_slice(
            format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host).as_bytes(),
        );
        if let Some(k) = key {
            self.req
                .extend_from_slice(format!("X-API-Key: {k}\r\n").as_bytes());
        }
        if method != "GET" {
            self.req.extend_from_slice(
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n",
                    body.len()
                )
                .as_bytes(),
            );
        }
        self.req.extend_from_slice(b"\r\n");
        self.req.extend_from_slice(body);
        self.stream.write_all(&self.req).await?;
        tokio::time::timeout(RESPONSE_TIMEOUT, self.read_response())
            .await
            .context("response timed out")?
    }

    async fn read_response(&mut self) -> anyhow::Result<Response> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = resp.parse(&self.buf)? {
                let status = resp.code.unwrap_or(0);
                let header = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                };
                let len = header("content-length").unwrap_or(0) as usize;
                let retry_after = header("retry-after");
                while self.buf.len() < head + len {
                    self.fill().await?;
                }
                let body = self.buf[head..head + len].to_vec();
                self.buf.drain(..head + len);
                return Ok(Response {
                    status,
                    body,
                    retry_after,
                });
            }
            self.fill().await?;
        }
    }

    /// Reads more of the response into `buf` itself: a buffer on the stack would sit in every
    /// connection's future.
    async fn fill(&mut self) -> anyhow::Result<()> {
        self.buf.reserve(READ_CHUNK_BYTES);
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            bail!("connection closed by the server");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_host_and_port() {
        let t = Target::parse("http://127.0.0.1:8090/").unwrap();
        assert_eq!(t.addr.port(), 8090);
        assert_eq!(t.name, "http://127.0.0.1:8090");
        assert!(Target::parse("https://example.com").is_err());
    }
}
