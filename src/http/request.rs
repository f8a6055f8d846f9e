//! http::request: request framing as pure functions over bytes. `httparse` parses the request
//! line and headers; this module applies the limits and the RFC 9112 framing rules, and decodes
//! chunked bodies incrementally. No I/O here, so every rule is unit-tested.

use std::ops::Range;

/// Largest request head (request line + headers) accepted; larger → 431.
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
/// Most headers in one request; more → 431.
pub const HEADERS_MAX: usize = 64;
/// Most trailer fields after a chunked body, and their bytes.
const TRAILERS_MAX: usize = 16;
const TRAILERS_BYTES_MAX: usize = 8 * 1024;
/// Longest chunk-size line, extensions included: real clients send a few hex digits. Without
/// this bound a line that never ends is buffered in full.
const CHUNK_LINE_BYTES_MAX: usize = 1024;
/// Chunk-size lines, extensions and CRLFs a chunked body may add over its decoded size: generous
/// for real clients, small enough that one-byte chunks cannot pin memory.
pub const CHUNK_OVERHEAD_BYTES_MAX: usize = 64 * 1024;
/// Longest client `X-Request-Id` echoed back; a longer or non-printable one is replaced.
const REQUEST_ID_BYTES_MAX: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Other,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }

    fn parse(m: &str) -> Method {
        match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(usize),
    Chunked,
}

/// A header field's name and value (trimmed), as ranges into the buffer the head was parsed
/// from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// A parsed request head. Text fields are byte ranges into the buffer the head was parsed from,
/// so parsing allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub method: Method,
    pub path: Range<usize>,
    pub query: Range<usize>,
    pub framing: BodyFraming,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// A client's `X-Request-Id`, echoed in the response when it is short and printable.
    pub request_id: Option<Range<usize>>,
    /// Bytes of the head, including the blank line.
    pub len: usize,
}

/// Why a request cannot be framed. Each is answered and the connection closed, since the
/// position of the next request in the stream is no longer known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Head over `HEAD_BYTES_MAX` or more than `HEADERS_MAX` headers → 431.
    HeadTooLarge,
    /// Not HTTP/1.x, or a bad request line or header → 400.
    Malformed,
    /// Both `Content-Length` and `Transfer-Encoding`, or `Content-Length` twice → 400.
    AmbiguousLength,
    /// `Content-Length` that is not a decimal number → 400.
    BadLength,
    /// A transfer coding other than `chunked` → 501.
    UnsupportedCoding,
    /// Body over the route's limit → 413.
    BodyTooLarge,
    /// A chunk-size line over `CHUNK_LINE_BYTES_MAX` or trailers over `TRAILERS_BYTES_MAX` → 400.
    LineTooLong,
    /// HTTP/1.1 without a `Host` header, or `Host` given twice → 400 (RFC 9112 §3.2).
    BadHost,
}

fn range_of(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// The origin form of a request target: an absolute-form target (`http://host/path?q`, which
/// RFC 9112 §3.2.2 says a server must accept) without its scheme and authority.
fn origin_form(target: Range<usize>, buf: &[u8]) -> Range<usize> {
    let t = &buf[target.clone()];
    let Some(after_scheme) = t.windows(3).position(|w| w == b"://") else {
        return target;
    };
    let scheme = &t[..after_scheme];
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return target;
    }
    let authority = after_scheme + 3;
    let path = t[authority..]
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .map_or(t.len(), |p| authority + p);
    target.start + path..target.end
}

