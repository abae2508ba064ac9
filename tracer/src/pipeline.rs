//! The run loop: ring buffer → tracer (decode) → output, until Ctrl-C, SIGTERM, `--duration`
//! or `--count`; then a final drain, the summary, and detaching everything.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use tokio::io::unix::AsyncFd;
use tracer_common::{EventHeader, EventKind, EVENT_KINDS};

use crate::{
    enrich::identity::Identities,
    hooks::{Loaded, EVENTS_MAP, LOST_MAP},
    output::Output,
    stop,
    tracers::{decode_record, Tracer},
};

/// The longest one turn of the event loop reads the ring buffer: a flood that fills it as
/// fast as it is read must not keep the tick (the liveness heartbeat, the refresh step, the
/// lost counters, the stop signals) from coming; what the reader cannot keep up with is lost
/// in the kernel, and counted.
const TURN_BUDGET: Duration = Duration::from_millis(20);

/// Records read between looks at the clock.
const RECORDS_PER_CLOCK_READ: u64 = 64;

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

/// What a [`drain`] did.
struct Drained {
    events: u64,
    /// The ring buffer was read empty (or `limit` reached): nothing is waiting.
    done: bool,
}

/// Feeds the records in the ring buffer to the tracer until it is empty, `limit` events were
/// written, or `until` (if any) passed.
fn drain(
    ring: &mut RingBuf<MapData>,
    tracer: &mut dyn Tracer,
    out: &mut Output,
    limit: u64,
    until: Option<Instant>,
) -> Result<Drained> {
    let mut events = 0;
    let mut records = 0u64;
    let done = loop {
        if events >= limit {
            break true;
        }
        records += 1;
        if records.is_multiple_of(RECORDS_PER_CLOCK_READ)
            && until.is_some_and(|t| Instant::now() >= t)
        {
            break false;
        }
        let Some(item) = ring.next() else { break true };
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
    };
    out.flush().context("writing events")?;
    Ok(Drained { events, done })
}

/// Runs until a stop condition, then prints the summary. Consumes `loaded`, so every program
/// is detached when this returns, whatever the outcome (before the final drain on success).
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
    // The kernel programs wake this reader only when records pile up (a wakeup per record is
    // expensive), so it also drains on every tick, releases held-back events and checks the
    // lost counters.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let started = Instant::now();
    let deadline = stop.duration.map(|d| tokio::time::Instant::now() + d);
    let mut stats = RunStats::default();
    let mut lost_reported = 0;

    stats.stopped_by = loop {
        // Ctrl-C and SIGTERM are caught since before loading (see `stop`); a turn is at most
        // TURN_BUDGET long, so they are seen promptly, also under a flood.
        if let Some(signal) = stop::received() {
            break stop::reason(signal);
        }
        if stop.count.is_some_and(|n| stats.events >= n) {
            break "count";
        }
        if out.failed().is_some() {
            break "write-error";
        }
        // `select!` polls its branches in random order: a ring buffer that is always
        // readable does not keep the tick from its turn.
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let room = stop.count.map_or(u64::MAX, |n| n - stats.events);
                let until = Instant::now() + TURN_BUDGET;
                let drained = drain(guard.get_inner_mut(), tracer, out, room, Some(until))?;
                stats.events += drained.events;
                // Records left: stay readable for the next turn.
                if drained.done {
                    guard.clear_ready();
                }
            }
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await },
                if deadline.is_some() => break "duration",
            _ = tick.tick() => {
                let room = stop.count.map_or(u64::MAX, |n| n - stats.events);
                let until = Instant::now() + TURN_BUDGET;
                stats.events += drain(ring.get_mut(), tracer, out, room, Some(until))?.events;
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
    tracer.stopping();
    // Detached first, so that the ring buffer (whose map this process still holds) only
    // empties from here: the final drain ends even under a flood.
    drop(loaded);
    // Events already in the ring buffer belong to the run.
    let room = stop
        .count
        .map_or(u64::MAX, |n| n.saturating_sub(stats.events));
    stats.events += drain(ring.get_mut(), tracer, out, room, None)?.events;
    if stats.stopped_by != "count" {
        tracer.records_lost(read_lost(&lost).iter().sum());
        stats.events += tracer.flush(out, true)?;
    }
    out.flush().context("writing events")?;
    stats.lost = read_lost(&lost);
    stats.elapsed = started.elapsed();
    Ok(stats)
}
