//! The last stage of the pipeline: events and the summary, as aligned human lines, as one
//! `key=value` line per event (`-o line`), or as one JSON object per line.

use std::{
    fmt::Write as _,
    fs::File,
    io::{self, BufWriter, Write},
    sync::Arc,
};

use serde::Serialize;

use crate::enrich::identity::Pod;

pub mod memo;

/// An event a tracer emits: serialisable for `--json`, one human line (or a few), and the
/// columns of its `-o line` view.
pub trait Event: Serialize + 'static {
    /// The `-o line` columns, in their stable order.
    const COLUMNS: &'static [Column<Self>];

    /// Writes the human form, ending with a newline.
    fn write_human(&self, w: &mut dyn Write) -> io::Result<()>;

    /// The counter this event adds one to in `tracer serve`'s metrics, if any.
    fn count(&self) -> Option<Count<'_>> {
        None
    }
}

/// A Prometheus counter family that events add to. Every family also has the labels
/// `k8s_namespace` and `k8s_pod` (of the pod the event concerns, empty outside pods), which
/// the metrics server uses to drop the series of pods that are gone. (Not `namespace` and
/// `pod`: Prometheus gives those to the scraped target, the tracer's own pod.)
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    /// Label names, in the order of [`Count::labels`].
    pub labels: &'static [&'static str],
}

/// One increment of a [`Family`].
#[derive(Debug)]
pub struct Count<'a> {
    pub family: &'static Family,
    /// Label values, in the order of [`Family::labels`].
    pub labels: Vec<String>,
    pub pod: Option<&'a Pod>,
    /// The network namespace (inode) the series is about, if it is about one: its series go
    /// when the namespace does.
    pub netns: Option<u64>,
}

/// One column of the `-o line` view: `name=value`, or `name=-` when the event has no value.
pub struct Column<E: ?Sized> {
    pub name: &'static str,
    /// Shown when `--fields` is not given.
    pub default: bool,
    pub value: fn(&E) -> Option<String>,
}

