//! Command line.

use std::{
    io::IsTerminal as _,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use clap::{Args, Parser, Subcommand};

use crate::{
    enrich::selector::{NamePattern, Selector},
    output::{line_format, Event, Format},
    pipeline::StopWhen,
    session::RunConfig,
    tracers::conntrack::Prefix,
};

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
        tracer signals | grep reason=oom      in a pipe: one key=value line per event (-o line)\n  \
        tracer serve --listen 0.0.0.0:9435    every tracer, with Prometheus metrics (DaemonSet)\n  \
        tracer exit-code 137                  what an exit code means"
)]
pub struct Cli {
    /// More detail on stderr (repeat for more); RUST_LOG works too.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// A containerd state directory besides /run/containerd, /run/k3s/containerd and the
    /// `state` of /etc/containerd/config.toml: where its containers' records are read to name
    /// containers and pods. Repeat it, or separate directories with `:`.
    #[arg(
        long,
        global = true,
        env = "TRACER_CONTAINERD_STATE",
        value_delimiter = ':',
        value_name = "DIR"
    )]
    pub containerd_state: Vec<std::path::PathBuf>,

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
            tracer signals --pod 'web-*'                signals to pods whose names start web-\n  \
            tracer signals --workload web -s KILL       SIGKILLs to Deployment web's pods\n  \
            tracer signals --container app -s KILL      SIGKILLs to containers named app"
    )]
    Signals(SignalsArgs),

    /// Trace packets netfilter drops, telling conntrack's drops (insert race, full table) from
    /// a firewall rule's.
    #[command(
        name = "conntrack-drops",
        long_about = "Trace packets netfilter drops, telling conntrack's drops from a firewall rule's.\n\n\
            Classes:\n  \
            insert_failed    lost the conntrack insert race and the clash could not be resolved \
            (the cause of 5-second DNS timeouts: parallel A/AAAA queries through DNAT)\n  \
            table_full       nf_conntrack_max reached (dmesg: \"nf_conntrack: table full, dropping packet\")\n  \
            conntrack_other  another conntrack drop\n  \
            rule             a firewall rule (iptables/nft DROP), not conntrack\n\n\
            Each drop shows the namespace (inode) and its flow, IPv4 or IPv6, from the conntrack \
            entry or else the packet's own headers (IPv6 extension headers walked): protocol, \
            addresses and ports, the ICMP/ICMPv6 type, code and echo id, the TCP flags, and \
            where NAT applied, the translated destination and source. The summary puts the tracer's counts beside each namespace's own \
            conntrack counters (insert_failed, drop, early_drop, clash_resolve) over the run.",
        after_help = "Examples:\n  \
            tracer conntrack-drops                          every netfilter drop on the node\n  \
            tracer conntrack-drops --conntrack-only         only conntrack's own drops\n  \
            tracer conntrack-drops --proto udp --port 53    DNS only\n  \
            tracer conntrack-drops --host fd00::a           drops to or from one address\n  \
            tracer conntrack-drops --net 10.96.0.0/12       drops to or from Service VIPs\n  \
            tracer conntrack-drops --proto icmpv6           ICMPv6 (type, code, echo id)\n  \
            tracer conntrack-drops --netns 4026532290       one network namespace"
    )]
    ConntrackDrops(ConntrackArgs),

    /// Network namespaces: which are alive, who holds them, what looks wrong.
    #[command(
        long_about = "Network namespaces: which are alive, who holds them, what looks wrong.\n\n\
            Lists every network namespace on the kernel's own list (net_namespace_list), with \
            its interfaces and addresses and everything that holds it: processes inside (with \
            the kernel function a process in D state waits in), threads that joined it, open \
            namespace files (pid, fd), sockets made inside it (pid, fd, protocol, addresses, \
            state), bind mounts in any mount namespace, or the kernel alone (its reference \
            counts). Flags: orphaned (no process inside, and what holds it), stuck (a process \
            inside has been in D state longer than --stuck-after), ip-conflict (the same \
            address in two namespaces). Exit code 1 when a shown namespace is flagged.\n\n\
            With --watch: events as namespaces are created (clone/unshare), start and finish \
            their teardown, and when the last userspace holder of one goes (process exit, fd \
            or socket close, unmount) while it stays alive. Events carry the inode and the \
            never-reused net_cookie.",
        after_help = "Examples:\n  \
            tracer netns                          every namespace, flagged\n  \
            tracer netns --inode 4026532290       one namespace (flags still compare with all)\n  \
            tracer netns --json                   one JSON object per namespace\n  \
            tracer netns --watch                  creation and teardown as they happen"
    )]
    Netns(NetnsArgs),

    /// Record everything (signals, conntrack drops, netns lifecycle) while you reproduce an
    /// incident; then read the report.
    #[command(
        long_about = "Record everything while you reproduce an incident, then read the report.\n\n\
            Runs the signals, conntrack-drops and netns tracers at once, from one process, and \
            writes every event as a JSON line to FILE (written through as it goes: a crash or a \
            kill loses at most the last event). The terminal shows one line per event and a \
            status line every few seconds. When the recording ends (Ctrl-C, SIGTERM or \
            --duration) a snapshot of every network namespace is added and the report is printed: \
            a timeline per pod (or process, or namespace) and findings in plain words, each \
            pointing at the lines of the file that support it. `tracer report FILE` prints it \
            again.",
        after_help = "Examples:\n  \
            tracer record                                 until Ctrl-C, into tracer-record-TIME.jsonl\n  \
            tracer record --duration 10m -o incident.jsonl\n  \
            tracer record --probe 10.96.0.10:53 --namespace shop   and which pods reach DNS\n  \
            tracer report incident.jsonl --json           the findings, machine-readable"
    )]
    Record(RecordArgs),

    /// Run every tracer continuously and serve Prometheus metrics: the DaemonSet mode.
    #[command(
        long_about = "Run every tracer continuously and serve Prometheus metrics: the DaemonSet mode.\n\n\
            Runs the signals, conntrack-drops and netns tracers node-wide, writes every event as a \
            JSON line on stdout (for the cluster's log pipeline), and serves the Prometheus text \
            format on http://LISTEN/metrics and a liveness check on /healthz (200 while the event \
            loop runs, 503 when it stalls). A census of network namespaces every --census-every, \
            on a thread of its own, sets tracer_netns_flagged and writes each newly flagged \
            namespace on stdout.\n\n\
            Metrics: tracer_signals_total{signal,result,kernel_reason,k8s_namespace,k8s_pod,k8s_workload}, \
            tracer_conntrack_drops_total{class,family,netns,k8s_namespace,k8s_pod,k8s_workload}, \
            tracer_netns_events_total{action,k8s_namespace,k8s_pod,k8s_workload}, \
            tracer_netns_flagged{flag,netns,k8s_namespace,k8s_pod,holder,holder_pid}, tracer_lost_events_total{tracer}, \
            tracer_program_runs_total and tracer_program_run_seconds_total{program} (while BPF \
            statistics are on), tracer_series_dropped_total{reason}, \
            tracer_events_uncounted_total. The k8s_namespace and k8s_pod \
            labels are those of the pod concerned (the signal's target, the namespace's owner), \
            empty outside pods, and k8s_workload the workload its name says it belongs to \
            (as --workload matches); Prometheus adds namespace and pod, the tracer's own.\n\n\
            A new series is scraped once at 0, then at its count, so that increase() sees a \
            first event. Memory is bounded: at most --max-series event series exist, and the \
            series of a pod or a network namespace that is gone are removed after --pod-grace. \
            SIGTERM (or Ctrl-C) detaches every program and ends with a summary line.",
        after_help = "Examples:\n  \
            tracer serve                                   metrics on http://127.0.0.1:9435/metrics\n  \
            tracer serve --listen 0.0.0.0:9435             reachable from Prometheus on other hosts\n  \
            tracer serve --bpf-stats                       also the kernel programs' run time\n  \
            tracer serve --no-events                       metrics only, nothing logged per event\n  \
            curl -s localhost:9435/metrics | grep '^tracer_signals_total'"
    )]
    Serve(ServeArgs),

    /// Which pods on this node cannot reach TARGET, and why: a probe from inside every pod's
    /// network namespace, explained by the drops it caused.
    #[command(
        long_about = "Which pods on this node cannot reach TARGET, and why.\n\n\
            From a thread of the tracer inside each pod's network namespace (setns; nothing runs \
            in the containers) a TCP connect (HOST:PORT), a UDP datagram (udp://HOST:PORT; a \
            reply, equal to --expect when given, is success) or an ICMP echo (icmp://HOST). \
            Meanwhile the conntrack-drops programs are attached, and each failure is explained by \
            the drops of its own flow: dropped by a rule (at which netfilter hook, in which \
            namespace), a lost conntrack insert race, a full table; else the error (no route, refused), or no reply and no \
            netfilter drop of its packets on this node (look beyond the node; or records \
            were lost, which the line says). A pod with hostNetwork has no namespace \
            of its own: the node's is probed once for all of them.\n\n\
            One line per namespace, then a summary (ok, failed, unexplained).\n\n\
            Exit codes: 0 every selected namespace reached TARGET; 1 a probe failed, could not \
            be made (error), or did not finish (interrupted, duration limit); 2 bad usage or \
            the scan could not start.",
        after_help = "Examples:\n  \
            tracer probe 100.100.100.200:80                  every pod to the metadata service\n  \
            tracer probe udp://10.96.0.10:53 --namespace shop  pods of namespace shop to a UDP port\n  \
            tracer probe icmp://10.0.0.1 --all-netns         every namespace on the node\n  \
            tracer probe 10.0.0.5:443 --netns 4026532402     one namespace (its inode)"
    )]
    Probe(ProbeArgs),

    /// Print the timeline and findings of a recording (`tracer record`).
    Report {
        /// The recording (JSON lines), or `-` for standard input (`kubectl logs ds/tracer |
        /// tracer report -`: serve's events are such lines).
        file: std::path::PathBuf,

        /// One JSON object with the findings, timelines and unreadable lines.
        #[arg(long)]
        json: bool,
    },

    /// Show what this kernel supports and which hook each tracer will use.
    Doctor,

    /// Attach a benchmark's program to a tracer's hook until interrupted: an empty one (the
    /// baseline), or one reporting only each event's header (the floor of a report).
    #[command(name = "bench-hook", hide = true)]
    BenchHook {
        /// `signal_generate` or `kfree_skb`.
        hook: String,

        /// Write each event's header into the ring buffer (read and dropped here).
        #[arg(long)]
        header_record: bool,
    },

    /// Print a shell completion script: `source <(tracer completions bash)`, or save it where
    /// your shell loads completions from (bash-completion: /usr/share/bash-completion/completions/tracer).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },

    /// Write a man page per command (tracer.8, tracer-signals.8, ...) into DIR: what `cargo
    /// xtask man` and the image ship.
    #[command(name = "man-pages", hide = true)]
    ManPages {
        /// The directory to write into (created if missing).
        dir: std::path::PathBuf,
    },

    /// Explain a process exit code (137 = killed by SIGKILL, ...).
    ExitCode {
        /// The exit code, as shown by a shell or `kubectl describe pod`.
        code: i32,
    },
}

