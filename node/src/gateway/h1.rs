//! What our two HTTP/1.1 codecs share: the one to targets (`upstream_h1.rs`) and the one for
//! clients (`server_h1.rs`). Reading into a buffer's spare room, and the small field parsers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

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