/// The `-o line` format for events of type `E`: the columns `fields` names (comma-separated
/// names), or the default ones. An unknown name is an error that lists the valid ones.
pub fn line_format<E: Event>(fields: &[String]) -> Result<Format, String> {
    if fields.is_empty() {
        return Ok(Format::Line(
            E::COLUMNS
                .iter()
                .filter(|c| c.default)
                .map(|c| c.name)
                .collect(),
        ));
    }
    let names = fields
        .iter()
        .map(|field| {
            E::COLUMNS
                .iter()
                .find(|c| c.name == field)
                .map(|c| c.name)
                .ok_or_else(|| {
                    let valid: Vec<&str> = E::COLUMNS.iter().map(|c| c.name).collect();
                    format!(
                        "unknown field `{field}`; valid fields: {}",
                        valid.join(", ")
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(Format::Line(names))
}

/// A pod as a `-o line` value: `namespace/name`, or `uid:UID` when its names are unknown.
pub fn pod_column(pod: Option<&Pod>) -> Option<String> {
    pod.map(|p| match (&p.namespace, &p.name) {
        (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
        _ => format!("uid:{}", p.uid),
    })
}

/// A `-o line` value as written: bare when it is one plain word, else a JSON string (quoted,
/// with quotes, backslashes, control and invisible characters escaped), so that a line splits
/// into its `key=value` pairs on spaces and a bidi override in a comm cannot reorder the line
/// on a terminal.
fn line_value(value: Option<&str>) -> String {
    match value {
        None | Some("") => "-".into(),
        Some(v)
            if v.chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' && c != '=') =>
        {
            v.into()
        }
        Some(v) => {
            let quoted = serde_json::to_string(v).unwrap_or_else(|_| "-".into());
            // serde_json leaves format characters raw; JSON's `\uXXXX` (UTF-16 units) reads
            // back as the same string.
            let mut safe = String::with_capacity(quoted.len());
            for c in quoted.chars() {
                if crate::text::is_unsafe(c) {
                    for unit in c.encode_utf16(&mut [0; 2]) {
                        let _ = write!(safe, "\\u{unit:04x}");
                    }
                } else {
                    safe.push(c);
                }
            }
            safe
        }
    }
}

/// What watches the event stream besides the writer: `tracer serve`'s metrics.
pub trait Observer {
    /// One event was written.
    fn count(&self, count: Count<'_>);
    /// The pipeline is alive; `lost` is the records lost so far, by event kind.
    fn tick(&self, lost: &[u64]);
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    Human,
    /// One `key=value` line per event, with these columns in this order (see
    /// [`line_format`]).
    Line(Vec<&'static str>),
    Json,
    /// JSON lines to a file, written through at every event (a crash loses at most the event
    /// being written), and the first human line of each event on stderr as a live view.
    Record,
}

/// Where events go. Buffered on stdout, flushed after each batch read from the ring buffer,
/// so a reader of a pipe sees events promptly without a syscall per event.
pub struct Output {
    format: Format,
    out: Box<dyn Write>,
    /// Column header, written before the first event in human format.
    header: Option<String>,
    observer: Option<Arc<dyn Observer + Send + Sync>>,
    /// Events go to the observer only (the summary is still written).
    events_to_observer_only: bool,
    /// `{"node":"NAME",`: what every JSON line starts with, so that lines collected from many
    /// nodes (a DaemonSet's logs) can be told apart.
    node_prefix: Vec<u8>,
    /// Where a JSON line is built before it is written.
    line: Vec<u8>,
    /// Record mode: the file's first write failure (a full disk). Nothing more is written to
    /// the file, which ends on its last complete line; the run ends at the event loop's next
    /// turn, and the summary goes to stderr.
    failed: Option<io::Error>,
}

/// What a write to the output fails with once its reader went away (`tracer signals | head
/// -1`): the run then ends quietly, as coreutils do, and only for the output's own pipe.
#[derive(Debug)]
pub struct ReaderGone;

impl std::fmt::Display for ReaderGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the reader of the output went away")
    }
}

impl std::error::Error for ReaderGone {}

impl ReaderGone {
    /// Whether `e` (anywhere in its chain) is the output's reader going away.
    pub fn caused(e: &anyhow::Error) -> bool {
        e.chain().any(|cause| {
            cause
                .downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .is_some_and(|inner| inner.is::<ReaderGone>())
        })
    }
}

/// A recording cut short: its file could not be written (see [`Output::failed`]).
#[derive(Debug)]
pub struct RecordingCut(pub String);

impl std::fmt::Display for RecordingCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "writing the recording failed ({}); it ends with the last complete event",
            self.0
        )
    }
}

impl std::error::Error for RecordingCut {}

/// The output's writer, its broken pipe marked as [`ReaderGone`].
struct MarksReaderGone(Box<dyn Write>);

/// Standard output for a command's one answer (`report`, `exit-code`): a reader gone
/// (`| head -1`) ends the command quietly, as it ends the tracers.
pub fn answer_stdout() -> impl Write {
    MarksReaderGone(Box::new(io::stdout().lock()))
}

fn mark_reader_gone(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, ReaderGone)
    } else {
        e
    }
}

impl Write for MarksReaderGone {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(mark_reader_gone)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(mark_reader_gone)
    }
}

/// The recording file: a write that fails (a full disk) is undone, so that the file always
/// ends on a complete line (each line is one write, see [`Output::event`]).
struct WholeLines {
    file: File,
    /// Length of the file up to its last complete line.
    complete: u64,
}

impl Write for WholeLines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.write_all(buf) {
            Ok(()) => {
                self.complete += buf.len() as u64;
                Ok(buf.len())
            }
            Err(e) => {
                // Part of the line may be in; cut it off (freeing space never fails for want
                // of it). The file is not written again.
                if let Err(cut) = self.file.set_len(self.complete) {
                    log::warn!("cutting the recording back to its last whole line: {cut}");
                }
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// This node's name: `NODE_NAME` (the DaemonSet sets it from the pod's `spec.nodeName`), else
/// the host name.
fn node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_string())
        .unwrap_or_default()
}

