//! http::conn: one client connection, from accept to close.
//!
//! Reads a request head (bounded by `HEAD_BYTES_MAX` and the header timeout), then its body
//! (bounded by the route's limit, decided from `Content-Length` before reading, and by the body
//! timeout), dispatches it, and writes the response. Pipelined requests are answered in order;
//! their responses are flushed together when the next request is already buffered. Any framing
//! error is answered and the connection closed, since the next request's start is unknown.

use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, CancelableAsyncReadRent};
use monoio::net::TcpStream;

use super::request::{
    parse_head, BodyFraming, ChunkedDecoder, FrameError, Head, Method, CHUNK_OVERHEAD_BYTES_MAX,
};
use super::response;
use crate::api::{self, ApiError, Request, Route, SMALL_BODY_BYTES_MAX};
use crate::core::Core;

/// Initial read buffer; it grows to hold a whole request (head and body) when needed.
const READ_BUF_BYTES: usize = 8 * 1024;
/// Smallest free space offered to one read.
const READ_CHUNK_MIN: usize = 4 * 1024;
/// Buffered responses are flushed once they reach this size even if more requests are queued.
const WRITE_FLUSH_BYTES: usize = 64 * 1024;
/// A client that does not take its response within this time is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bounds of the lingering close after an error answer (see `Conn::linger`).
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
const LINGER_BYTES_MAX: usize = 16 * 1024 * 1024;

enum ReadEnd {
    Eof,
    Timeout,
    /// Reset, cancelled by shutdown, or any other I/O error.
    Gone,
}

struct Conn {
    stream: TcpStream,
    peer: IpAddr,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
}

impl Conn {
    /// Reads more bytes onto the end of `rbuf`.
    async fn read(&mut self, core: &Core, within: Duration) -> Result<usize, ReadEnd> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK_MIN {
            self.rbuf.reserve(READ_CHUNK_MIN);
        }
        let (len, cap) = (self.rbuf.len(), self.rbuf.capacity());
        let buf = std::mem::take(&mut self.rbuf).slice_mut(len..cap);
        let read = self.stream.cancelable_read(buf, core.cancel_handle());
        match monoio::time::timeout(within, read).await {
            // The buffer went with the dropped read; the connection closes anyway.
            Err(_) => Err(ReadEnd::Timeout),
            Ok((result, buf)) => {
                self.rbuf = buf.into_inner();
                match result {
                    Ok(0) => Err(ReadEnd::Eof),
                    Ok(n) => Ok(n),
                    Err(_) => Err(ReadEnd::Gone),
                }
            }
        }
    }

    /// Reads until `rbuf` holds at least `want` bytes.
    async fn read_to(
        &mut self,
        core: &Core,
        want: usize,
        deadline: Instant,
    ) -> Result<(), ReadEnd> {
        if self.rbuf.capacity() < want {
            self.rbuf.reserve(want - self.rbuf.len());
        }
        while self.rbuf.len() < want {
            self.read(core, deadline.saturating_duration_since(Instant::now()))
                .await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> bool {
        if self.wbuf.is_empty() {
            return true;
        }
        let buf = std::mem::take(&mut self.wbuf);
        match monoio::time::timeout(WRITE_TIMEOUT, self.stream.write_all(buf)).await {
            Ok((Ok(_), mut buf)) => {
                buf.clear();
                self.wbuf = buf;
                true
            }
            _ => false,
        }
    }

    async fn write_now(&mut self, bytes: &'static [u8]) -> bool {
        matches!(
            monoio::time::timeout(WRITE_TIMEOUT, self.stream.write_all(bytes)).await,
            Ok((Ok(_), _))
        )
    }

    /// Appends an error response that closes the connection.
    fn write_error(&mut self, core: &Core, err: ApiError) {
        let id = core.next_request_id();
        response::write(
            &mut self.wbuf,
            &err.into_response(),
            id.as_bytes(),
            core.date().as_bytes(),
            false,
            false,
        );
    }

    /// Answers a request that cannot be read to its end, then closes.
    async fn fail(&mut self, core: &Core, err: ApiError) {
        self.write_error(core, err);
        if self.flush().await {
            self.linger(core).await;
        }
    }

    /// Closing with unread input makes the kernel send a reset, which can destroy the error
    /// response before the client reads it (a client still sending a refused 6 MiB body gets
    /// ECONNRESET instead of its 413). So: stop writing, then read and discard for a bounded
    /// time and amount before closing.
    async fn linger(&mut self, core: &Core) {
        let _ = self.stream.shutdown().await;
        let deadline = Instant::now() + LINGER_TIMEOUT;
        let mut discarded = 0;
        while discarded < LINGER_BYTES_MAX {
            self.rbuf.clear();
            match self
                .read(core, deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Ok(n) => discarded += n,
                Err(_) => break,
            }
        }
    }
}

/// Counts a connection for as long as it lives.
struct Open(Rc<Core>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.set(self.0.connections.get() - 1);
    }
}

