//! http::conn: one core's HTTP state, and each client connection from accept to close.
//!
//! Reads a request head (bounded by `HEAD_BYTES_MAX` and the header timeout), then its body
//! (bounded by the route's limit, decided from `Content-Length` before reading, and by the body
//! timeout, and by the node's `Budget` when large), hands it to the handler, and writes the
//! response. Pipelined requests are answered in order; their responses are flushed together
//! when the next request is already buffered. A large response body is written from the
//! handler's buffer, not copied, and its lease on the budget is held until it has left.
//! Any framing error is answered and the connection closed, since the next request's start is
//! unknown. An answer that serves no one (see `Response::served`), and every refusal, first
//! waits its turn on the core's pace (`http::pace`).

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{
    AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent, Canceller,
};
use monoio::net::TcpStream;

use super::budget::{Budget, Lease};
use super::guards::Guards;
use super::handler::{Handler, Refusal, Request};
use super::pace::CorePace;
use super::request::{
    parse_head, BodyFraming, ChunkedDecoder, Field, FrameError, Head, Method,
    CHUNK_OVERHEAD_BYTES_MAX,
};
use super::response::{self, Response};

/// Initial read buffer; it grows to hold a whole request (head and body) when needed.
const READ_BUF_BYTES: usize = 8 * 1024;
/// Smallest free space offered to one read.
const READ_CHUNK_MIN: usize = 4 * 1024;
/// Buffered responses are flushed once they reach this size even if more requests are queued;
/// a larger response body is written on its own, without a copy.
const WRITE_FLUSH_BYTES: usize = 64 * 1024;
/// A client that does not take its response within this time is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest body of a refused request that is still read (and dropped) to keep its connection.
const SKIP_BODY_BYTES_MAX: usize = 64 * 1024;
/// Bounds of the lingering close after an error answer (see `Conn::linger`): its time, the
/// most it reads, and what it reads past the rest of an announced body (all it reads after a
/// malformed request, whose sender is no ordinary client).
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
const LINGER_BYTES_MAX: usize = 16 * 1024 * 1024;
const LINGER_SLACK_BYTES: usize = 256 * 1024;

/// The HTTP settings of every core.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Time a client has to send a request's head once its first byte arrived.
    pub header_timeout: Duration,
    /// Time a client has to send a request's body.
    pub body_timeout: Duration,
    /// An idle keep-alive connection closes after this long.
    pub idle_timeout: Duration,
    /// Open connections per core; more are answered 503 and closed.
    pub connections_max: usize,
    /// Bytes the node's large bodies may hold at once (see `http::budget`).
    pub body_budget_bytes: usize,
    /// Node-wide answers per second that serve no one, while the node serves someone (see
    /// `http::pace`); 0: no pace.
    pub pace_answers_per_s: u32,
}

/// One core's HTTP state. Touched by that core's thread alone: no locks.
pub struct Server {
    core: usize,
    limits: Limits,
    /// Shared by every core.
    budget: Arc<Budget>,
    /// When this core's next answer that serves no one is due.
    pace: CorePace,
    /// Cancels the accept and every idle read at once when draining begins.
    canceller: RefCell<Canceller>,
    draining: Cell<bool>,
    connections: Cell<usize>,
    /// `Date` header value, rebuilt once a second.
    date: RefCell<(u64, String)>,
    request_ids: Cell<u64>,
}

impl Server {
    pub fn new(core: usize, limits: Limits, guards: Guards) -> Server {
        // Request ids: core, then a per-run random tag, then a counter; unique within a run and
        // unlikely to repeat across runs.
        let mut tag = [0u8; 4];
        let _ = getrandom::fill(&mut tag);
        Server {
            core,
            limits,
            budget: guards.budget,
            pace: CorePace::new(guards.pace),
            canceller: RefCell::new(Canceller::new()),
            draining: Cell::new(false),
            connections: Cell::new(0),
            date: RefCell::new((0, String::new())),
            request_ids: Cell::new((u32::from_be_bytes(tag) as u64) << 24),
        }
    }

    pub fn cancel_handle(&self) -> CancelHandle {
        self.canceller.borrow().handle()
    }

