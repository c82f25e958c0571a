//! What our two HTTP/1.1 codecs share: the one to targets (`upstream_h1.rs`) and the one for
//! clients (`server_h1.rs`). Reading into a buffer's spare room, a target's response fields
//! passed on in wire form, and the small field parsers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, ReadBuf};

/// A target's response fields as they came on the wire, passed on to the client without a
/// header map: building one (a name lookup and a hashed insert per field) and reading it out
/// again cost about a tenth of a proxied request's instructions (benches/README.md).
///
/// Made by `upstream_h1` only when the gateway asks for it (the route reads none of the
/// fields: no response transformation, no cache) and the response allows it: no Via to
/// extend, no hop-by-hop field beyond the connection's own, not 1xx, 204 or 304, not the
/// answer to a HEAD, every line ended by CRLF. Anything else gets a header map.
///
/// The fields are runs of whole lines of the head, copied as they are. Left out when the
/// head was read, so never written: Connection, Keep-Alive, Content-Length and
/// Transfer-Encoding (the client's side frames the body from its own size), and the
/// target's X-Request-Id (the proxy's replaces it).
pub struct WireFields {
    /// The response head the runs are slices of.
    head: Bytes,
    /// Start and end of each run of lines in `head`; `runs[..count]` are used.
    runs: [(u16, u16); MAX_RUNS],
    count: u8,
    /// One of the fields is Date.
    dated: bool,
}

/// The most runs of lines a [`WireFields`] holds: each field left out between two kept ones
/// starts a new run, and a head that needs more goes to a map, as does one whose fields end
/// past 64 KiB. (Small offsets keep a response under 256 bytes: see `RequestBody`.)
pub const MAX_RUNS: usize = 3;

/// The runs of lines of a [`WireFields`], gathered line by line.
#[derive(Default)]
pub struct Runs {
    runs: [(u16, u16); MAX_RUNS],
    count: u8,
}

impl Runs {
    /// Adds the line from `start` to `end` (after its CRLF), after those added before it;
    /// false when that would take more than [`MAX_RUNS`] runs, or it ends past 64 KiB.
    pub fn push(&mut self, start: usize, end: usize) -> bool {
        let (Ok(start), Ok(end)) = (u16::try_from(start), u16::try_from(end)) else {
            return false;
        };
        let n = usize::from(self.count);
        if n > 0 && self.runs[n - 1].1 == start {
            self.runs[n - 1].1 = end;
        } else if n < MAX_RUNS {
            self.runs[n] = (start, end);
            self.count += 1;
        } else {
            return false;
        }
        true
    }
}

impl WireFields {
    /// `runs` are of lines of `head`; `dated`: one of them is Date.
    pub fn new(head: Bytes, runs: Runs, dated: bool) -> WireFields {
        WireFields {
            head,
            runs: runs.runs,
            count: runs.count,
            dated,
        }
    }

    /// One of the fields is Date (the client's side then adds none).
    pub fn has_date(&self) -> bool {
        self.dated
    }

    fn runs(&self) -> impl Iterator<Item = &[u8]> {
        self.runs[..usize::from(self.count)]
            .iter()
            .map(|&(start, end)| &self.head[usize::from(start)..usize::from(end)])
    }

    /// Writes the fields' lines as they came (each ends with CRLF).
    pub fn write(&self, out: &mut Vec<u8>) {
        for run in self.runs() {
            out.extend_from_slice(run);
        }
    }

    /// Appends the fields to a header map: for hyper, which writes responses itself.
    pub fn insert_into(self, headers: &mut HeaderMap) {
        for run in self.runs() {
            let base = run.as_ptr() as usize - self.head.as_ptr() as usize;
            let mut at = 0;
            for line in run.split_inclusive(|b| *b == b'\n') {
                let start = base + at;
                at += line.len();
                // "name:" OWS value OWS CRLF, as httparse accepted it.
                let Some(colon) = line.iter().position(|b| *b == b':') else {
                    continue;
                };
                let value = &line[colon + 1..line.len() - 2];
                let lead = value.len() - value.trim_ascii_start().len();
                let value = value.trim_ascii();
                // httparse accepted the name: its token characters are the ones HeaderName
                // takes, so this never skips one.
                let Ok(name) = HeaderName::from_bytes(&line[..colon]) else {
                    continue;
                };
                let from = start + colon + 1 + lead;
                // SAFETY: httparse accepted the value, so it holds only HTAB, SP, visible
                // ASCII and obs-text bytes: exactly what a HeaderValue allows (hyper relies on
                // the same).
                let value = unsafe {
                    HeaderValue::from_maybe_shared_unchecked(
                        self.head.slice(from..from + value.len()),
                    )
                };
                headers.append(name, value);
            }
        }
    }
}

