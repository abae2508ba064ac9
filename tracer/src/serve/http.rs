//! The HTTP side of `tracer serve`: `/metrics`, `/healthz` and `/readyz`, on a thread of its own so
//! that a scrape never waits for the event loop (nor the event loop for a slow scraper).
//!
//! Clients on the node may be hostile, so connections are bounded: a connection must send a
//! complete request head within [`HEADER_TIMEOUT`] of opening and of its previous response
//! (idle keep-alive connections close then too), none stays open longer than
//! [`MAX_CONNECTION_AGE`] (a client that sends a request and never reads the answer would
//! otherwise hold its place), each buffers at most [`MAX_BUFFER`], and at most
//! [`MAX_CONNECTIONS`] are open, at most [`MAX_PER_PEER`] from one peer; connections beyond
//! are closed as soon as accepted (counted in `tracer_http_connections_refused_total`), so
//! that a client on one address cannot keep the scraper out. A peer is what one client can
//! cheaply hold many addresses of ([`Peer::of`]): the whole loopback range, an IPv6 /64.

use std::{
    collections::HashMap,
    net::{IpAddr, TcpListener},
    os::fd::AsRawFd as _,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    sync::{oneshot, watch},
    task::JoinSet,
};

use super::metrics::Metrics;

/// The event loop ticks every 50 ms; silence this long means it is stuck.
const STALLED_AFTER: Duration = Duration::from_secs(10);

/// A connection that has not sent a whole request head this long after opening, or after
/// its previous response, is closed (hyper's header-read timer runs from the moment it waits
/// for a head, so it is the idle timeout too).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection is closed this long after it opened, whatever it is doing: a scrape takes
/// well under a second, and a scraper that keeps its connection opens another.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);

/// Bytes a connection buffers at most, reading a request head or writing an answer (hyper's
/// least is 8 KiB); a longer head is refused with 431.
const MAX_BUFFER: usize = 16 << 10;

/// Open connections at most (each is a file descriptor and some memory).
pub const MAX_CONNECTIONS: usize = 256;

/// Open connections from one address at most: a scraper and probes need a few.
pub const MAX_PER_PEER: usize = 16;

/// Connections the kernel queues until they are accepted (the kernel caps it at
/// net.core.somaxconn): a burst (a flood of connections refused one by one) waits there
/// instead of having its handshakes dropped, which a client retries only a second later, so
/// that a scraper's connection in the same burst is not delayed.
const LISTEN_BACKLOG: libc::c_int = 1024;

/// How long accepting pauses after a failure (out of file descriptors), so that the failure
/// does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// How long requests in flight may take to finish when the tracer stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The Prometheus text exposition format's content type.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The running server; stopping it (or dropping it) waits for the thread to end.
pub struct Server {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    /// Serves on `listener` (bound by the caller, so that a port in use is reported before
    /// any program is loaded).
    pub fn start(listener: TcpListener, metrics: Arc<Metrics>) -> Result<Self> {
        listener
            .set_nonblocking(true)
            .context("setting the listening socket non-blocking")?;
        // listen(2) again sets the queue's length (std's is 128).
        // SAFETY: a plain syscall on a socket `listener` owns.
        if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
            return Err(std::io::Error::last_os_error())
                .context("setting the listening socket's queue length");
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || {
                if let Err(e) = serve(listener, metrics, stopped) {
                    eprintln!("tracer: error: metrics server: {e:#}");
                }
            })
            .context("starting the metrics server thread")?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // In-flight requests may finish, but a client that never does must not hold up the
        // exit (the kubelet would SIGKILL us): the thread is left to the process's end.
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        if let Some(thread) = self.thread.take() {
            while !thread.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    stopped: oneshot::Receiver<()>,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let app = Router::new()
            .route("/metrics", get(metrics_page))
            .route("/healthz", get(health))
            .route("/readyz", get(ready))
            .with_state(metrics.clone());
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_BUFFER);
        let open = Arc::new(Mutex::new(Open::default()));
        let (shutdown, shutting_down) = watch::channel(());
        let mut connections = JoinSet::new();
        let mut stopped = stopped;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                // Reaps the finished ones, so that the set stays as small as what is open.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                _ = &mut stopped => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    log::warn!("metrics server: accepting a connection: {e}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            };
            // Refused: closed as soon as accepted (the stream drops).
            let Some(slot) = Slot::take(&open, peer.ip(), &metrics) else {
                continue;
            };
            let connection =
                http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
            let mut shutting_down = shutting_down.clone();
            connections.spawn(async move {
                let mut connection = std::pin::pin!(connection);
                // Errors are the client's (it went away, timed out, sent garbage); past its age
                // the connection drops, closed.
                let _ = tokio::time::timeout(MAX_CONNECTION_AGE, async {
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        _ = shutting_down.changed() => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                })
                .await;
                drop(slot);
            });
        }
        // Requests in flight finish; idle connections close.
        drop(listener);
        let _ = shutdown.send(());
        while connections.join_next().await.is_some() {}
        anyhow::Ok(())
    })
}

/// The connections open, in all and by client address.
#[derive(Default)]
struct Open {
    total: usize,
    by_peer: HashMap<Peer, usize>,
}

/// The addresses counted together against [`MAX_PER_PEER`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Peer {
    /// 127.0.0.0/8 and ::1: any local process can bind any of them as its source.
    Loopback,
    V4([u8; 4]),
    /// The /64 prefix: one host is routinely given a whole /64.
    V6Prefix([u8; 8]),
}