    /// Stops taking requests: cancels the accept and every idle read; requests in flight finish
    /// and their connections close after the response.
    pub fn begin_drain(&self) {
        self.draining.set(true);
        let old = self.canceller.replace(Canceller::new());
        drop(old.cancel());
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    pub fn open_connections(&self) -> usize {
        self.connections.get()
    }

    pub fn at_capacity(&self) -> bool {
        self.connections.get() >= self.limits.connections_max
    }

    /// The current `Date` header value.
    fn date(&self) -> std::cell::Ref<'_, str> {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if self.date.borrow().0 != secs {
            *self.date.borrow_mut() = (secs, httpdate::fmt_http_date(now));
        }
        std::cell::Ref::map(self.date.borrow(), |(_, s)| s.as_str())
    }

    fn next_request_id(&self) -> String {
        let n = self.request_ids.get().wrapping_add(1);
        self.request_ids.set(n);
        format!("{:02x}{:014x}", self.core, n & 0x00ff_ffff_ffff_ffff)
    }
}

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
    /// The current request's header fields, reused from request to request.
    fields: Vec<Field>,
}

impl Conn {
    /// The write buffer is allocated by the first response: an idle connection holds only
    /// its read buffer.
    fn new(stream: TcpStream, peer: IpAddr, buf_bytes: usize) -> Conn {
        Conn {
            stream,
            peer,
            rbuf: Vec::with_capacity(buf_bytes),
            wbuf: Vec::new(),
            fields: Vec::new(),
        }
    }

    /// What `rbuf`'s capacity will be once the next `read` has made room.
    fn capacity_for_next_read(&self) -> usize {
        let (len, cap) = (self.rbuf.len(), self.rbuf.capacity());
        if cap - len < READ_CHUNK_MIN {
            // `Vec`'s amortized growth.
            (cap * 2).max(len + READ_CHUNK_MIN)
        } else {
            cap
        }
    }