/// Reads more from `io` into `buf`, growing it by `chunk` when less than 1 KiB is free; 0 at
/// the end of the stream.
///
/// When everything read was consumed, the read starts again at the front of the buffer's
/// allocation (if no `Bytes` still shares it; nothing is allocated here for that). Otherwise
/// each read lands past the last and walks the whole buffer before reusing it (147-byte
/// response heads: about a hundred reads through 16 KiB), so that on every connection each
/// request's bytes go to memory last touched many requests ago, not to the lines just used.
pub fn poll_fill<I: AsyncRead + Unpin + ?Sized>(
    io: &mut I,
    buf: &mut BytesMut,
    chunk: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.is_empty() {
        // False when the allocation is shared or smaller than `chunk`: the code below grows it.
        let _ = buf.try_reclaim(chunk);
    }
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(chunk);
    }
    let mut read = ReadBuf::uninit(buf.spare_capacity_mut());
    match Pin::new(io).poll_read(cx, &mut read) {
        Poll::Ready(Ok(())) => {
            let n = read.filled().len();
            // SAFETY: `ReadBuf` initialised and filled these `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// A Content-Length or chunk-free decimal: digits only, at most 19 of them (no overflow).
pub fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Whether `bytes`, a field name or value from a head httparse accepted, is `lower` in any
/// case; `lower` is lower-case letters, digits and `-` (checked in debug builds).
///
/// Folding with `| 0x20` instead of lower-casing each byte: for bytes a head may hold (no
/// control characters), the only byte that folds to a lower-case letter is that letter in
/// either case, and `-` and digits fold only from themselves. Eight bytes at a time: the
/// per-byte comparison was over a tenth of reading a response head.
pub fn eq_lower(bytes: &[u8], lower: &[u8]) -> bool {
    debug_assert!(lower
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-'));
    if bytes.len() != lower.len() {
        return false;
    }
    const FOLD: u64 = 0x2020_2020_2020_2020;
    let word =
        |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap_or_default());
    let len = bytes.len();
    if len >= 8 {
        let mut at = 0;
        while at + 8 < len {
            if word(bytes, at) | FOLD != word(lower, at) {
                return false;
            }
            at += 8;
        }
        // The last eight bytes, overlapping the ones before when the length is not a
        // multiple of eight.
        return word(bytes, len - 8) | FOLD == word(lower, len - 8);
    }
    bytes.iter().zip(lower).all(|(b, l)| b | 0x20 == *l)
}

/// Whether the comma-separated field value `value` lists `token` (any case).
pub fn lists_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether every token of the comma-separated field value `value` is one of `tokens` (any
/// case; empty list elements are allowed, as RFC 9110 section 5.6.1 says).
pub fn lists_only(value: &[u8], tokens: &[&[u8]]) -> bool {
    value.split(|b| *b == b',').all(|t| {
        let t = t.trim_ascii();
        t.is_empty() || tokens.iter().any(|k| t.eq_ignore_ascii_case(k))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_digits_only_and_never_overflow() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"1234"), Some(1234));
        assert_eq!(
            parse_decimal(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [&b""[..], b"+1", b"1 ", b"0x10", b"99999999999999999999"] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_compare_in_any_case_and_only_to_themselves() {
        for (bytes, lower, equal) in [
            (&b"Content-Length"[..], &b"content-length"[..], true),
            (b"CONTENT-LENGTH", b"content-length", true),
            (b"content-lengtH", b"content-length", true),
            (b"content-lengts", b"content-length", false),
            (b"content_length", b"content-length", false),
            (b"Content-Lengt", b"content-length", false),
            (b"Transfer-Encoding", b"transfer-encoding", true),
            (b"Transfer-Encodinf", b"transfer-encoding", false),
            (b"Xransfer-Encoding", b"transfer-encoding", false),
            (b"DATE", b"date", true),
            (b"dat^", b"date", false),
            (b"Keep-Alive", b"keep-alive", true),
            (b"keep-alive ", b"keep-alive", false),
            (b"12345678", b"12345678", true),
            (b"", b"", true),
            (b"te", b"te", true),
            (b"TE", b"te", true),
        ] {
            assert_eq!(eq_lower(bytes, lower), equal, "{bytes:?} {lower:?}");
            assert_eq!(bytes.eq_ignore_ascii_case(lower), equal, "{bytes:?}");
        }
    }

    #[test]
    fn tokens_are_found_in_lists_in_any_case() {
        assert!(lists_token(b"keep-alive, Close", b"close"));
        assert!(!lists_token(b"closed", b"close"));
        assert!(lists_only(b"Keep-Alive", &[b"keep-alive", b"close"]));
        assert!(lists_only(
            b"close, ,keep-alive",
            &[b"keep-alive", b"close"]
        ));
        assert!(!lists_only(b"close, x-secret", &[b"keep-alive", b"close"]));
        assert!(!lists_only(b"upgrade", &[b"keep-alive", b"close"]));
    }
}
