//! Finding the node's network namespaces and reading files from inside one.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _, Result};
use nix::sched::{setns, CloneFlags};

/// A file that refers to a network namespace: `/proc/PID/ns/net` or an nsfs bind mount such as
/// `/run/netns/NAME`.
#[derive(Clone, Debug)]
pub struct NetnsRef {
    pub inode: u64,
    pub path: PathBuf,
}

/// Every network namespace reachable through a process or a bind mount, by inode.
pub fn discover() -> BTreeMap<u64, NetnsRef> {
    let mut found = BTreeMap::new();
    let mut add = |path: PathBuf| {
        if let Ok(meta) = fs::metadata(&path) {
            found.entry(meta.ino()).or_insert(NetnsRef {
                inode: meta.ino(),
                path,
            });
        }
    };
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                add(entry.path().join("ns/net"));
            }
        }
    }
    for mount in nsfs_mounts() {
        add(mount);
    }
    found
}

/// Mount points of nsfs files (namespaces kept alive by a bind mount), from mountinfo.
pub fn nsfs_mounts() -> Vec<PathBuf> {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split(' ').next() == Some("nsfs")).then(|| left.split(' ').nth(4))?
        })
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .collect()
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal (`\040`).
fn unescape_mount_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads `path` as seen from inside the namespace `netns`: `/proc/thread-self/net/...` shows
/// that namespace's network files, `/proc/sys/net/...` its sysctls. A short-lived thread
/// enters the namespace, so the process itself never moves.
pub fn read_in(netns: &Path, path: &'static str) -> Result<String> {
    let file = fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::spawn(move || -> Result<String> {
        setns(&file, CloneFlags::CLONE_NEWNET).context("entering the network namespace")?;
        fs::read_to_string(path).with_context(|| format!("reading {path}"))
    })
    .join()
    .map_err(|_| anyhow!("the namespace reader thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_namespace_and_reads_inside_it() {
        let own = fs::metadata("/proc/self/ns/net").unwrap().ino();
        let all = discover();
        assert!(all.contains_key(&own));
        let dev = read_in(&all[&own].path, "/proc/thread-self/net/dev").unwrap();
        assert!(dev.contains("lo:"), "{dev}");
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/run/netns/a\\040b"), "/run/netns/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path("/trailing\\04"), "/trailing\\04");
    }
}