    /// Reads more bytes onto the end of `rbuf`. With no time left it does not read at all: a
    /// peer whose bytes are always waiting would otherwise never see its deadline.
    async fn read(&mut self, server: &Server, within: Duration) -> Result<usize, ReadEnd> {
        if within.is_zero() {
            return Err(ReadEnd::Timeout);
        }
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK_MIN {
            self.rbuf.reserve(READ_CHUNK_MIN);
        }
        let (len, cap) = (self.rbuf.len(), self.rbuf.capacity());
        let buf = std::mem::take(&mut self.rbuf).slice_mut(len..cap);
        let read = self.stream.cancelable_read(buf, server.cancel_handle());
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
        server: &Server,
        want: usize,
        deadline: Instant,
    ) -> Result<(), ReadEnd> {
        if self.rbuf.capacity() < want {
            self.rbuf.reserve(want - self.rbuf.len());
        }
        while self.rbuf.len() < want {
            self.read(server, deadline.saturating_duration_since(Instant::now()))
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
                // Many pipelined responses grew it; give the memory back.
                if buf.capacity() > 2 * WRITE_FLUSH_BYTES {
                    buf = Vec::with_capacity(READ_BUF_BYTES);
                }
                self.wbuf = buf;
                true
            }
            _ => false,
        }
    }

    /// Writes `bytes` at once, past the write buffer (`flush` it first): a large response
    /// body straight from the handler's buffer, or `100 Continue`.
    async fn write_now(&mut self, bytes: impl IoBuf) -> bool {
        matches!(
            monoio::time::timeout(WRITE_TIMEOUT, self.stream.write_all(bytes)).await,
            Ok((Ok(_), _))
        )
    }

    /// Appends the response to the request whose head is `head`; with `head_only`, its head
    /// alone, the caller writing the body.
    fn answer(
        &mut self,
        server: &Server,
        response: &Response,
        request_id: &str,
        head: &Head,
        keep_alive: bool,
        head_only: bool,
    ) {
        response::write(
            &mut self.wbuf,
            response,
            request_id.as_bytes(),
            server.date().as_bytes(),
            keep_alive,
            head_only || head.method == Method::Head,
        );
    }

    /// Appends the handler's answer to a refused request, which closes the connection. Its
    /// request id is the one its head gave, when the head could be read.
    fn write_refusal(
        &mut self,
        server: &Server,
        handler: &impl Handler,
        refusal: Refusal,
        request_id: Option<&str>,
    ) {
        let fresh;
        let id = match request_id {
            Some(id) => id,
            None => {
                fresh = server.next_request_id();
                &fresh
            }
        };
        response::write(
            &mut self.wbuf,
            &handler.refused(refusal),
            id.as_bytes(),
            server.date().as_bytes(),
            false,
            false,
        );
    }

    /// Answers a request that cannot be read to its end, then closes, reading at most
    /// `linger_bytes` meanwhile (see `linger_bytes`).
    async fn fail(
        &mut self,
        server: &Server,
        handler: &impl Handler,
        refusal: Refusal,
        request_id: Option<&str>,
        linger_bytes: usize,
    ) {
        server.pace.wait_turn(self.rbuf.len()).await;
        self.write_refusal(server, handler, refusal, request_id);
        if self.flush().await {
            self.linger(server, linger_bytes).await;
        }
    }

    /// What a lingering close after refusing the request whose head is `head` reads at most:
    /// the rest of the body its client announced (it is still sending it) and a little more,
    /// up to `LINGER_BYTES_MAX` for a body of unknown length. After a malformed request (no
    /// head, or broken framing) only the slack: its sender is no ordinary client, and reading
    /// all it sends would let it spend the core's time on garbage.
    fn linger_bytes(&self, head: Option<&Head>, refusal: Option<Refusal>) -> usize {
        let rest = match (head, refusal) {
            (None, _) | (_, Some(Refusal::Frame(_))) => 0,
            (Some(h), _) => match h.framing {
                BodyFraming::None => 0,
                BodyFraming::Length(n) => (h.len + n).saturating_sub(self.rbuf.len()),
                BodyFraming::Chunked => LINGER_BYTES_MAX,
            },
        };
        rest.saturating_add(LINGER_SLACK_BYTES)
            .min(LINGER_BYTES_MAX)
    }

    /// Closing with unread input makes the kernel send a reset, which can destroy the error
    /// response before the client reads it (a client still sending a refused 6 MiB body gets
    /// ECONNRESET instead of its 413). So: stop writing, then read and discard for a bounded
    /// time and at most `bytes_max` before closing.
    async fn linger(&mut self, server: &Server, bytes_max: usize) {
        let _ = self.stream.shutdown().await;
        let deadline = Instant::now() + LINGER_TIMEOUT;
        let mut discarded = 0;
        while discarded < bytes_max {
            self.rbuf.clear();
            match self
                .read(server, deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Ok(n) => discarded += n,
                Err(_) => break,
            }
        }
        server.pace.charge(discarded);
    }
}

/// Counts a connection for as long as it lives.
struct Open(Rc<Server>);

impl Open {
    fn new(server: Rc<Server>) -> Open {
        server.connections.set(server.connections.get() + 1);
        Open(server)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.set(self.0.connections.get() - 1);
    }
}

/// Answers a connection over the core's limit with 503 and closes it at once: lingering here
/// would let a flood of connections hold resources past the limit.
pub async fn refuse<H: Handler>(
    server: Rc<Server>,
    handler: Rc<H>,
    stream: TcpStream,
    peer: IpAddr,
) {
    let mut conn = Conn::new(stream, peer, 0);
    conn.write_refusal(&server, &*handler, Refusal::Overloaded, None);
    conn.flush().await;
}

/// Serves a connection until the client closes it, a refusal, a timeout or the drain.
pub async fn serve<H: Handler>(
    server: Rc<Server>,
    handler: Rc<H>,
    stream: TcpStream,
    peer: IpAddr,
) {
    let _open = Open::new(server.clone());
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(stream, peer, READ_BUF_BYTES);
    while let Some(()) = one_request(&server, &*handler, &mut conn).await {}
    conn.flush().await;
}

