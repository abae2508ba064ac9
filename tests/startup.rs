//! Start-up with the cache of kernel facts (`TRACER_BTF_CACHE`): a cold start writes it, a
//! warm one reads it and reports the same events, and an entry for another BTF (or, for
//! function addresses, another boot) or a damaged one is ignored and rewritten, never used.

use std::{os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use nix::sys::signal::Signal;
use serde_json::Value;
use tracer_tests::*;
use xxhash_rust::xxh3::xxh3_128;

const ENTRY: &str = "btf-facts";

/// One `signals` run with the cache in `dir`: a SIGUSR1 the test sends to a process it owns,
/// checked against the pids it knows. Returns the stderr printed up to "ready".
fn traced_signal(dir: &Path) -> String {
    let mut target = sleeper(&[]);
    let mut command = tracer_command();
    command.env("TRACER_BTF_CACHE", dir).args([
        "-v",
        "signals",
        "--json",
        "--pid",
        &target.pid().to_string(),
    ]);
    let run = TracerRun::start_command(command);
    let stderr = run.stderr_lines().join("\n");
    send(target.pid(), Signal::SIGUSR1);
    target
        .wait_timeout(Duration::from_secs(10))
        .expect("target died of SIGUSR1");
    let out = run.stop();
    assert!(out.status.success(), "tracer failed: {}", out.stderr);
    let events = out.of_type("signal");
    assert_eq!(events.len(), 1, "events: {events:#?}\n{stderr}");
    let e = events[0];
    assert_eq!(e["signo"], 10, "{e}");
    assert_eq!(e["code"], "kill", "{e}");
    assert_eq!(e["target"]["pid"], target.pid(), "{e}");
    assert_eq!(e["target"]["comm"], "sleep", "{e}");
    assert_eq!(e["sender"]["pid"], std::process::id(), "{e}");
    assert_eq!(e["sender"]["tid"], nix::unistd::gettid().as_raw(), "{e}");
    assert_eq!(e["target"]["tid"], target.pid(), "{e}");
    stderr
}

/// The entry's body as JSON.
fn body(entry: &[u8]) -> Value {
    let newline = entry.iter().position(|&b| b == b'\n').expect("a header");
    serde_json::from_slice(&entry[newline + 1..]).expect("a JSON body")
}

/// An entry with `body`, checksummed as the tracer does, so that only its content can refuse it.
fn signed(body: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(body).unwrap();
    let mut entry = format!("tracer-facts 2 {:032x}\n", xxh3_128(&body)).into_bytes();
    entry.extend(body);
    entry
}

#[test]
fn a_cold_start_writes_the_cache_and_a_warm_one_uses_it() {
    let dir = TempDir::new("btf-cache-warm");
    let cache = dir.0.join("cache");
    let entry = cache.join(ENTRY);

    let cold = traced_signal(&cache);
    assert!(cold.contains("cache not used"), "{cold}");
    assert!(cold.contains("facts written to"), "{cold}");
    let written = std::fs::read(&entry).expect("the entry");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700);
    assert_eq!(mode(&entry), 0o600);
    // The offsets the programs read are among the facts.
    let facts = &body(&written)["facts"];
    assert!(facts["offset task_struct pid"]["value"].is_u64(), "{facts}");

    let warm = traced_signal(&cache);
    assert!(warm.contains("facts from the cache"), "{warm}");
    assert!(!warm.contains("facts written"), "{warm}");
    assert_eq!(std::fs::read(&entry).unwrap(), written);
}