/// `--workload`, the same on every command.
const WORKLOAD_HELP: &str = "Only the pods of this Deployment, StatefulSet, DaemonSet, Job or \
    CronJob, by the names Kubernetes gives them: NAME-<hash>-<5 chars>, NAME-<ordinal>, \
    NAME-<5 chars>, NAME-<minute>-<5 chars> (the name alone: a bare pod named so matches too)";

/// `-o`: how events are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns, with the sender's executable and ancestry on lines of their own.
    Text,
    /// Exactly one `key=value` line per event, the same keys in the same order on every line.
    Line,
    /// One JSON object per line, with every field.
    Json,
}

/// Options every tracing command shares.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// How events are printed. Default: `text` on a terminal, `line` otherwise, so that
    /// grep, sort | uniq -c and watch always see one whole event per line (the text view
    /// spends several lines on one event). For programs, `json`: its fields are the stable
    /// interface.
    #[arg(long, short = 'o', value_name = "FORMAT", conflicts_with = "json")]
    pub output: Option<OutputFormat>,

    /// The same as `-o json`: one JSON object per line (events, then a final
    /// {"type":"summary"} object).
    #[arg(long)]
    pub json: bool,

    /// The columns of `-o line`, comma-separated, in this order (implies `-o line`); an
    /// unknown name lists the valid ones.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub fields: Vec<String>,

    /// Stop after this long (e.g. 30s, 5m, 1h).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,

    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Size of the kernel-to-userspace ring buffer in MiB (a power of two). Raise it if the
    /// summary reports lost events. Default: 8, or 4 for `signals --pid` (one process
    /// receives few signals; the buffer's pages are resident twice, so it is most of the
    /// tracer's memory).
    #[arg(long, value_name = "MIB", value_parser = parse_buffer_mb)]
    pub buffer_mb: Option<u32>,
}

