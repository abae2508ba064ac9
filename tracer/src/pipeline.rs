//! The run loop: ring buffer → tracer (decode) → output, until Ctrl-C, SIGTERM, `--duration`
//! or `--count`; then a final drain, the summary, and detaching everything.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};
use tracer_common::{EventHeader, EventKind, EVENT_KINDS};

use crate::{
    enrich::identity::Identities,
    hooks::{Loaded, EVENTS_MAP, LOST_MAP},
    output::Output,
    tracers::{decode_record, Tracer},
};

/// When a run ends, besides Ctrl-C and SIGTERM.
#[derive(Clone, Copy, Debug, Default)]
pub struct StopWhen {
    pub duration: Option<Duration>,
    pub count: Option<u64>,
}

/// Figures of a finished run.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub events: u64,
    /// Records the kernel could not put in the ring buffer, by event kind.
    pub lost: [u64; EVENT_KINDS as usize],
    pub elapsed: Duration,
    /// Why the run ended.
    pub stopped_by: &'static str,
}

impl RunStats {
    pub fn lost_total(&self) -> u64 {
        self.lost.iter().sum()
    }
}

/// Sums the per-CPU lost counters.
fn read_lost(lost: &PerCpuArray<MapData, u64>) -> [u64; EVENT_KINDS as usize] {
    let mut totals = [0u64; EVENT_KINDS as usize];
    for (kind, total) in totals.iter_mut().enumerate() {
        if let Ok(per_cpu) = lost.get(&(kind as u32), 0) {
            *total = per_cpu.iter().sum();
        }
    }
    totals
}

/// Feeds the records in the ring buffer to the tracer until it is empty or `limit` events
/// were written. Returns the number of events written.
fn drain(
    ring: &mut RingBuf<MapData>,
    tracer: &mut dyn Tracer,
    out: &mut Output,
    limit: u64,
) -> Result<u64> {
    let mut events = 0;
    while events < limit {
        let Some(item) = ring.next() else { break };
        let header: EventHeader = decode_record(&item)?;
        match EventKind::try_from(header.kind) {
            Ok(kind) if tracer.kinds().contains(&kind) => {
                events += tracer.on_record(kind, &item, out)?
            }
            Ok(kind) => log::warn!(
                "ring-buffer record of kind {kind:?}, which no tracer of this run handles"
            ),
            Err(kind) => log::warn!("ring-buffer record of unknown kind {kind}"),
        }
    }
    out.flush().context("writing events")?;
    Ok(events)
}

/// Runs until a stop condition, then prints the summary. Consumes `loaded`, so every program
/// is detached when this returns, whatever the outcome.
pub async fn run(
    mut loaded: Loaded,
    tracer: &mut dyn Tracer,
    identities: &Identities,
    out: &mut Output,
    stop: StopWhen,
) -> Result<RunStats> {
    let ring = RingBuf::try_from(loaded.ebpf.take_map(EVENTS_MAP).context("no EVENTS map")?)?;
    let lost =
        PerCpuArray::<_, u64>::try_from(loaded.ebpf.take_map(LOST_MAP).context("no LOST map")?)?;
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    // The kernel programs wake this reader only when records pile up (a wakeup per record is
    // expensive), so it also drains on every tick, releases held-back events and checks the
    // lost counters.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let started = Instant::now();
    let deadline = stop.duration.map(|d| tokio::time::Instant::now() + d);
    let mut stats = RunStats::default();
    let mut lost_reported = 0;

    stats.stopped_by = loop {
        if stop.count.is_some_and(|n| stats.events >= n) {
            break "count";
        }
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let room = stop.count.map_or(u64::MAX, |n| n - stats.events);
                stats.events += drain(guard.get_inner_mut(), tracer, out, room)?;
                guard.clear_ready();
            }
            _ = sigint.recv() => break "interrupt",
            _ = sigterm.recv() => break "terminate",
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await },
                if deadline.is_some() => break "duration",
            _ = tick.tick() => {
                let room = stop.count.map_or(u64::MAX, |n| n - stats.events);
                stats.events += drain(ring.get_mut(), tracer, out, room)?;
                // The explicit refresh step: new cgroups for the tracers that follow them.
                if identities.refresh_if_due() {
                    tracer.identities_refreshed();
                }
                let lost_now = read_lost(&lost);
                tracer.records_lost(lost_now.iter().sum());
                stats.events += tracer.flush(out, false)?;
                out.flush().context("writing events")?;
                out.tick(&lost_now);
                let now = lost_now.iter().sum::<u64>();
                if now > lost_reported {
                    eprintln!(
                        "tracer: warning: {} events lost so far (ring buffer full); \
                         narrow the filters or raise --buffer-mb",
                        now
                    );
                    lost_reported = now;
                }
            }
        }
    };
    // Events already in the ring buffer belong to the run.
    let room = stop
        .count
        .map_or(u64::MAX, |n| n.saturating_sub(stats.events));
    stats.events += drain(ring.get_mut(), tracer, out, room)?;
    if stats.stopped_by != "count" {
        tracer.records_lost(read_lost(&lost).iter().sum());
        stats.events += tracer.flush(out, true)?;
    }
    out.flush().context("writing events")?;
    stats.lost = read_lost(&lost);
    stats.elapsed = started.elapsed();
    drop(loaded);
    Ok(stats)
}