/// Answers a connection over the per-core limit with 503 and closes it at once: lingering
/// here would let a flood of connections hold resources past the limit.
pub async fn refuse(core: Rc<Core>, stream: TcpStream, peer: IpAddr) {
    let mut conn = Conn {
        stream,
        peer,
        rbuf: Vec::new(),
        wbuf: Vec::with_capacity(256),
    };
    conn.write_error(&core, ApiError::Overloaded);
    conn.flush().await;
}

pub async fn serve(core: Rc<Core>, stream: TcpStream, peer: IpAddr) {
    core.connections.set(core.connections.get() + 1);
    let _open = Open(core.clone());
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream,
        peer,
        rbuf: Vec::with_capacity(READ_BUF_BYTES),
        wbuf: Vec::with_capacity(READ_BUF_BYTES),
    };
    while let Some(()) = one_request(&core, &mut conn).await {}
    conn.flush().await;
}

/// Serves one request; `None` closes the connection.
async fn one_request(core: &Rc<Core>, conn: &mut Conn) -> Option<()> {
    let config = &core.shared.config;
    // The head: wait for the first byte under the idle timeout, the rest under the header
    // timeout, which starts with that first byte.
    let mut head_deadline = Instant::now() + config.header_timeout;
    let head: Head = loop {
        if !conn.rbuf.is_empty() {
            match parse_head(&conn.rbuf) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(e) => {
                    conn.fail(core, e.into()).await;
                    return None;
                }
            }
        }
        if !conn.flush().await || core.draining.get() {
            return None;
        }
        let idle = conn.rbuf.is_empty();
        let within = if idle {
            config.idle_timeout
        } else {
            head_deadline.saturating_duration_since(Instant::now())
        };
        match conn.read(core, within).await {
            Ok(_) if idle => head_deadline = Instant::now() + config.header_timeout,
            Ok(_) => {}
            Err(ReadEnd::Timeout) if !idle => {
                conn.fail(core, ApiError::RequestTimeout).await;
                return None;
            }
            Err(_) => return None,
        }
    };
    let received = Instant::now();
    let route = Route::resolve(head.method, text(&conn.rbuf, &head.path));
    let limit = route
        .as_ref()
        // An unknown route's body is read and discarded under the small limit, so the connection
        // stays usable for the next request.
        .map_or(SMALL_BODY_BYTES_MAX, |r| r.body_bytes_max());

    // The body: refused from its declared length before any of it is read.
    let mut chunked_body = Vec::new();
    let (body, consumed) = match read_body(core, conn, &head, limit, &mut chunked_body).await {
        Ok(read) => read,
        Err(Some(answer)) => {
            conn.fail(core, answer).await;
            return None;
        }
        Err(None) => return None,
    };

    let request_id = match &head.request_id {
        Some(r) => String::from_utf8_lossy(&conn.rbuf[r.clone()]).into_owned(),
        None => core.next_request_id(),
    };
    let response = {
        let req = Request {
            method: head.method,
            path: text(&conn.rbuf, &head.path),
            query: text(&conn.rbuf, &head.query),
            api_key: head.api_key.clone().map(|r| &conn.rbuf[r]),
            bearer: head.bearer.clone().map(|r| &conn.rbuf[r]),
            peer: conn.peer,
            body: if head.framing == BodyFraming::Chunked {
                &chunked_body
            } else {
                &conn.rbuf[body]
            },
        };
        match &route {
            Ok(route) => api::dispatch(core, *route, &req).await,
            Err(e) => e.clone().into_response(),
        }
    };
    let keep_alive = head.keep_alive && !response.close && !core.draining.get();
    response::write(
        &mut conn.wbuf,
        &response,
        request_id.as_bytes(),
        core.date().as_bytes(),
        keep_alive,
        head.method == Method::Head,
    );
    conn.rbuf.drain(..consumed);
    if conn.rbuf.is_empty() && conn.rbuf.capacity() > 4 * READ_BUF_BYTES {
        // A large body grew the buffer; give the memory back rather than hold it per connection.
        conn.rbuf = Vec::with_capacity(READ_BUF_BYTES);
    }
    // Flush now unless the next pipelined request is already here to share the write.
    let flush_now = conn.rbuf.is_empty() || conn.wbuf.len() >= WRITE_FLUSH_BYTES || !keep_alive;
    if flush_now && !conn.flush().await {
        return None;
    }
    if matches!(route, Ok(Route::Events)) {
        core.shared.stats.cores[core.id]
            .ingest_us
            .record_duration(received.elapsed());
    }
    keep_alive.then_some(())
}