/// `--buffer-mb`'s default.
pub const DEFAULT_BUFFER_MB: u32 = 8;
/// `--buffer-mb`'s default when the kernel passes on the signals of one process only.
pub const ONE_PROCESS_BUFFER_MB: u32 = 4;

/// `--listen`: `ADDR:PORT`, an IPv6 address with or without brackets (`fd00::1:9435`, as
/// `$(HOST_IP):9435` gives on an IPv6 node).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let (ip, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("`{text}` is not ADDR:PORT"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("`{ip}` is not an IP address"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{port}` is not a port"))?;
    Ok(SocketAddr::new(ip, port))
}

impl RunArgs {
    /// The run these options ask for, in the session's terms, for a command whose events are
    /// `E`s and whose ring buffer is `default_buffer_mb` unless `--buffer-mb` says otherwise.
    pub fn config<E: Event>(&self, default_buffer_mb: u32) -> anyhow::Result<RunConfig> {
        let chosen = match (self.json, self.output) {
            (true, _) => Some(OutputFormat::Json),
            (false, chosen) => chosen,
        };
        let output = match chosen {
            Some(chosen) => chosen,
            None if !self.fields.is_empty() => OutputFormat::Line,
            None if std::io::stdout().is_terminal() => OutputFormat::Text,
            None => OutputFormat::Line,
        };
        let format = match output {
            OutputFormat::Line => line_format::<E>(&self.fields).map_err(anyhow::Error::msg)?,
            _ if !self.fields.is_empty() => {
                anyhow::bail!("--fields chooses the columns of `-o line`; drop it or use -o line")
            }
            OutputFormat::Text => Format::Human,
            OutputFormat::Json => Format::Json,
        };
        Ok(RunConfig {
            format,
            stop: StopWhen {
                duration: self.duration,
                count: self.count,
            },
            buffer_mb: self.buffer_mb.unwrap_or(default_buffer_mb),
        })
    }
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

/// A number that must not be 0 (the kernel filters take 0 for "any"), for `flag`.
fn nonzero_u32(text: &str, flag: &str, what: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err(format!(
            "0 is no {what}: leave out {flag} to trace every {what}"
        )),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{text}` is not a {what} number")),
    }
}

fn parse_pid(text: &str) -> Result<u32, String> {
    nonzero_u32(text, "--pid", "process")
}

fn parse_sender_pid(text: &str) -> Result<u32, String> {
    nonzero_u32(text, "--sender-pid", "process")
}

fn parse_netns(text: &str) -> Result<u32, String> {
    nonzero_u32(text, "--netns", "namespace")
}

#[derive(Debug, Args)]
pub struct SignalsArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// Only signals to this process (a thread id selects its whole process).
    #[arg(long, short = 'p', value_name = "PID", value_parser = parse_pid)]
    pub pid: Option<u32>,

    /// With --pid: trace even if no such process exists yet.
    #[arg(long, requires = "pid")]
    pub wait: bool,

    /// Only signals sent by this process.
    #[arg(long, value_name = "PID", value_parser = parse_sender_pid)]
    pub sender_pid: Option<u32>,

    /// Only these signals: names or numbers, comma-separated (KILL,TERM or 9,15).
    #[arg(long, short = 's', value_name = "LIST")]
    pub signal: Option<String>,

    /// Only signals that were not delivered (ignored, already pending, queue overflow).
    #[arg(long)]
    pub failed: bool,

    /// Only signals to this container: an id prefix, a container name or a glob (`app-*`).
    /// Follows the workload: containers that start later (a restart) are added within a
    /// second.
    #[arg(long, value_name = "ID|NAME|GLOB", value_parser = NamePattern::parse)]
    pub container: Option<NamePattern>,

    /// Only signals to processes of this pod: a name or a glob (`web-*`).
    #[arg(long, value_name = "NAME|GLOB", value_parser = NamePattern::parse)]
    pub pod: Option<NamePattern>,

    #[arg(long, value_name = "NAME", help = WORKLOAD_HELP)]
    pub workload: Option<String>,

    /// Only signals to processes of pods in this namespace.
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
}

#[derive(Debug, Args)]
pub struct NetnsArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// Trace namespaces being created and torn down (kernel programs) instead of a snapshot.
    #[arg(long)]
    pub watch: bool,

    /// Only these namespaces: inode numbers (of /proc/PID/ns/net), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "INODE",
        conflicts_with = "watch"
    )]
    pub inode: Vec<u64>,

    /// A process inside in D state for longer than this flags its namespace `stuck`.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION", conflicts_with = "watch")]
    pub stuck_after: Duration,

    #[command(flatten)]
    pub pods: PodNetnsArgs,
}

/// Which pods' network namespaces a command looks at (`conntrack-drops`, `netns`, `probe`).
#[derive(Debug, Args)]
pub struct PodNetnsArgs {
    /// Only the network namespace of this pod (its sandbox's): a name or a glob (`web-*`).
    #[arg(long, value_name = "NAME|GLOB", value_parser = NamePattern::parse)]
    pub pod: Option<NamePattern>,

    #[arg(long, value_name = "NAME", help = WORKLOAD_HELP)]
    pub workload: Option<String>,

    /// Only the network namespaces of pods in this Kubernetes namespace.
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
}

impl PodNetnsArgs {
    /// `--pod`, `--workload`, `--namespace`.
    pub fn selector(&self) -> Selector {
        Selector {
            container: None,
            pod: self.pod.clone(),
            namespace: self.namespace.clone(),
            workload: self.workload.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The recording; default: tracer-record-<UTC time>.jsonl in the current directory.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,

    /// Stop after this long (e.g. 30s, 5m, 1h); default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,

    /// Size of the kernel-to-userspace ring buffer in MiB (a power of two).
    #[arg(long, default_value_t = 16, value_name = "MIB", value_parser = parse_buffer_mb)]
    pub buffer_mb: u32,

    /// Only signals to this pod's processes and conntrack drops in its network namespace: a
    /// name or a glob (`web-*`).
    #[arg(long, value_name = "NAME|GLOB", value_parser = NamePattern::parse)]
    pub pod: Option<NamePattern>,

    #[arg(long, value_name = "NAME", help = WORKLOAD_HELP)]
    pub workload: Option<String>,

    /// Only the signals and conntrack drops of pods in this Kubernetes namespace.
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,

    /// Only signals to this container (an id prefix, a name or a glob).
    #[arg(long, value_name = "ID|NAME|GLOB", value_parser = NamePattern::parse)]
    pub container: Option<NamePattern>,

    /// In the closing namespace snapshot, a process in D state this long marks its namespace
    /// `stuck`.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub stuck_after: Duration,

    /// At the start, probe TARGET from every selected pod's network namespace once, as
    /// `tracer probe TARGET` does (HOST:PORT, udp://HOST:PORT, icmp://HOST; 4 s per probe):
    /// the recording gets a line per pod, the report a finding per pod that cannot reach it.
    #[arg(long, value_name = "TARGET")]
    pub probe: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port of the HTTP server (/metrics, /healthz); an IPv6 address with or
    /// without brackets. Port 0 picks a free port, printed on stderr.
    #[arg(long, default_value = "127.0.0.1:9435", value_name = "ADDR:PORT", value_parser = parse_listen)]
    pub listen: std::net::SocketAddr,

    /// Stop after this long; default: until SIGTERM or Ctrl-C.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,

    /// Size of the kernel-to-userspace ring buffer in MiB (a power of two).
    #[arg(long, default_value_t = 16, value_name = "MIB", value_parser = parse_buffer_mb)]
    pub buffer_mb: u32,

    /// How often the network namespaces are examined for the flags (orphaned, stuck,
    /// ip-conflict) and gone pods are looked for.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub census_every: Duration,

    /// A process inside a namespace in D state this long flags the namespace `stuck`.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub stuck_after: Duration,

    /// The series of a pod, or of a network namespace, that is gone are removed after this
    /// long.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub pod_grace: Duration,

    /// At most this many event series; the events of further label sets are counted in
    /// tracer_events_uncounted_total instead.
    #[arg(long, default_value_t = 5000, value_name = "N")]
    pub max_series: usize,

    /// Write no events on stdout (only the final summary): metrics only, for nodes whose log
    /// pipeline should not carry every signal.
    #[arg(long)]
    pub no_events: bool,

    /// Turn the kernel's BPF run-time statistics on while serving (they cost some
    /// nanoseconds per program run), for tracer_program_run_seconds_total.
    #[arg(long)]
    pub bpf_stats: bool,
}

fn parse_host(text: &str) -> Result<Prefix, String> {
    if text.contains('/') {
        return Err("one address; use --net for a prefix".into());
    }
    Prefix::parse(text).map_err(|e| e.to_string())
}

fn parse_net(text: &str) -> Result<Prefix, String> {
    Prefix::parse(text).map_err(|e| e.to_string())
}

/// The longest duration a flag takes: far beyond any run, and still short enough to add to
/// the clock (which a duration of 300000000000y is not). A year is 365.25 days, as humantime
/// counts it.
const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// A duration flag (`30s`, `5m`, `1h`), at most [`MAX_DURATION`].
fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration > MAX_DURATION {
        return Err(format!("`{text}` is too long: use at most 100 years"));
    }
    Ok(duration)
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

/// The longest `tracer probe --timeout`: a probe waits for one connection or reply.
pub const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(3600);

fn parse_probe_timeout(text: &str) -> Result<Duration, String> {
    let duration = parse_positive_duration(text)?;
    if duration > MAX_PROBE_TIMEOUT {
        return Err("must be at most 1h (a probe waits for one connection or reply)".into());
    }
    Ok(duration)
}

#[derive(Debug, Args)]
pub struct ConntrackArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// Only this network namespace (its inode, as in `ls -L -i /proc/PID/ns/net`).
    #[arg(long, value_name = "INODE", value_parser = parse_netns)]
    pub netns: Option<u32>,

    /// Only this protocol: tcp, udp, icmp, icmpv6, sctp or a number.
    #[arg(long, value_name = "PROTO")]
    pub proto: Option<String>,

    /// Only packets from or to this port (either end, before or after NAT).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,

    /// Only packets from or to this address, IPv4 or IPv6 (either end, before or after NAT).
    #[arg(long, value_name = "ADDR", value_parser = parse_host)]
    pub host: Option<Prefix>,

    /// Only packets from or to an address in this prefix (`10.96.0.0/12`, `fd00::/64`).
    #[arg(long, value_name = "PREFIX", value_parser = parse_net)]
    pub net: Option<Prefix>,

    /// Leave out packets a firewall rule dropped (the summary still counts them).
    #[arg(long)]
    pub conntrack_only: bool,

    /// Name the netfilter hook that dropped each packet (`hook`: prerouting, input, forward,
    /// output, postrouting), from the drop's kernel stack (implied by `--fields ...,hook`). Costs
    /// a stack walk per drop, about 4x the kernel time of a drop without it.
    #[arg(long)]
    pub hook: bool,

    /// Only drops in these pods' network namespaces.
    #[command(flatten)]
    pub pods: PodNetnsArgs,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// HOST:PORT (TCP connect), udp://HOST:PORT or icmp://HOST.
    pub target: String,

    /// Print one JSON object per line (a probe each, then a final {"type":"summary"} object).
    #[arg(long)]
    pub json: bool,

    /// How long each probe waits for its connection or reply (at most 1h).
    #[arg(long, default_value = "4s", value_parser = parse_probe_timeout, value_name = "DURATION")]
    pub timeout: Duration,

    /// Probes at a time.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub parallel: u16,

    /// Every network namespace on the node, not only pods'.
    #[arg(long, conflicts_with_all = ["netns", "pod", "workload", "namespace"])]
    pub all_netns: bool,

    /// Only these namespaces: inode numbers (of /proc/PID/ns/net), comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "INODE", conflicts_with_all = ["pod", "workload", "namespace"])]
    pub netns: Vec<u64>,

    #[command(flatten)]
    pub pods: PodNetnsArgs,

    /// UDP: the datagram to send (default: "tracer probe" and a newline).
    #[arg(long, value_name = "TEXT")]
    pub payload: Option<String>,

    /// UDP: the reply that means success (default: any reply).
    #[arg(long, value_name = "TEXT")]
    pub expect: Option<String>,

    /// UDP: send the datagram N times at once from one socket and wait for N replies, as a
    /// resolver sends its A and AAAA queries (2): exposes the conntrack insert race.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=16))]
    pub burst: u16,

    /// Ring buffer size for the drop records, in MiB (a power of two): raise it when a line
    /// says records were lost.
    #[arg(long, default_value_t = 8, value_name = "MIB", value_parser = parse_buffer_mb)]
    pub buffer_mb: u32,
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

    #[test]
    fn durations_are_bounded_and_ids_are_not_zero() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("100y").is_ok());
        assert!(parse_duration("300000000000y")
            .unwrap_err()
            .contains("at most"));
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(parse_pid("42"), Ok(42));
        assert!(parse_pid("0").unwrap_err().contains("leave out --pid"));
        assert!(parse_netns("0").unwrap_err().contains("leave out --netns"));
        assert!(parse_sender_pid("-1").is_err());
    }

    #[test]
    fn probe_timeout_is_positive_and_at_most_an_hour() {
        assert_eq!(parse_probe_timeout("4s"), Ok(Duration::from_secs(4)));
        assert_eq!(parse_probe_timeout("1h"), Ok(MAX_PROBE_TIMEOUT));
        assert!(parse_probe_timeout("1h 1s").is_err());
        assert!(parse_probe_timeout("100000000000000s").is_err());
        assert!(parse_probe_timeout("0s").is_err());
    }

    #[test]
    fn listen_addresses_with_and_without_brackets() {
        assert_eq!(
            parse_listen("127.0.0.1:9435"),
            Ok("127.0.0.1:9435".parse().unwrap())
        );
        assert_eq!(parse_listen("[fd00::1]:9435"), parse_listen("fd00::1:9435"));
        assert_eq!(parse_listen("::1:0"), Ok("[::1]:0".parse().unwrap()));
        assert!(parse_listen("localhost:9435").is_err());
        assert!(parse_listen("127.0.0.1").is_err());
        assert!(parse_listen("127.0.0.1:99999").is_err());
    }
}