/// Parses a request head from the start of `buf`, its header fields into `fields` (cleared
/// first). `Ok(None)`: incomplete, read more.
pub fn parse_head(buf: &[u8], fields: &mut Vec<Field>) -> Result<Option<Head>, FrameError> {
    fields.clear();
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= HEAD_BYTES_MAX => {
            return Err(FrameError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(FrameError::HeadTooLarge),
        Err(_) => return Err(FrameError::Malformed),
    };
    if len > HEAD_BYTES_MAX {
        return Err(FrameError::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(FrameError::Malformed);
    };
    let target = origin_form(range_of(buf, target.as_bytes()), buf);
    let (path, query) = match buf[target.clone()].iter().position(|&b| b == b'?') {
        Some(q) => (
            target.start..target.start + q,
            target.start + q + 1..target.end,
        ),
        None => (target.clone(), target.end..target.end),
    };
    let mut head = Head {
        method: Method::parse(method),
        path,
        query,
        framing: BodyFraming::None,
        keep_alive: version == 1,
        expect_continue: false,
        request_id: None,
        len,
    };
    let (mut length, mut chunked, mut hosts) = (None, false, 0);
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim(h.value);
        fields.push(Field {
            name: range_of(buf, name),
            value: range_of(buf, value),
        });
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return Err(FrameError::AmbiguousLength);
            }
            if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                return Err(FrameError::BadLength);
            }
            let n: u64 = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or(FrameError::BadLength)?;
            length = Some(usize::try_from(n).map_err(|_| FrameError::BadLength)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only `chunked`, alone: anything stacked on it would need a decoder we do not run.
            if chunked || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(FrameError::UnsupportedCoding);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    head.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"x-request-id") {
            if !value.is_empty()
                && value.len() <= REQUEST_ID_BYTES_MAX
                && value.iter().all(|b| b.is_ascii_graphic())
            {
                head.request_id = Some(range_of(buf, value));
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            head.expect_continue = value.eq_ignore_ascii_case(b"100-continue") && version == 1;
        }
    }
    if hosts > 1 || (hosts == 0 && version == 1) {
        return Err(FrameError::BadHost);
    }
    head.framing = match (length, chunked) {
        (Some(_), true) => return Err(FrameError::AmbiguousLength),
        (Some(0) | None, false) => BodyFraming::None,
        (Some(n), false) => BodyFraming::Length(n),
        (None, true) => BodyFraming::Chunked,
    };
    Ok(Some(head))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Size,
    Data(usize),
    DataEnd,
    Trailers,
    Done,
}

/// Decodes a chunked body as its bytes arrive. `advance` is called with the whole buffer each
/// time more has been read and resumes where it stopped, so a body costs one pass however it is
/// split into reads.
#[derive(Debug)]
pub struct ChunkedDecoder {
    pos: usize,
    phase: Phase,
}