/// Serves one request; `None` closes the connection.
async fn one_request<H: Handler>(server: &Server, handler: &H, conn: &mut Conn) -> Option<()> {
    let limits = &server.limits;
    // The head: wait for the first byte under the idle timeout, the rest under the header
    // timeout, which starts with that first byte.
    let mut head_deadline = Instant::now() + limits.header_timeout;
    let head: Head = loop {
        if !conn.rbuf.is_empty() {
            match parse_head(&conn.rbuf, &mut conn.fields) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(e) => {
                    let linger = conn.linger_bytes(None, None);
                    conn.fail(server, handler, Refusal::Frame(e), None, linger)
                        .await;
                    return None;
                }
            }
        }
        if !conn.flush().await || server.is_draining() {
            return None;
        }
        let idle = conn.rbuf.is_empty();
        let within = if idle {
            limits.idle_timeout
        } else {
            head_deadline.saturating_duration_since(Instant::now())
        };
        match conn.read(server, within).await {
            Ok(_) if idle => head_deadline = Instant::now() + limits.header_timeout,
            Ok(_) => {}
            Err(ReadEnd::Timeout) if !idle => {
                let linger = conn.linger_bytes(None, None);
                conn.fail(server, handler, Refusal::Timeout, None, linger)
                    .await;
                return None;
            }
            Err(_) => return None,
        }
    };
    let received = Instant::now();
    let route = handler.route(head.method, text(&conn.rbuf, &head.path));
    let limit = handler.body_bytes_max(route);
    let request_id = match &head.request_id {
        Some(r) => String::from_utf8_lossy(&conn.rbuf[r.clone()]).into_owned(),
        None => server.next_request_id(),
    };

    // What the head alone decides (a request that cannot be authenticated, say) is answered
    // before any of the body is read.
    let admitted = match handler.admit(route, &view(conn, &head, &[])) {
        Ok(admitted) => admitted,
        Err(response) => return refuse_early(server, conn, &head, &response, &request_id).await,
    };

    // The body: refused from its declared length before any of it is read.
    let mut chunked_body = Vec::new();
    let mut lease = None;
    let read = read_body(server, conn, &head, limit, &mut chunked_body, &mut lease).await;
    let (body, consumed) = match read {
        Ok(read) => read,
        Err(Some(refusal)) => {
            let linger = conn.linger_bytes(Some(&head), Some(refusal));
            conn.fail(server, handler, refusal, Some(&request_id), linger)
                .await;
            return None;
        }
        Err(None) => return None,
    };
    let response = {
        let body = if head.framing == BodyFraming::Chunked {
            &chunked_body
        } else {
            &conn.rbuf[body]
        };
        handler
            .handle(route, admitted, &view(conn, &head, body))
            .await
    };
    // The request's body is done with: its memory goes back before the response is written.
    conn.rbuf.drain(..consumed);
    if conn.rbuf.capacity() > 4 * READ_BUF_BYTES && conn.rbuf.len() < READ_BUF_BYTES {
        conn.rbuf.shrink_to(READ_BUF_BYTES);
    }
    drop((chunked_body, lease));
    if response.served == Some(true) {
        // When its head was read is recent enough for a mark kept to 10 ms.
        server.pace.node().served(received);
    } else {
        server.pace.wait_turn(consumed).await;
    }
    let keep_alive = head.keep_alive && !server.is_draining();
    let large = response.body.len() > WRITE_FLUSH_BYTES && head.method != Method::Head;
    conn.answer(server, &response, &request_id, &head, keep_alive, large);
    if large {
        if !conn.flush().await || !conn.write_now(response.body).await {
            return None;
        }
    } else {
        // Flush now unless the next pipelined request is already here to share the write.
        let flush_now = conn.rbuf.is_empty() || conn.wbuf.len() >= WRITE_FLUSH_BYTES || !keep_alive;
        if flush_now && !conn.flush().await {
            return None;
        }
    }
    handler.responded(route, received.elapsed());
    keep_alive.then_some(())
}