impl Peer {
    fn of(address: IpAddr) -> Self {
        match address.to_canonical() {
            IpAddr::V4(v4) if v4.is_loopback() => Self::Loopback,
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) if v6.is_loopback() => Self::Loopback,
            IpAddr::V6(v6) => {
                let mut prefix = [0; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                Self::V6Prefix(prefix)
            }
        }
    }
}

/// One open connection's place in [`Open`], given back when dropped.
struct Slot {
    open: Arc<Mutex<Open>>,
    peer: Peer,
    metrics: Arc<Metrics>,
}

impl Slot {
    /// A place for a connection from `peer`, or `None` (counted) when there is none.
    fn take(open: &Arc<Mutex<Open>>, address: IpAddr, metrics: &Arc<Metrics>) -> Option<Self> {
        let peer = Peer::of(address);
        let mut now = open.lock().unwrap_or_else(|e| e.into_inner());
        let from_peer = now.by_peer.get(&peer).copied().unwrap_or(0);
        let refused = if now.total >= MAX_CONNECTIONS {
            Some("total")
        } else if from_peer >= MAX_PER_PEER {
            Some("per_peer")
        } else {
            None
        };
        if let Some(reason) = refused {
            metrics.http_refused(reason);
            return None;
        }
        now.total += 1;
        now.by_peer.insert(peer, from_peer + 1);
        metrics.set_http_open(now.total);
        Some(Self {
            open: open.clone(),
            peer,
            metrics: metrics.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut now = self.open.lock().unwrap_or_else(|e| e.into_inner());
        now.total -= 1;
        if let Some(n) = now.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                now.by_peer.remove(&self.peer);
            }
        }
        self.metrics.set_http_open(now.total);
    }
}

async fn metrics_page(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.render() {
        Ok(text) => (StatusCode::OK, [("content-type", TEXT_FORMAT)], text),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            format!("rendering the metrics: {e:#}\n"),
        ),
    }
}

/// Whether the event loop and the census run: `Err` before the loop starts, when it stalls,
/// and once the census thread ended.
fn running(metrics: &Metrics) -> Result<(), String> {
    if metrics.census_ended() {
        return Err("the census thread ended: namespace flags and series expiry stopped".into());
    }
    match metrics.since_tick() {
        None => Err("starting".into()),
        Some(idle) if idle > STALLED_AFTER => {
            Err(format!("event loop stalled for {}s", idle.as_secs()))
        }
        Some(_) => Ok(()),
    }
}

fn answer(state: Result<String, String>) -> (StatusCode, String) {
    match state {
        Ok(text) => (StatusCode::OK, format!("{text}\n")),
        Err(text) => (StatusCode::SERVICE_UNAVAILABLE, format!("{text}\n")),
    }
}

/// 200 while the event loop runs; 503 before it starts, when it stalls and when the census
/// ended, so that a liveness probe restarts a tracer that stopped reading events or taking
/// its census.
async fn health(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    answer(running(&metrics).map(|()| "ok".into()))
}

/// As `/healthz`, and 503 too while the census has not run or cannot name the node's
/// containers: a tracer whose events would carry no pod is not ready, and says why.
async fn ready(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    answer(running(&metrics).and_then(|()| {
        metrics
            .identity()
            .unwrap_or_else(|| Err("no census yet".into()))
            .map(|named| format!("ok: {named}"))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::metrics::Bounds;

    #[test]
    fn connections_beyond_the_caps_are_refused_and_counted_and_places_come_back() {
        let bounds = Bounds {
            max_series: 10,
            pod_grace: Duration::from_secs(1),
        };
        let metrics = Arc::new(Metrics::new(bounds, &[]).unwrap());
        let open = Arc::new(Mutex::new(Open::default()));
        let peer = |i: usize| IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
        let one: IpAddr = [192, 0, 2, 1].into();
        let mut held: Vec<Slot> = (0..MAX_PER_PEER)
            .map(|_| Slot::take(&open, one, &metrics).unwrap())
            .collect();
        assert!(Slot::take(&open, one, &metrics).is_none());
        held.extend(
            (0..MAX_CONNECTIONS - MAX_PER_PEER)
                .map(|i| Slot::take(&open, peer(i), &metrics).unwrap()),
        );
        assert!(Slot::take(&open, peer(MAX_CONNECTIONS), &metrics).is_none());
        let text = metrics.render().unwrap();
        for line in [
            "tracer_http_connections_refused_total{reason=\"per_peer\"} 1",
            "tracer_http_connections_refused_total{reason=\"total\"} 1",
            &format!("tracer_http_connections_open {MAX_CONNECTIONS}"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        // A closed connection gives its place back, to its address and to the total.
        held.remove(0);
        assert!(Slot::take(&open, one, &metrics).is_some());
        drop(held);
        let now = open.lock().unwrap();
        assert_eq!((now.total, now.by_peer.len()), (0, 0));
    }

    #[test]
    fn loopback_sources_and_one_ipv6_64_count_as_one_peer() {
        let peer = |s: &str| Peer::of(s.parse().unwrap());
        assert_eq!(peer("127.0.0.1"), peer("127.9.8.7"));
        assert_eq!(peer("127.0.0.1"), peer("::1"));
        assert_eq!(peer("::ffff:127.3.2.1"), Peer::Loopback);
        assert_eq!(peer("2001:db8:1:2::1"), peer("2001:db8:1:2:ffff::9"));
        assert_ne!(peer("2001:db8:1:2::1"), peer("2001:db8:1:3::1"));
        assert_ne!(peer("192.0.2.1"), peer("192.0.2.2"));
        assert_eq!(peer("::ffff:192.0.2.1"), peer("192.0.2.1"));
    }
}