#[test]
fn an_entry_for_another_btf_or_a_damaged_one_is_ignored_and_rewritten() {
    let dir = TempDir::new("btf-cache-bad");
    let cache = dir.0.join("cache");
    let entry = cache.join(ENTRY);
    traced_signal(&cache);
    let good = std::fs::read(&entry).expect("the entry");

    // Another kernel's entry, with other offsets for the pids: used, it would name wrong pids.
    let mut other = body(&good);
    other["identity"] = Value::from("0123456789abcdef0123456789abcdef");
    for field in ["pid", "tgid"] {
        let offset = &mut other["facts"][format!("offset task_struct {field}")]["value"];
        *offset = Value::from(offset.as_u64().unwrap() + 8);
    }
    let mut flipped = good.clone();
    let digit = flipped.len() - 20;
    flipped[digit] ^= 0x01;
    let bad: [(&str, Vec<u8>); 4] = [
        ("another BTF's entry", signed(&other)),
        ("a flipped byte", flipped),
        ("a truncated entry", good[..good.len() / 2].to_vec()),
        ("garbage", vec![0x5a; 4096]),
    ];
    for (what, bytes) in bad {
        std::fs::write(&entry, &bytes).unwrap();
        let stderr = traced_signal(&cache);
        assert!(stderr.contains("cache not used"), "{what}: {stderr}");
        assert!(stderr.contains("facts written to"), "{what}: {stderr}");
        assert_eq!(
            std::fs::read(&entry).unwrap(),
            good,
            "{what}: not rewritten"
        );
    }
}

/// `cleanup_net`'s address and the next symbol's, as /proc/kallsyms lists them now.
fn cleanup_net_range() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/kallsyms").expect("/proc/kallsyms");
    let mut addresses: Vec<u64> = Vec::new();
    let mut start = None;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let addr = u64::from_str_radix(addr, 16).expect("a hex address");
        addresses.push(addr);
        if name == "cleanup_net" && matches!(kind, "t" | "T") {
            start = Some(addr);
        }
    }
    let start = start.expect("cleanup_net in /proc/kallsyms");
    let end = addresses.into_iter().filter(|&a| a > start).min().unwrap();
    (start, end)
}

/// Starts and stops `netns --watch` (whose programs compare with `cleanup_net`'s address)
/// with the cache in `dir`; returns its stderr up to "ready".
fn watch_once(dir: &Path) -> String {
    let mut command = tracer_command();
    command
        .env("TRACER_BTF_CACHE", dir)
        .args(["-v", "netns", "--watch", "--json"]);
    let run = TracerRun::start_command(command);
    let stderr = run.stderr_lines().join("\n");
    let out = run.stop();
    assert!(out.status.success(), "tracer failed: {}", out.stderr);
    stderr
}

#[test]
fn function_addresses_are_cached_for_this_boot_only() {
    let dir = TempDir::new("kallsyms-cache");
    let cache = dir.0.join("cache");
    let entry = cache.join("kallsyms-facts");
    let (start, end) = cleanup_net_range();

    watch_once(&cache);
    let good = std::fs::read(&entry).expect("the kallsyms entry");
    let range = &body(&good)["facts"]["function cleanup_net"]["range"];
    assert_eq!(range[0], start, "{range}");
    assert_eq!(range[1], end, "{range}");
    let warm = watch_once(&cache);
    assert!(!warm.contains("kallsyms: cache not used"), "{warm}");
    assert_eq!(std::fs::read(&entry).unwrap(), good);

    // Another boot's entry (KASLR moves every function): its addresses are never used.
    let mut other = body(&good);
    other["identity"] = Value::from("0123456789abcdef0123456789abcdef");
    other["facts"]["function cleanup_net"]["range"] = Value::from(vec![start + 64, end + 64]);
    for (what, bytes) in [
        ("another boot's entry", signed(&other)),
        ("a truncated entry", good[..good.len() / 2].to_vec()),
    ] {
        std::fs::write(&entry, &bytes).unwrap();
        let stderr = watch_once(&cache);
        assert!(
            stderr.contains("kallsyms: cache not used"),
            "{what}: {stderr}"
        );
        assert_eq!(
            std::fs::read(&entry).unwrap(),
            good,
            "{what}: not rewritten"
        );
    }
}
