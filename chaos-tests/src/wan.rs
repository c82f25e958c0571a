//! Latency and loss between zones, in user space: the kernel's netem is not available here.
//!
//! `LatencyProxy` is a TCP proxy that delivers every chunk it reads one fixed one-way latency
//! later, in order, without slowing the stream down: each direction is a timed queue (a reader
//! stamps each chunk with its due time and queues it; a writer waits for each chunk's due time
//! and writes it), so many chunks are in flight at once, as on a long link. TCP cannot lose
//! bytes, so loss is modelled as what a lost segment costs the application: the chunk (and, in
//! order, everything after it) arrives a retransmission timeout late. A link may also reset
//! connections (both sides get a TCP RST).
//!
//! `Wan` puts such proxies between the zones of a `Cluster` in namespaces without changing any
//! node's address: for every ordered pair of nodes in different zones, a proxy listens on the
//! root namespace's bridge address and forwards to the peer's port, and an nftables DNAT rule
//! in the sender's namespace sends its connections to that peer port through the proxy. A node
//! still dials its peers' real addresses; partitions (`net.rs`) still act on them.
//!
//! Invariant: every chunk is delivered no earlier than `one_way` after it was read, chunks are
//! delivered in the order they were read, and no byte is changed, dropped or added (a reset
//! ends the connection instead).

#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::net::{self, Topology};

/// Largest chunk read at once.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks queued per direction before the proxy stops reading (TCP back-pressure): with 64 KiB
/// chunks and a 100 ms latency that still carries well over a GiB/s.
const QUEUED_CHUNKS: usize = 256;

/// What a link does to the bytes crossing it, in each direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkShape {
    /// Added to every chunk: half the round-trip time the link adds.
    pub one_way: Duration,
    /// Probability (0 to 1) that a chunk is "lost": held back `rto` longer, and everything
    /// after it with it, as a retransmission would.
    pub loss: f64,
    /// How long a lost chunk is held (a retransmission timeout; Linux's minimum is 200 ms).
    pub rto: Duration,
    /// Probability (0 to 1) that a chunk, when due, resets the connection instead.
    pub reset: f64,
}

impl LinkShape {
    /// A link that only delays.
    pub fn latency(one_way: Duration) -> LinkShape {
        LinkShape {
            one_way,
            loss: 0.0,
            rto: Duration::from_millis(200),
            reset: 0.0,
        }
    }

    fn check(&self) -> Result<()> {
        for (name, p) in [("loss", self.loss), ("reset", self.reset)] {
            if !(0.0..=1.0).contains(&p) {
                bail!("link {name} probability {p} is not between 0 and 1");
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for LinkShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}ms one way", self.one_way.as_millis())?;
        if self.loss > 0.0 {
            write!(
                f,
                ", {}% held {}ms",
                self.loss * 100.0,
                self.rto.as_millis()
            )?;
        }
        if self.reset > 0.0 {
            write!(f, ", {}% resets", self.reset * 100.0)?;
        }
        Ok(())
    }
}

/// What a proxy carried.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub connections: AtomicU64,
    pub bytes: AtomicU64,
    /// Chunks held back an extra `rto` (modelled losses).
    pub held: AtomicU64,
    pub resets: AtomicU64,
}

// === LatencyProxy ===

/// A TCP proxy from `addr` to `target` through a link of one `LinkShape` (both directions).
/// Dropping it closes the listener and every connection it carries.
pub struct LatencyProxy {
    pub addr: SocketAddr,
    pub target: SocketAddr,
    pub shape: LinkShape,
    pub stats: Arc<LinkStats>,
    task: JoinHandle<()>,
}

