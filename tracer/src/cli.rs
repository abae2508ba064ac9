//! Command line.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tracer",
    version,
    about = "eBPF tracer for incidents on a Kubernetes node: who killed my container, why packets vanish, why a pod's network will not go away",
    long_about = "eBPF tracer for incidents on a Kubernetes node.\n\n\
        Attach it while you reproduce an incident; it reports kernel events with the processes, \
        containers and pods involved, and a summary when you stop it (Ctrl-C).\n\n\
        Needs root (or CAP_BPF + CAP_PERFMON) and a kernel with BTF (/sys/kernel/btf/vmlinux). \
        Works on tracepoints alone: no kernel headers, no compiler, no kernel module.\n\n\
        Start with `tracer doctor` to see what this kernel supports.",
    after_help = "Examples:\n  \
        tracer doctor                         what this kernel supports, and which hooks will be used\n  \
        tracer signals --pid 7942             who signals pid 7942, with the sender's ancestry\n  \
        tracer signals --signal KILL,TERM     every SIGKILL/SIGTERM on the node\n  \
        tracer signals --json --duration 60s  one JSON object per line for a minute\n  \
        tracer exit-code 137                  what an exit code means"
)]
pub struct Cli {
    /// More detail on stderr (repeat for more); RUST_LOG works too.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace signals: who sent which signal to which process, and why it died.
    #[command(
        long_about = "Trace signals: who sent which signal to which process, and why it died.\n\n\
            Each line shows the signal, the delivery result (delivered, ignored, already_pending, \
            overflow, lost_info), the sender and the target; below it the sender's executable and \
            its ancestry up to pid 1, captured in the kernel at the moment of the signal, so a \
            short-lived sender (pkill, a cron job's kill) is described even after it exited.\n\n\
            Signals the kernel sends itself are marked as such ([OOM killer], [fault], \
            [broken pipe], ...) instead of blaming whatever task happened to be running.\n\n\
            Without filters every signal on the node is shown.",
        after_help = "Examples:\n  \
            tracer signals --pid 7942                   who signals pid 7942 (any of its threads)\n  \
            tracer signals --pid 7942 --signal KILL     only SIGKILLs to it\n  \
            tracer signals --sender-pid 4242            what pid 4242 sends\n  \
            tracer signals --failed                     signals that were not delivered\n  \
            tracer signals --pid 7942 --wait            pid 7942 does not exist yet\n  \
            tracer signals --pod web --namespace shop   signals to pod shop/web's containers\n  \
            tracer signals --container app -s KILL      SIGKILLs to containers named app"
    )]
    Signals(SignalsArgs),

    /// Show what this kernel supports and which hook each tracer will use.
    Doctor,

    /// Explain a process exit code (137 = killed by SIGKILL, ...).
    ExitCode {
        /// The exit code, as shown by a shell or `kubectl describe pod`.
        code: i32,
    },
}

/// Options every tracing command shares.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Print one JSON object per line (events, then a final {"type":"summary"} object).
    #[arg(long)]
    pub json: bool,

    /// Stop after this long (e.g. 30s, 5m, 1h).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,

    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Size of the kernel-to-userspace ring buffer in MiB (a power of two). Raise it if the
    /// summary reports lost events.
    #[arg(long, default_value_t = 8, value_name = "MIB", value_parser = parse_buffer_mb)]
    pub buffer_mb: u32,
}

fn parse_buffer_mb(text: &str) -> Result<u32, String> {
    let mb: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of MiB"))?;
    if !(1..=1024).contains(&mb) || !mb.is_power_of_two() {
        return Err(format!("{mb} MiB: use a power of two from 1 to 1024"));
    }
    Ok(mb)
}

#[derive(Debug, Args)]
pub struct SignalsArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// Only signals to this process (a thread id selects its whole process).
    #[arg(long, short = 'p', value_name = "PID")]
    pub pid: Option<u32>,

    /// With --pid: trace even if no such process exists yet.
    #[arg(long, requires = "pid")]
    pub wait: bool,

    /// Only signals sent by this process.
    #[arg(long, value_name = "PID")]
    pub sender_pid: Option<u32>,

    /// Only these signals: names or numbers, comma-separated (KILL,TERM or 9,15).
    #[arg(long, short = 's', value_name = "LIST")]
    pub signal: Option<String>,

    /// Only signals that were not delivered (ignored, already pending, queue overflow).
    #[arg(long)]
    pub failed: bool,

    /// Only signals to this container: an id prefix or a container name. Follows the
    /// workload: containers that start later (a restart) are added within a second.
    #[arg(long, value_name = "ID|NAME")]
    pub container: Option<String>,

    /// Only signals to processes of this pod (by name).
    #[arg(long, value_name = "NAME")]
    pub pod: Option<String>,

    /// Only signals to processes of pods in this namespace.
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn buffer_size_must_be_power_of_two() {
        assert_eq!(parse_buffer_mb("16"), Ok(16));
        assert!(parse_buffer_mb("3").is_err());
        assert!(parse_buffer_mb("0").is_err());
        assert!(parse_buffer_mb("x").is_err());
    }
}
