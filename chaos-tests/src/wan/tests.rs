//! The latency proxy on real loopback sockets, against an echo server: what crosses it arrives
//! intact and in order, no sooner than the link's latency (and a lost chunk's retransmission
//! timeout) allows; a resetting link resets the connection. Lower bounds only: how much
//! later things arrive depends on the machine.

use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::{LatencyProxy, LinkShape};

/// Echoes every connection back until the client closes its side, then closes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

async fn proxy_to_echo(shape: LinkShape) -> LatencyProxy {
    let echo = echo_server().await;
    LatencyProxy::start("127.0.0.1:0".parse().unwrap(), echo, shape, 7)
        .await
        .unwrap()
}

/// One byte there and back: the time until it is back.
async fn round_trip(stream: &mut TcpStream, byte: u8) -> Duration {
    let sent = Instant::now();
    stream.write_all(&[byte]).await.unwrap();
    let mut back = [0u8; 1];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(back[0], byte, "the echo came back changed");
    sent.elapsed()
}

#[tokio::test]
async fn each_round_trip_takes_at_least_twice_the_one_way_latency() {
    let one_way = Duration::from_millis(40);
    let proxy = proxy_to_echo(LinkShape::latency(one_way)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for i in 0..5u8 {
        let took = round_trip(&mut stream, i).await;
        assert!(
            took >= 2 * one_way,
            "round trip {i} took {took:?}, under twice the {one_way:?} one-way latency"
        );
    }
    assert_eq!(
        proxy
            .stats
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_stream_arrives_intact_and_in_order_and_ends_when_the_sender_closes() {
    let one_way = Duration::from_millis(20);
    let proxy = proxy_to_echo(LinkShape::latency(one_way)).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    // 4 MiB of seeded noise, written in uneven pieces while the echo is read concurrently:
    // many chunks in flight in both directions at once.
    let mut rng = StdRng::seed_from_u64(1);
    let data: Vec<u8> = (0..4 * 1024 * 1024).map(|_| rng.random()).collect();
    let (mut r, mut w) = stream.into_split();
    let sent = data.clone();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(2);
        let mut at = 0;
        while at < sent.len() {
            let n = rng.random_range(1..100_000).min(sent.len() - at);
            w.write_all(&sent[at..at + n]).await.unwrap();
            at += n;
        }
        w.shutdown().await.unwrap();
    });
    let mut first_byte_after = None;
    let mut back = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        first_byte_after.get_or_insert_with(|| started.elapsed());
        back.extend_from_slice(&buf[..n]);
    }
    writer.await.unwrap();
    assert_eq!(back.len(), data.len(), "bytes lost or added");
    assert!(back == data, "the echo differs from what was sent");
    let first = first_byte_after.expect("something came back");
    assert!(
        first >= 2 * one_way,
        "the first byte came back after {first:?}, under twice {one_way:?}"
    );
    eprintln!(
        "4 MiB echoed through a {one_way:?} link in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_lost_chunk_arrives_a_retransmission_timeout_late_and_holds_back_what_follows() {
    let shape = LinkShape {
        one_way: Duration::from_millis(10),
        loss: 1.0,
        rto: Duration::from_millis(150),
        reset: 0.0,
    };
    let proxy = proxy_to_echo(shape).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let took = round_trip(&mut stream, 42).await;
    assert!(
        took >= 2 * (shape.one_way + shape.rto),
        "a round trip with every chunk lost took {took:?}"
    );
    // Several writes queued behind one another: all arrive, in order.
    let message: Vec<u8> = (0..=255u8).collect();
    for piece in message.chunks(16) {
        stream.write_all(piece).await.unwrap();
    }
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(back, message);
    assert!(proxy.stats.held.load(std::sync::atomic::Ordering::Relaxed) >= 2);
}

#[tokio::test]
async fn a_resetting_link_resets_the_connection() {
    let shape = LinkShape {
        reset: 1.0,
        ..LinkShape::latency(Duration::from_millis(5))
    };
    let proxy = proxy_to_echo(shape).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 16];
    let read = stream.read(&mut buf).await;
    match read {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("read {n} bytes from a reset connection"),
    }
    assert_eq!(
        proxy
            .stats
            .resets
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_probability_outside_zero_to_one_is_refused() {
    let shape = LinkShape {
        loss: 1.5,
        ..LinkShape::latency(Duration::from_millis(5))
    };
    let err = LatencyProxy::start(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        shape,
        1,
    )
    .await
    .err()
    .expect("a loss of 1.5 is refused");
    assert!(err.to_string().contains("loss probability 1.5"), "{err}");
}