impl LatencyProxy {
    /// Listens on `listen` (port 0: any) and carries each connection to `target`. `seed`
    /// draws the losses and resets.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        shape: LinkShape,
        seed: u64,
    ) -> Result<LatencyProxy> {
        shape.check()?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind a latency proxy on {listen}"))?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(LinkStats::default());
        let task_stats = stats.clone();
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it (on drop) aborts every connection.
            let mut connections = JoinSet::new();
            let mut rng = StdRng::seed_from_u64(seed);
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((inbound, _)) = accepted else {
                            // Out of descriptors, say: try again shortly rather than spin.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        task_stats.connections.fetch_add(1, Ordering::Relaxed);
                        let conn_rng = StdRng::seed_from_u64(rng.random());
                        connections.spawn(carry(inbound, target, shape, conn_rng, task_stats.clone()));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(LatencyProxy {
            addr,
            target,
            shape,
            stats,
            task,
        })
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why one direction of a connection ended early.
#[derive(Debug)]
enum Ended {
    /// The link reset the connection.
    Reset,
    /// A socket failed (the other side went away).
    Io,
}

/// One unit of a direction's queue.
enum Segment {
    Data {
        bytes: Vec<u8>,
        due: Instant,
    },
    /// The sender closed its side: shut down ours when due.
    Eof {
        due: Instant,
    },
    /// Reset the connection when due.
    Reset {
        due: Instant,
    },
}

/// Carries one connection through the link, both ways, until both sides have closed or the
/// link resets it.
async fn carry(
    mut inbound: TcpStream,
    target: SocketAddr,
    shape: LinkShape,
    rng: StdRng,
    stats: Arc<LinkStats>,
) {
    // Connecting costs no added latency: the first bytes pay it.
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let mut up_rng = rng;
    let mut down_rng = StdRng::seed_from_u64(up_rng.random());
    let ended = {
        let (in_read, in_write) = inbound.split();
        let (out_read, out_write) = outbound.split();
        let up = direction(in_read, out_write, shape, &mut up_rng, &stats);
        let down = direction(out_read, in_write, shape, &mut down_rng, &stats);
        tokio::try_join!(up, down)
    };
    if let Err(Ended::Reset) = ended {
        stats.resets.fetch_add(1, Ordering::Relaxed);
        // Closing with a zero linger sends RST rather than FIN.
        let _ = inbound.set_zero_linger();
        let _ = outbound.set_zero_linger();
    }
}

/// One direction: a reader that stamps and queues chunks, and a writer that delivers each
/// when due, running together.
async fn direction<R, W>(
    mut from: R,
    mut to: W,
    shape: LinkShape,
    rng: &mut StdRng,
    stats: &LinkStats,
) -> Result<(), Ended>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (queue, mut queued) = mpsc::channel::<Segment>(QUEUED_CHUNKS);
    let read = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(n) => n,
                Err(_) => return Err(Ended::Io),
            };
            let mut due = Instant::now() + shape.one_way;
            if n == 0 {
                let _ = queue.send(Segment::Eof { due }).await;
                return Ok(());
            }
            if shape.reset > 0.0 && rng.random_bool(shape.reset) {
                let _ = queue.send(Segment::Reset { due }).await;
                return Ok(());
            }
            if shape.loss > 0.0 && rng.random_bool(shape.loss) {
                stats.held.fetch_add(1, Ordering::Relaxed);
                due += shape.rto;
            }
            let bytes = buf[..n].to_vec();
            if queue.send(Segment::Data { bytes, due }).await.is_err() {
                return Err(Ended::Io);
            }
        }
    };
    let write = async move {
        while let Some(segment) = queued.recv().await {
            match segment {
                Segment::Data { bytes, due } => {
                    tokio::time::sleep_until(due).await;
                    to.write_all(&bytes).await.map_err(|_| Ended::Io)?;
                    stats.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
                Segment::Eof { due } => {
                    tokio::time::sleep_until(due).await;
                    let _ = to.shutdown().await;
                    return Ok(());
                }
                Segment::Reset { due } => {
                    tokio::time::sleep_until(due).await;
                    return Err(Ended::Reset);
                }
            }
        }
        Ok(())
    };
    tokio::try_join!(read, write).map(|_| ())
}

// === Wan ===

/// One proxied route: connections from node `from` to node `to`'s `port`.
pub struct Link {
    pub from: usize,
    pub to: usize,
    pub port: u16,
    pub proxy: LatencyProxy,
}

/// The latency proxies between the zones of one cluster, and the DNAT rules that route the
/// nodes' connections through them. Dropping it stops the proxies (the rules go with the
/// namespaces).
pub struct Wan {
    pub links: Vec<Link>,
}

impl Wan {
    /// For each ordered pair of nodes whose zones `shape` gives a link (`None`: direct), and
    /// each of `ports`, a proxy on the host's bridge address and a DNAT rule in the sender's
    /// namespace. Install before the nodes start: connections made earlier keep their path.
    pub async fn install(
        topology: &Topology,
        zones: &[String],
        ports: &[u16],
        shape: impl Fn(&str, &str) -> Option<LinkShape>,
        seed: u64,
    ) -> Result<Wan> {
        let nodes = topology.nodes();
        if zones.len() != nodes.len() {
            bail!("{} zones for {} nodes", zones.len(), nodes.len());
        }
        let host = IpAddr::V4(topology.host_ip());
        let mut links = Vec::new();
        let mut rng = StdRng::seed_from_u64(seed);
        for (from, sender) in nodes.iter().enumerate() {
            let mut rules = String::from(
                "table ip chaos_wan {\n  chain output { type nat hook output priority -100; policy accept; }\n}\n",
            );
            for (to, receiver) in nodes.iter().enumerate() {
                let Some(shape) = shape(&zones[from], &zones[to]) else {
                    continue;
                };
                for &port in ports {
                    let target = SocketAddr::new(IpAddr::V4(receiver.ip), port);
                    let proxy =
                        LatencyProxy::start(SocketAddr::new(host, 0), target, shape, rng.random())
                            .await?;
                    rules.push_str(&format!(
                        "add rule ip chaos_wan output ip daddr {} tcp dport {port} dnat to {}\n",
                        receiver.ip, proxy.addr
                    ));
                    links.push(Link {
                        from,
                        to,
                        port,
                        proxy,
                    });
                }
            }
            net::nft(&sender.ns, &rules)
                .with_context(|| format!("route n{}'s connections through the WAN", from + 1))?;
        }
        Ok(Wan { links })
    }

    /// Bytes, connections, held chunks and resets over every link, for the outcome line.
    pub fn summary(&self) -> String {
        let sum = |f: fn(&LinkStats) -> &AtomicU64| -> u64 {
            self.links
                .iter()
                .map(|l| f(&l.proxy.stats).load(Ordering::Relaxed))
                .sum()
        };
        format!(
            "{} links carried {:.1} MB on {} connections",
            self.links.len(),
            sum(|s| &s.bytes) as f64 / 1e6,
            sum(|s| &s.connections),
        )
    }
}
