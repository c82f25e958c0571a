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
/// Made by `upstream_h1` only for a response that carries its fields through unchanged (no
/// Via to extend, no hop-by-hop field beyond the connection's own, not 1xx, 204 or 304, not
/// to a HEAD request), and only kept so by the gateway when nothing reads them on the way (no
/// response transformation, no cache): anything else gets them in the map
/// ([`WireFields::insert_into`]).
///
/// Invariant: they never decide the framing. Connection, Keep-Alive, Content-Length and
/// Transfer-Encoding were left out when the head was read; the client's side frames the body
/// from its own size.
pub struct WireFields {
    /// The response head the fields are slices of.
    head: Bytes,
    /// Each field's name start and end, then value start and end, in `head`, in order.
    spans: Vec<[u32; 4]>,
    /// One of them is Date.
    dated: bool,
}

impl WireFields {
    /// `spans` index `head` (checked by the caller); `dated`: one of them is Date.
    pub fn new(head: Bytes, spans: Vec<[u32; 4]>, dated: bool) -> WireFields {
        WireFields { head, spans, dated }
    }

    /// One of the fields is Date (the client's side then adds none).
    pub fn has_date(&self) -> bool {
        self.dated
    }

    /// Writes each field as `name: value` and CRLF, in the target's spelling, except those
    /// named `except` (any case).
    pub fn write(&self, out: &mut Vec<u8>, except: &[u8]) {
        for &[ns, ne, vs, ve] in &self.spans {
            let name = &self.head[ns as usize..ne as usize];
            if name.len() == except.len() && name.eq_ignore_ascii_case(except) {
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&self.head[vs as usize..ve as usize]);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Appends the fields to a header map: for what reads them (a transformation, the cache)
    /// or writes responses itself (hyper).
    pub fn insert_into(self, headers: &mut HeaderMap) {
        headers.reserve(self.spans.len());
        for [ns, ne, vs, ve] in self.spans {
            // httparse accepted the name: its token characters are the ones HeaderName takes,
            // so this never skips one.
            let Ok(name) = HeaderName::from_bytes(&self.head[ns as usize..ne as usize]) else {
                continue;
            };
            // SAFETY: httparse accepted the value, so it holds only HTAB, SP, visible ASCII
            // and obs-text bytes: exactly what a HeaderValue allows (hyper relies on the same).
            let value = unsafe {
                HeaderValue::from_maybe_shared_unchecked(self.head.slice(vs as usize..ve as usize))
            };
            headers.append(name, value);
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
    let word = |s: &[u8], at: usize| {
        u64::from_le_bytes(s[at..at + 8].try_into().unwrap_or_default())
    };
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