/// Bytes an [`Output`] wrote into memory (see [`Output::in_memory`]).
#[cfg(test)]
#[derive(Clone, Default)]
pub struct Written(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

#[cfg(test)]
impl Written {
    /// What was written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.borrow()).into_owned()
    }
}

#[cfg(test)]
impl Write for Written {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Output {
    pub fn new(format: Format, header: String) -> Self {
        Self::into_writer(
            format,
            header,
            Box::new(BufWriter::with_capacity(64 * 1024, io::stdout())),
        )
    }

    fn into_writer(format: Format, header: String, out: Box<dyn Write>) -> Self {
        let node = serde_json::to_string(&node_name()).unwrap_or_else(|_| "\"\"".into());
        Self {
            header: (format == Format::Human).then_some(header),
            format,
            out: Box::new(MarksReaderGone(out)),
            observer: None,
            events_to_observer_only: false,
            node_prefix: format!("{{\"node\":{node},").into_bytes(),
            line: Vec::with_capacity(4096),
            failed: None,
        }
    }

    /// `value` (a JSON object) as one JSON line with the node's name first, in `self.line`.
    fn json_line(&mut self, value: &impl Serialize) -> io::Result<()> {
        // The object is written over the prefix's last byte (its `,`), which then replaces
        // the object's own `{`: its fields follow the node's, without moving the line.
        let object_start = self.node_prefix.len() - 1;
        self.line.clear();
        self.line
            .extend_from_slice(&self.node_prefix[..object_start]);
        serde_json::to_writer(&mut self.line, value)?;
        match &self.line[object_start..] {
            b"{}" => {
                self.line.truncate(object_start);
                self.line.push(b'}');
            }
            [b'{', ..] => self.line[object_start] = b',',
            _ => return Err(io::Error::other("an event that is not a JSON object")),
        }
        self.line.push(b'\n');
        Ok(())
    }

    /// Into memory, for tests of a tracer's decode → enrich → output path.
    #[cfg(test)]
    pub fn in_memory(format: Format) -> (Self, Written) {
        let written = Written::default();
        (
            Self::into_writer(format, String::new(), Box::new(written.clone())),
            written,
        )
    }

    /// Also hands every event to `observer`; with `observer_only`, only to it.
    pub fn observed_by(
        mut self,
        observer: Arc<dyn Observer + Send + Sync>,
        observer_only: bool,
    ) -> Self {
        self.observer = Some(observer);
        self.events_to_observer_only = observer_only;
        self
    }

    /// The pipeline's heartbeat, with the lost-record counters, for the observer.
    pub fn tick(&self, lost: &[u64]) {
        if let Some(observer) = &self.observer {
            observer.tick(lost);
        }
    }

    /// Record mode: events to `file`, a live view on stderr.
    pub fn record(file: File, header: String) -> Self {
        eprintln!("{header}");
        Self::into_writer(
            Format::Record,
            header,
            Box::new(WholeLines { file, complete: 0 }),
        )
    }

    /// Record mode: why the file could not be written, once it could not.
    pub fn failed(&self) -> Option<&io::Error> {
        self.failed.as_ref()
    }

    /// Record mode: `self.line` to the file, unless it failed already.
    fn record_line(&mut self) {
        if self.failed.is_none() {
            if let Err(e) = self.out.write_all(&self.line) {
                self.failed = Some(e);
            }
        }
    }

    /// A line for people only (a closing count), left out of JSON output.
    pub fn human_line(&mut self, line: &str) -> io::Result<()> {
        match &self.format {
            Format::Human => writeln!(self.out, "{line}"),
            Format::Line(_) | Format::Json | Format::Record => Ok(()),
        }
    }

