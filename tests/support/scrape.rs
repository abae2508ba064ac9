//! Reading `tracer serve` over HTTP: status and body of a GET, and one sample of a scrape.

use std::{
    io::Write as _,
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::Duration,
};

use prometheus_parse::{Sample, Value};

use crate::{wait_for, TracerRun};

/// A running `tracer serve` on a free loopback port, healthy.
pub struct Served {
    pub run: TracerRun,
    /// Where it listens: `127.0.0.1:PORT`.
    pub address: String,
}

impl Served {
    /// Starts `tracer serve --listen 127.0.0.1:0 EXTRA` and waits until /healthz says ok.
    pub fn start(extra: &[&str]) -> Self {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let run = TracerRun::start(&args);
        let address = Self::address_of(&run);
        Self::wait_healthy(&address);
        Self { run, address }
    }

    /// `tracer serve --listen LISTEN EXTRA` run inside the network namespace at `netns` (its
    /// clients can then come from many addresses the test gives that namespace), healthy.
    pub fn start_in(netns: &str, listen: &str, extra: &[&str]) -> Self {
        let target = std::fs::File::open(netns).unwrap_or_else(|e| panic!("{netns}: {e}"));
        let mut command = crate::tracer_command();
        command.args(["serve", "--listen", listen]).args(extra);
        // SAFETY: setns(2) only, between fork and exec; the file is close-on-exec.
        unsafe {
            command.pre_exec(move || {
                nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        let run = TracerRun::start_command(command);
        let address = Self::address_of(&run);
        let probe = address.clone();
        crate::in_netns(netns, move || Self::wait_healthy(&probe));
        Self { run, address }
    }

    /// Where the tracer said it serves.
    fn address_of(run: &TracerRun) -> String {
        run.stderr_lines()
            .iter()
            .find_map(|l| l.strip_prefix("tracer: serving http://")?.split('/').next())
            .unwrap_or_else(|| panic!("no address on stderr: {:?}", run.stderr_lines()))
            .to_string()
    }

    fn wait_healthy(address: &str) {
        wait_for("/healthz to answer 200", Duration::from_secs(10), || {
            (get(address, "/healthz") == (200, "ok\n".to_string())).then_some(())
        });
    }
}

/// Status and body of `GET http://{address}{path}` (10 s at most).
pub fn get(address: &str, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent
        .get(&format!("http://{address}{path}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {address}{path}: {e}"));
    let body = response
        .body_mut()
        .read_to_string()
        .expect("reading the body");
    (response.status().as_u16(), body)
}

/// One scrape of `/metrics`: its text and its samples.
pub struct Scrape {
    pub text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    pub fn of(address: &str) -> Self {
        let (status, text) = get(address, "/metrics");
        assert_eq!(status, 200, "{text}");
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let samples = prometheus_parse::Scrape::parse(lines)
            .expect("parsing the exposition")
            .samples;
        Self { text, samples }
    }

    /// The value of the series `metric` whose labels are exactly `labels`.
    pub fn value(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .filter(|s| s.metric == metric && s.labels.len() == labels.len())
            .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => panic!("{metric} is not a plain number"),
            })
    }

    /// The series of `metric` that have label `key` equal to `value`.
    pub fn series_with(&self, metric: &str, key: &str, value: &str) -> usize {
        self.samples
            .iter()
            .filter(|s| s.metric == metric && s.labels.get(key) == Some(value))
            .count()
    }

    /// What `promtool check metrics` says of this exposition: `Ok` when it accepts it.
    pub fn promtool_check(&self) -> Result<(), String> {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running promtool (Debian package prometheus; cargo xtask setup installs it)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(self.text.as_bytes())
            .expect("writing to promtool");
        let out = child.wait_with_output().expect("waiting for promtool");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}