/// Reads the body `head` announces, refusing it from its declared length before reading any of
/// it. Returns the body's place in `rbuf` (empty for a chunked body, decoded into `chunked`) and
/// the bytes the request took. `Err(Some(e))`: answer `e` and close; `Err(None)`: just close.
async fn read_body(
    core: &Core,
    conn: &mut Conn,
    head: &Head,
    limit: usize,
    chunked: &mut Vec<u8>,
) -> Result<(std::ops::Range<usize>, usize), Option<ApiError>> {
    let timed_out = |e: ReadEnd| matches!(e, ReadEnd::Timeout).then_some(ApiError::RequestTimeout);
    let deadline = Instant::now() + core.shared.config.body_timeout;
    let end = match head.framing {
        BodyFraming::None => return Ok((head.len..head.len, head.len)),
        BodyFraming::Length(n) if n > limit => return Err(Some(ApiError::PayloadTooLarge(limit))),
        BodyFraming::Length(n) => Some(head.len + n),
        BodyFraming::Chunked => None,
    };
    if head.expect_continue
        && end.is_none_or(|end| conn.rbuf.len() < end)
        && !conn.write_now(b"HTTP/1.1 100 Continue\r\n\r\n").await
    {
        return Err(None);
    }
    if let Some(end) = end {
        conn.read_to(core, end, deadline).await.map_err(timed_out)?;
        return Ok((head.len..end, end));
    }
    let mut decoder = ChunkedDecoder::new(head.len);
    loop {
        match decoder.advance(&conn.rbuf, chunked, limit) {
            Ok(Some(end)) => return Ok((0..0, end)),
            Ok(None) if decoder.raw_len(head.len) <= limit + CHUNK_OVERHEAD_BYTES_MAX => {}
            Ok(None) | Err(FrameError::BodyTooLarge) => {
                return Err(Some(ApiError::PayloadTooLarge(limit)))
            }
            Err(e) => return Err(Some(e.into())),
        }
        let within = deadline.saturating_duration_since(Instant::now());
        conn.read(core, within).await.map_err(timed_out)?;
    }
}

/// httparse admits only visible ASCII in the request target, so this never loses anything.
fn text<'a>(buf: &'a [u8], range: &std::ops::Range<usize>) -> &'a str {
    std::str::from_utf8(&buf[range.clone()]).unwrap_or("")
}