    pub fn event<E: Event>(&mut self, event: &E) -> io::Result<()> {
        if let Some((observer, count)) = self.observer.as_ref().zip(event.count()) {
            observer.count(count);
        }
        if self.events_to_observer_only {
            return Ok(());
        }
        match &self.format {
            Format::Json => {
                self.json_line(event)?;
                self.out.write_all(&self.line)
            }
            Format::Record => {
                // One write per event, so that a crash leaves whole lines behind.
                self.json_line(event)?;
                self.record_line();
                let mut human = Vec::new();
                event.write_human(&mut human)?;
                let first = human.split(|b| *b == b'\n').next().unwrap_or_default();
                let mut stderr = io::stderr().lock();
                stderr.write_all(first)?;
                stderr.write_all(b"\n")
            }
            Format::Line(columns) => {
                let mut line = String::with_capacity(256);
                for name in columns {
                    // Names were checked against this event type (`line_format`).
                    let value = E::COLUMNS
                        .iter()
                        .find(|c| c.name == *name)
                        .and_then(|c| (c.value)(event));
                    if !line.is_empty() {
                        line.push(' ');
                    }
                    line.push_str(name);
                    line.push('=');
                    line.push_str(&line_value(value.as_deref()));
                }
                line.push('\n');
                self.out.write_all(line.as_bytes())
            }
            Format::Human => {
                if let Some(header) = self.header.take() {
                    writeln!(self.out, "{header}")?;
                }
                event.write_human(&mut self.out)
            }
        }
    }

