//! The HTTP side of `tracer serve`: `/metrics`, `/healthz` and `/readyz`, on a thread of its own so
//! that a scrape never waits for the event loop (nor the event loop for a slow scraper).

use std::{
    net::TcpListener,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use tokio::sync::oneshot;

use super::metrics::Metrics;

/// The event loop ticks every 50 ms; silence this long means it is stuck.
const STALLED_AFTER: Duration = Duration::from_secs(10);

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
            .with_state(metrics);
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await?;
        anyhow::Ok(())
    })
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

/// Whether the event loop runs: `Err` before it starts and when it stalls.
fn event_loop(metrics: &Metrics) -> Result<(), String> {
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

/// 200 while the event loop runs; 503 before it starts and when it stalls, so that a
/// liveness probe restarts a tracer that stopped reading events.
async fn health(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    answer(event_loop(&metrics).map(|()| "ok".into()))
}

/// As `/healthz`, and 503 too while the census has not run or cannot name the node's
/// containers: a tracer whose events would carry no pod is not ready, and says why.
async fn ready(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    answer(event_loop(&metrics).and_then(|()| {
        metrics
            .identity()
            .unwrap_or_else(|| Err("no census yet".into()))
            .map(|named| format!("ok: {named}"))
    }))
}