/// Answers a request the handler refused from its head. A body small enough to skip is read
/// after the answer has left and dropped, so the connection stays usable; a larger or chunked
/// one is never read, and the connection closes.
async fn refuse_early(
    server: &Server,
    conn: &mut Conn,
    head: &Head,
    response: &Response,
    request_id: &str,
) -> Option<()> {
    // Refused from its head: it serves no one.
    server.pace.wait_turn(head.len).await;
    let skip = match head.framing {
        BodyFraming::None => Some(0),
        BodyFraming::Length(n) if n <= SKIP_BODY_BYTES_MAX => Some(n),
        BodyFraming::Length(_) | BodyFraming::Chunked => None,
    };
    let Some(skip) = skip else {
        conn.answer(server, response, request_id, head, false, false);
        if conn.flush().await {
            let linger = conn.linger_bytes(Some(head), None);
            conn.linger(server, linger).await;
        }
        return None;
    };
    let keep_alive = head.keep_alive && !server.is_draining();
    conn.answer(server, response, request_id, head, keep_alive, false);
    if !conn.flush().await || !keep_alive {
        return None;
    }
    let deadline = Instant::now() + server.limits.body_timeout;
    conn.read_to(server, head.len + skip, deadline).await.ok()?;
    conn.rbuf.drain(..head.len + skip);
    Some(())
}

/// Reads the body `head` announces, refusing it from its declared length before reading any of
/// it, and holding `lease` on the node's budget for what it buffers. Returns the body's place
/// in `rbuf` (empty for a chunked body, decoded into `chunked`) and the bytes the request took.
/// `Err(Some(r))`: answer `r` and close; `Err(None)`: just close.
async fn read_body(
    server: &Server,
    conn: &mut Conn,
    head: &Head,
    limit: usize,
    chunked: &mut Vec<u8>,
    lease: &mut Option<Lease>,
) -> Result<(std::ops::Range<usize>, usize), Option<Refusal>> {
    let timed_out = |e: ReadEnd| matches!(e, ReadEnd::Timeout).then_some(Refusal::Timeout);
    let deadline = Instant::now() + server.limits.body_timeout;
    let end = match head.framing {
        BodyFraming::None => return Ok((head.len..head.len, head.len)),
        BodyFraming::Length(n) if n > limit => return Err(Some(Refusal::BodyTooLarge(limit))),
        BodyFraming::Length(n) if !server.budget.cover(lease, n) => {
            return Err(Some(Refusal::BodiesBusy))
        }
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
        conn.read_to(server, end, deadline)
            .await
            .map_err(timed_out)?;
        return Ok((head.len..end, end));
    }
    let mut decoder = ChunkedDecoder::new(head.len);
    loop {
        let advanced = decoder.advance(&conn.rbuf, chunked, limit);
        // Every byte read for this body counts, decoded or still waiting in `rbuf`. The budget
        // must cover, before the next read, the memory both buffers may hold after it: the
        // read buffer's next growth, and the decoded body's if all of the read is body.
        let buffered = conn.rbuf.len() - head.len;
        let rbuf_next = conn.capacity_for_next_read();
        let incoming = rbuf_next - conn.rbuf.len();
        let chunked_next = if chunked.capacity() - chunked.len() < incoming {
            (chunked.capacity() * 2).max(chunked.len() + incoming)
        } else {
            chunked.capacity()
        };
        if !server.budget.cover(lease, rbuf_next + chunked_next) {
            return Err(Some(Refusal::BodiesBusy));
        }
        match advanced {
            Ok(Some(end)) => return Ok((0..0, end)),
            Ok(None) if buffered <= limit + CHUNK_OVERHEAD_BYTES_MAX => {}
            Ok(None) | Err(FrameError::BodyTooLarge) => {
                return Err(Some(Refusal::BodyTooLarge(limit)))
            }
            Err(e) => return Err(Some(Refusal::Frame(e))),
        }
        let within = deadline.saturating_duration_since(Instant::now());
        conn.read(server, within).await.map_err(timed_out)?;
    }
}

/// What the handler sees of the request whose head is `head`, with `body`.
fn view<'a>(conn: &'a Conn, head: &Head, body: &'a [u8]) -> Request<'a> {
    Request {
        method: head.method,
        path: text(&conn.rbuf, &head.path),
        query: text(&conn.rbuf, &head.query),
        peer: conn.peer,
        body,
        head: &conn.rbuf[..head.len],
        fields: &conn.fields,
    }
}

/// httparse admits only visible ASCII in the request target, so this never loses anything.
fn text<'a>(buf: &'a [u8], range: &std::ops::Range<usize>) -> &'a str {
    std::str::from_utf8(&buf[range.clone()]).unwrap_or("")
}