    /// The end-of-run summary: a `{"type":"summary",...}` object, or indented `key: value`
    /// lines under a rule.
    pub fn summary(&mut self, summary: &serde_json::Value) -> io::Result<()> {
        match &self.format {
            Format::Json => {
                self.json_line(summary)?;
                self.out.write_all(&self.line)?;
            }
            Format::Record => {
                self.json_line(summary)?;
                self.record_line();
                if self.failed.is_some() {
                    // The summary is still wanted: where the operator sees it.
                    io::stderr().write_all(&self.line)?;
                    return Ok(());
                }
            }
            Format::Line(_) => {
                let mut pairs = vec!["type=summary".to_string()];
                line_pairs(summary, "", &mut pairs);
                writeln!(self.out, "{}", pairs.join(" "))?;
            }
            Format::Human => {
                writeln!(self.out, "--- summary ---")?;
                write_human_value(&mut self.out, summary, 0)?;
            }
        }
        self.out.flush()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A JSON summary as `key=value` pairs, nested keys joined with `.`, lists with `,`.
fn line_pairs(value: &serde_json::Value, prefix: &str, pairs: &mut Vec<String>) {
    let serde_json::Value::Object(map) = value else {
        return;
    };
    for (key, v) in map {
        if prefix.is_empty() && key == "type" {
            continue;
        }
        let key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let text = match v {
            serde_json::Value::Object(_) => {
                line_pairs(v, &key, pairs);
                continue;
            }
            serde_json::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        // Keys are written as values are: a key such as `by_sender.process (kill)` is quoted.
        pairs.push(format!(
            "{}={}",
            line_value(Some(&key)),
            line_value(Some(&text))
        ));
    }
}

/// Renders a JSON summary as indented `key: value` lines.
fn write_human_value(w: &mut dyn Write, value: &serde_json::Value, depth: usize) -> io::Result<()> {
    let indent = "  ".repeat(depth);
    if let serde_json::Value::Object(map) = value {
        for (key, v) in map {
            if key == "type" {
                continue;
            }
            match v {
                serde_json::Value::Object(inner) if !inner.is_empty() => {
                    writeln!(w, "{indent}{key}:")?;
                    write_human_value(w, v, depth + 1)?;
                }
                serde_json::Value::Array(items) => {
                    writeln!(w, "{indent}{key}:")?;
                    for item in items {
                        match item {
                            serde_json::Value::String(s) => writeln!(w, "{indent}  - {s}")?,
                            other => writeln!(w, "{indent}  - {other}")?,
                        }
                    }
                }
                serde_json::Value::String(s) => writeln!(w, "{indent}{key}: {s}")?,
                other => writeln!(w, "{indent}{key}: {other}")?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Sample {
        #[serde(rename = "type")]
        kind: &'static str,
        n: u32,
    }

    impl Event for Sample {
        const COLUMNS: &'static [Column<Self>] = &[
            Column {
                name: "n",
                default: true,
                value: |s| Some(s.n.to_string()),
            },
            Column {
                name: "kind",
                default: false,
                value: |s| Some(s.kind.into()),
            },
            Column {
                name: "none",
                default: true,
                value: |_| None,
            },
        ];

        fn write_human(&self, w: &mut dyn Write) -> io::Result<()> {
            writeln!(w, "sample {}", self.n)
        }
    }

    #[test]
    fn json_lines_name_the_node_first() {
        let (mut out, written) = Output::in_memory(Format::Json);
        out.node_prefix = br#"{"node":"node-\"7\"","#.to_vec();
        out.event(&Sample {
            kind: "sample",
            n: 1,
        })
        .unwrap();
        out.summary(&serde_json::json!({"type": "summary", "events": 1}))
            .unwrap();
        out.summary(&serde_json::json!({})).unwrap();
        assert!(out.summary(&serde_json::json!([1])).is_err());
        let lines: Vec<serde_json::Value> = written
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            [
                serde_json::json!({"node": "node-\"7\"", "type": "sample", "n": 1}),
                serde_json::json!({"node": "node-\"7\"", "type": "summary", "events": 1}),
                serde_json::json!({"node": "node-\"7\""})
            ]
        );
        assert!(written.text().starts_with(r#"{"node":"#));
    }

    #[test]
    fn line_format_checks_fields_and_keeps_their_order() {
        assert_eq!(
            line_format::<Sample>(&[]),
            Ok(Format::Line(vec!["n", "none"]))
        );
        assert_eq!(
            line_format::<Sample>(&["kind".into(), "n".into()]),
            Ok(Format::Line(vec!["kind", "n"]))
        );
        let error = line_format::<Sample>(&["pid".into()]).unwrap_err();
        assert_eq!(error, "unknown field `pid`; valid fields: n, kind, none");
    }

    #[test]
    fn line_values_split_on_spaces_only_between_pairs() {
        assert_eq!(line_value(Some("SIGKILL")), "SIGKILL");
        assert_eq!(line_value(None), "-");
        assert_eq!(line_value(Some("")), "-");
        assert_eq!(line_value(Some("a b")), r#""a b""#);
        assert_eq!(line_value(Some("k=v")), r#""k=v""#);
        assert_eq!(line_value(Some("say \"hi\"\n")), r#""say \"hi\"\n""#);
        assert_eq!(line_value(Some("\u{1b}[31m")), r#""\u001b[31m""#);
        let evil = "exe\u{202e}txt\u{e0041}";
        assert_eq!(line_value(Some(evil)), r#""exe\u202etxt\udb40\udc41""#);
        assert_eq!(
            serde_json::from_str::<String>(&line_value(Some(evil))).unwrap(),
            evil
        );
    }

    #[test]
    fn line_output_is_one_line_per_event_and_summary() {
        let (mut out, written) = Output::in_memory(line_format::<Sample>(&[]).unwrap());
        out.event(&Sample {
            kind: "sample",
            n: 7,
        })
        .unwrap();
        out.summary(&serde_json::json!({
            "type": "summary", "events": 1, "by": {"x": "a b", "p (kill)": 2}, "list": [1, 2],
            "none": null
        }))
        .unwrap();
        assert_eq!(
            written.text(),
            "n=7 none=-\ntype=summary \"by.p (kill)\"=2 by.x=\"a b\" events=1 list=1,2 none=-\n"
        );
    }
}