impl ChunkedDecoder {
    /// A decoder for a body starting at `start` in the buffer.
    pub fn new(start: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            pos: start,
            phase: Phase::Size,
        }
    }

    /// Decodes what `buf` holds into `out`. `Ok(Some(end))`: the body ended at `end` in `buf`.
    pub fn advance(
        &mut self,
        buf: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<Option<usize>, FrameError> {
        loop {
            let rest = &buf[self.pos..];
            match self.phase {
                Phase::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.pos += used;
                        let size = usize::try_from(size).map_err(|_| FrameError::BodyTooLarge)?;
                        if out.len().saturating_add(size) > limit {
                            return Err(FrameError::BodyTooLarge);
                        }
                        self.phase = if size == 0 {
                            Phase::Trailers
                        } else {
                            Phase::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if rest.len() > CHUNK_LINE_BYTES_MAX => {
                        return Err(FrameError::LineTooLong)
                    }
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return Err(FrameError::Malformed),
                },
                Phase::Data(left) => {
                    let n = left.min(rest.len());
                    if n == 0 {
                        return Ok(None);
                    }
                    out.extend_from_slice(&rest[..n]);
                    self.pos += n;
                    self.phase = if n == left {
                        Phase::DataEnd
                    } else {
                        Phase::Data(left - n)
                    };
                }
                Phase::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(None);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(FrameError::Malformed);
                    }
                    self.pos += 2;
                    self.phase = Phase::Size;
                }
                Phase::Trailers => {
                    let mut fields = [httparse::EMPTY_HEADER; TRAILERS_MAX];
                    match httparse::parse_headers(rest, &mut fields) {
                        Ok(httparse::Status::Complete((used, _))) => {
                            self.pos += used;
                            self.phase = Phase::Done;
                        }
                        Ok(httparse::Status::Partial) if rest.len() > TRAILERS_BYTES_MAX => {
                            return Err(FrameError::LineTooLong)
                        }
                        Ok(httparse::Status::Partial) => return Ok(None),
                        Err(_) => return Err(FrameError::Malformed),
                    }
                }
                Phase::Done => return Ok(Some(self.pos)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Option<Head>, FrameError> {
        parse_head(raw.as_bytes(), &mut Vec::new())
    }

    #[test]
    fn a_complete_head_yields_its_parts_by_range() {
        let raw = "POST /api/events?x=1 HTTP/1.1\r\nHost: a\r\nX-API-Key:  k1 \r\nX-Request-Id: r-7\r\nContent-Length: 5\r\n\r\nhello";
        let mut fields = Vec::new();
        let h = parse_head(raw.as_bytes(), &mut fields).unwrap().unwrap();
        assert_eq!(h.method, Method::Post);
        assert_eq!(&raw[h.path.clone()], "/api/events");
        assert_eq!(&raw[h.query.clone()], "x=1");
        assert_eq!(&raw[h.request_id.clone().unwrap()], "r-7");
        assert_eq!(h.framing, BodyFraming::Length(5));
        assert!(h.keep_alive);
        assert_eq!(&raw[h.len..], "hello");
        let named: Vec<(&str, &str)> = fields
            .iter()
            .map(|f| (&raw[f.name.clone()], &raw[f.value.clone()]))
            .collect();
        assert_eq!(
            named,
            [
                ("Host", "a"),
                ("X-API-Key", "k1"),
                ("X-Request-Id", "r-7"),
                ("Content-Length", "5")
            ]
        );
    }

    #[test]
    fn an_incomplete_head_asks_for_more_until_the_limit() {
        assert_eq!(head("GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n",
            "a".repeat(HEAD_BYTES_MAX)
        );
        assert_eq!(head(&big), Err(FrameError::HeadTooLarge));
        let many: String = (0..HEADERS_MAX + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        assert_eq!(
            head(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            Err(FrameError::HeadTooLarge)
        );
    }

    #[test]
    fn conflicting_or_repeated_lengths_are_refused() {
        let both =
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(head(both), Err(FrameError::AmbiguousLength));
        let twice = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(head(twice), Err(FrameError::AmbiguousLength));
        let bad = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n";
        assert_eq!(head(bad), Err(FrameError::BadLength));
        let gzip = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(head(gzip), Err(FrameError::UnsupportedCoding));
        assert_eq!(head("BLAH\r\n\r\n"), Err(FrameError::Malformed));
    }

    #[test]
    fn http10_closes_unless_asked_and_close_is_honoured() {
        assert!(!head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
        let ka = "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        assert!(head(ka).unwrap().unwrap().keep_alive);
        let close = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        assert!(!head(close).unwrap().unwrap().keep_alive);
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for split in 0..body.len() - b"NEXT".len() {
            let mut dec = ChunkedDecoder::new(0);
            let mut out = Vec::new();
            assert_eq!(
                dec.advance(&body[..split], &mut out, 100),
                Ok(None),
                "{split}"
            );
            let end = dec.advance(body, &mut out, 100).unwrap().unwrap();
            assert_eq!(out, b"hello world");
            assert_eq!(&body[end..], b"NEXT");
        }
    }

    #[test]
    fn http11_needs_one_host_and_absolute_targets_lose_scheme_and_authority() {
        assert_eq!(head("GET / HTTP/1.1\r\n\r\n"), Err(FrameError::BadHost));
        assert_eq!(
            head("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(FrameError::BadHost)
        );
        assert!(head("GET / HTTP/1.0\r\n\r\n").unwrap().is_some());
        for (target, path, query) in [
            ("http://h:1/api/inbox?limit=5", "/api/inbox", "limit=5"),
            ("HTTPS://h/x", "/x", ""),
            ("http://h?q=1", "", "q=1"),
            ("http://h", "", ""),
            ("/plain?a", "/plain", "a"),
            ("*", "*", ""),
        ] {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n");
            let h = head(&raw).unwrap().unwrap();
            assert_eq!(
                (&raw[h.path.clone()], &raw[h.query.clone()]),
                (path, query),
                "{target}"
            );
        }
    }

    #[test]
    fn chunk_lines_and_trailers_that_never_end_are_refused_at_their_bound() {
        let endless_line = format!("1;ext={}", "a".repeat(CHUNK_LINE_BYTES_MAX));
        let mut out = Vec::new();
        assert_eq!(
            ChunkedDecoder::new(0).advance(endless_line.as_bytes(), &mut out, 100),
            Err(FrameError::LineTooLong)
        );
        // Just under the bound it is only incomplete.
        let short = &endless_line[..CHUNK_LINE_BYTES_MAX];
        assert_eq!(
            ChunkedDecoder::new(0).advance(short.as_bytes(), &mut out, 100),
            Ok(None)
        );
        let endless_trailer = format!("0\r\nX: {}", "a".repeat(TRAILERS_BYTES_MAX));
        assert_eq!(
            ChunkedDecoder::new(0).advance(endless_trailer.as_bytes(), &mut out, 100),
            Err(FrameError::LineTooLong)
        );
    }

    #[test]
    fn chunked_bodies_over_the_limit_or_malformed_are_refused() {
        let mut out = Vec::new();
        let over = ChunkedDecoder::new(0).advance(b"b\r\nhello world\r\n0\r\n\r\n", &mut out, 10);
        assert_eq!(over, Err(FrameError::BodyTooLarge));
        let mut out = Vec::new();
        let bad = ChunkedDecoder::new(0).advance(b"zz\r\n", &mut out, 10);
        assert_eq!(bad, Err(FrameError::Malformed));
        let mut out = Vec::new();
        let no_crlf = ChunkedDecoder::new(0).advance(b"1\r\naXX", &mut out, 10);
        assert_eq!(no_crlf, Err(FrameError::Malformed));
    }

    mod fuzz {
        //! Properties over generated input: framing never panics, agrees with itself however
        //! the bytes are split into reads, and decodes chunked bodies to what was encoded.
        use proptest::prelude::*;

        use super::*;

        /// A request head assembled from plausible and hostile parts.
        fn a_head() -> impl Strategy<Value = String> {
            let method = prop::sample::select(vec!["GET", "POST", "HEAD", "OPTIONS", "BREW", ""]);
            let target = prop::sample::select(vec![
                "/api/events",
                "/api/inbox?limit=5&cursor=x",
                "http://h:1/x?y",
                "*",
                "",
                "/%00",
            ]);
            let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 "]);
            let field = (
                prop::sample::select(vec![
                    "Host",
                    "Content-Length",
                    "Transfer-Encoding",
                    "Connection",
                    "Expect",
                    "X-Request-Id",
                    "X-API-Key",
                    "Bad Name",
                ]),
                prop::sample::select(vec![
                    "5",
                    "0",
                    "+3",
                    "18446744073709551616",
                    "chunked",
                    "gzip, chunked",
                    "Chunked ",
                    "close",
                    "keep-alive",
                    "100-continue",
                    "",
                    " a ",
                    "\u{1}",
                ]),
            );
            (method, target, version, prop::collection::vec(field, 0..8)).prop_map(
                |(m, t, v, fields)| {
                    let mut head = format!("{m} {t} {v}\r\n");
                    for (name, value) in fields {
                        head.push_str(&format!("{name}: {value}\r\n"));
                    }
                    head.push_str("\r\n");
                    head
                },
            )
        }

        /// What `parse_head` makes of `buf`, with the ranges read out, so results from
        /// different buffers compare.
        /// A head with its fields' names and values.
        type Parsed = (Head, Vec<(Vec<u8>, Vec<u8>)>);

        fn parsed(buf: &[u8]) -> Result<Option<Parsed>, FrameError> {
            let mut fields = Vec::new();
            Ok(parse_head(buf, &mut fields)?.map(|h| {
                assert!(h.len <= buf.len() && h.path.end <= h.len && h.query.end <= h.len);
                let named = fields
                    .iter()
                    .map(|f| (buf[f.name.clone()].to_vec(), buf[f.value.clone()].to_vec()))
                    .collect();
                (h, named)
            }))
        }

        fn heads_agree_with_their_prefixes(buf: &[u8]) -> Result<(), TestCaseError> {
            if let Ok(Some((head, _))) = parsed(buf) {
                // The server parses the buffer again after every read: every prefix of a head
                // is incomplete, never an error, and the head alone parses to the same head.
                for cut in 0..head.len {
                    prop_assert_eq!(parsed(&buf[..cut]), Ok(None), "cut at {}", cut);
                }
                prop_assert_eq!(
                    parsed(&buf[..head.len]).map(|h| h.map(|h| h.0)),
                    Ok(Some(head))
                );
            }
            Ok(())
        }

        /// A chunked body: chunks (with or without an extension), then trailers.
        fn a_chunked_body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
            let chunk = (prop::collection::vec(any::<u8>(), 1..40), any::<bool>());
            let trailer = prop::sample::select(vec!["", "X-T: 1\r\n", "A: b\r\nC: d\r\n"]);
            (prop::collection::vec(chunk, 0..6), trailer).prop_map(|(chunks, trailer)| {
                let (mut wire, mut body) = (Vec::new(), Vec::new());
                for (data, ext) in chunks {
                    let ext = if ext { ";name=\"v\"" } else { "" };
                    wire.extend_from_slice(format!("{:x}{ext}\r\n", data.len()).as_bytes());
                    wire.extend_from_slice(&data);
                    wire.extend_from_slice(b"\r\n");
                    body.extend_from_slice(&data);
                }
                wire.extend_from_slice(format!("0\r\n{trailer}\r\n").as_bytes());
                (wire, body)
            })
        }

        /// Feeds `wire` to a decoder in reads ending at `cuts`, as the connection does.
        fn decode_in_reads(
            wire: &[u8],
            cuts: &[usize],
            limit: usize,
        ) -> (Result<Option<usize>, FrameError>, Vec<u8>) {
            let mut ends: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
            ends.sort_unstable();
            ends.push(wire.len());
            let (mut dec, mut out) = (ChunkedDecoder::new(0), Vec::new());
            for end in ends {
                match dec.advance(&wire[..end], &mut out, limit) {
                    Ok(None) => {}
                    done => return (done, out),
                }
            }
            (Ok(None), out)
        }

        proptest! {
            #[test]
            fn any_bytes_frame_without_panicking_and_consistently(
                buf in prop::collection::vec(any::<u8>(), 0..600),
            ) {
                heads_agree_with_their_prefixes(&buf)?;
            }

            #[test]
            fn generated_heads_frame_consistently(head in a_head(), tail in ".{0,20}") {
                heads_agree_with_their_prefixes(format!("{head}{tail}").as_bytes())?;
            }

            #[test]
            fn chunked_bodies_decode_to_what_was_encoded_however_they_are_split(
                (wire, body) in a_chunked_body(),
                cuts in prop::collection::vec(any::<usize>(), 0..8),
                next in prop::collection::vec(any::<u8>(), 0..8),
            ) {
                let mut stream = wire.clone();
                stream.extend_from_slice(&next);
                let (result, out) = decode_in_reads(&stream, &cuts, 1 << 20);
                prop_assert_eq!(result, Ok(Some(wire.len())));
                prop_assert_eq!(out, body.clone());
                // One byte under the body's size is refused, never truncated.
                if !body.is_empty() {
                    let (result, _) = decode_in_reads(&wire, &cuts, body.len() - 1);
                    prop_assert_eq!(result, Err(FrameError::BodyTooLarge));
                }
            }

            #[test]
            fn any_bytes_decode_the_same_in_one_read_or_many(
                wire in prop::collection::vec(
                    prop::sample::select(b"0123456789abcdefxyz;= \r\n:".to_vec()), 0..200),
                cuts in prop::collection::vec(any::<usize>(), 0..8),
            ) {
                let once = decode_in_reads(&wire, &[], 64);
                prop_assert_eq!(decode_in_reads(&wire, &cuts, 64), once);
            }
        }
    }
}
