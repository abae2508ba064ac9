//! What the tracer learned from the running kernel, kept between runs so that a start does
//! not read it again: from its BTF (struct offsets, sizes, enum values, type ids), and from
//! /proc/kallsyms (function addresses, which change at every boot).
//!
//! An entry is used only when it was written for the same source: its identity is a hash of
//! `/sys/kernel/btf/vmlinux`'s bytes (or of the boot's id, for addresses), their length and
//! the kernel release, and the entry carries a format version and a checksum of its body.
//! Anything else (another kernel or boot, a truncated or altered file, a symlink, a file or
//! directory someone else owns) is ignored, and the facts are read anew and written.

use std::{
    collections::BTreeMap,
    fs::{self, DirBuilder, OpenOptions},
    io::{Read as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::PathBuf,
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

/// Where entries are kept unless [`DIR_ENV`] says otherwise: a tmpfs, emptied at boot, which
/// is when the kernel's BTF can change.
pub const DEFAULT_DIR: &str = "/run/tracer";
/// The directory to keep entries in instead of [`DEFAULT_DIR`]; empty: keep none.
pub const DIR_ENV: &str = "TRACER_BTF_CACHE";
/// The entry of the facts read from BTF, in the directory.
pub const BTF_FILE: &str = "btf-facts";
/// The entry of the function addresses read from /proc/kallsyms.
pub const KALLSYMS_FILE: &str = "kallsyms-facts";
/// The first line's start: the format, whose version changes with the entry's layout.
const MAGIC: &str = "tracer-facts 2";
/// Far above any real entry (a few KiB); a larger file is not read.
const MAX_ENTRY_BYTES: u64 = 1 << 20;

/// One answer the BTF gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// An offset, a size or an enum value.
    Value(u64),
    /// A function's `[start, end)` addresses.
    Range(u64, u64),
    /// Type ids.
    Ids(Vec<u32>),
    /// The BTF does not have it; why, in words.
    Missing(String),
}

/// Answers by question (e.g. `offset task_struct pid`).
pub type Facts = BTreeMap<String, Answer>;

/// Which BTF (or boot) the facts were read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    hash: String,
    bytes: u64,
    release: String,
}

impl Identity {
    /// The identity of the BTF `bytes` (or boot id) on the running kernel.
    pub fn of(bytes: &[u8]) -> Self {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            hash: format!("{:032x}", xxh3_128(bytes)),
            bytes: bytes.len() as u64,
            release,
        }
    }
}

/// The entry as written after the first line.
#[derive(Serialize, Deserialize)]
struct Entry {
    identity: String,
    source_bytes: u64,
    release: String,
    facts: Facts,
}

/// The cache entry of one kind (its file) for one identity.
pub struct Cache {
    dir: PathBuf,
    file: &'static str,
    identity: Identity,
}

impl Cache {
    /// The cache in the configured directory ([`DIR_ENV`], else [`DEFAULT_DIR`]); `None` if
    /// caching is turned off.
    pub fn configured(file: &'static str, identity: Identity) -> Option<Self> {
        let dir = match std::env::var_os(DIR_ENV) {
            Some(dir) if dir.is_empty() => return None,
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(DEFAULT_DIR),
        };
        Some(Self::in_dir(dir, file, identity))
    }

    pub fn in_dir(dir: PathBuf, file: &'static str, identity: Identity) -> Self {
        Self {
            dir,
            file,
            identity,
        }
    }

    /// The entry's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(self.file)
    }

    /// The facts of the entry, if it was written for this BTF and is intact; else why not.
    pub fn load(&self) -> Result<Facts> {
        self.check_dir()?;
        let path = self.path();
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let meta = file.metadata()?;
        if !meta.is_file() || meta.uid() != euid() {
            bail!("{} is not a regular file of this user's", path.display());
        }
        if meta.len() > MAX_ENTRY_BYTES {
            bail!("{} is {} bytes, too large", path.display(), meta.len());
        }
        let mut raw = Vec::new();
        file.read_to_end(&mut raw)?;
        self.decode(&raw)
    }

    /// Writes `facts` as the entry, atomically (a new file renamed over the old one).
    pub fn store(&self, facts: &Facts) -> Result<()> {
        if !self.dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .with_context(|| format!("creating {}", self.dir.display()))?;
        }
        self.check_dir()?;
        let raw = self.encode(facts)?;
        let tmp = self
            .dir
            .join(format!(".{}.{}.tmp", self.file, std::process::id()));
        let _ = fs::remove_file(&tmp);
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            file.write_all(&raw)?;
            fs::rename(&tmp, self.path())
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.with_context(|| format!("writing {}", self.path().display()))
    }

    /// The directory must be a real directory of this user's that no one else can write in:
    /// else another user could plant an entry.
    fn check_dir(&self) -> Result<()> {
        let meta = fs::symlink_metadata(&self.dir)
            .with_context(|| format!("reading {}", self.dir.display()))?;
        if !meta.is_dir() || meta.uid() != euid() || meta.mode() & 0o022 != 0 {
            bail!(
                "{} is not a directory of this user's that only it can write in; \
                 not using it (remove it, or set {DIR_ENV} to another directory)",
                self.dir.display()
            );
        }
        Ok(())
    }

    fn encode(&self, facts: &Facts) -> Result<Vec<u8>> {
        let body = serde_json::to_vec(&Entry {
            identity: self.identity.hash.clone(),
            source_bytes: self.identity.bytes,
            release: self.identity.release.clone(),
            facts: facts.clone(),
        })?;
        let mut raw = format!("{MAGIC} {:032x}\n", xxh3_128(&body)).into_bytes();
        raw.extend(body);
        Ok(raw)
    }

    fn decode(&self, raw: &[u8]) -> Result<Facts> {
        let newline = raw
            .iter()
            .position(|&b| b == b'\n')
            .context("no header line")?;
        let (head, body) = (&raw[..newline], &raw[newline + 1..]);
        let head = std::str::from_utf8(head).context("header is not text")?;
        let checksum = head
            .strip_prefix(MAGIC)
            .and_then(|rest| rest.strip_prefix(' '))
            .with_context(|| format!("not a `{MAGIC}` entry"))?;
        if checksum != format!("{:032x}", xxh3_128(body)) {
            bail!("checksum mismatch (truncated or altered)");
        }
        let entry: Entry = serde_json::from_slice(body).context("unreadable body")?;
        let written_for = Identity {
            hash: entry.identity,
            bytes: entry.source_bytes,
            release: entry.release,
        };
        if written_for != self.identity {
            bail!(
                "written for another kernel BTF or boot ({} bytes, hash {}, release {})",
                written_for.bytes,
                written_for.hash,
                written_for.release
            );
        }
        Ok(entry.facts)
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::{symlink, PermissionsExt as _},
        path::Path,
    };

    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("tracer-btf-cache-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            Self(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn facts() -> Facts {
        Facts::from([
            ("offset task_struct pid".into(), Answer::Value(2464)),
            ("ids typedef btf_trace_x".into(), Answer::Ids(vec![7, 9])),
            ("offset net gen".into(), Answer::Missing("no field".into())),
        ])
    }

    #[test]
    fn an_entry_round_trips_with_private_permissions() {
        let dir = Dir::new("round");
        let cache = Cache::in_dir(dir.0.clone(), BTF_FILE, Identity::of(b"btf one"));
        cache.store(&facts()).unwrap();
        assert_eq!(cache.load().unwrap(), facts());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.0), 0o700);
        assert_eq!(mode(&cache.path()), 0o600);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[test]
    fn an_entry_for_another_btf_is_refused() {
        let dir = Dir::new("other");
        Cache::in_dir(dir.0.clone(), BTF_FILE, Identity::of(b"btf one"))
            .store(&facts())
            .unwrap();
        let e = Cache::in_dir(dir.0.clone(), BTF_FILE, Identity::of(b"btf two"))
            .load()
            .unwrap_err();
        assert!(format!("{e:#}").contains("another kernel BTF"), "{e:#}");
    }

    #[test]
    fn damaged_entries_are_refused() {
        let dir = Dir::new("damaged");
        let cache = Cache::in_dir(dir.0.clone(), BTF_FILE, Identity::of(b"btf one"));
        cache.store(&facts()).unwrap();
        let good = fs::read(cache.path()).unwrap();
        let header = good.iter().position(|&b| b == b'\n').unwrap();
        let mut damaged = Vec::new();
        for at in [0, header - 1, header + 1, good.len() / 2, good.len() - 2] {
            let mut flipped = good.clone();
            flipped[at] ^= 0x01;
            damaged.push(flipped);
        }
        for len in [0, 5, header, header + 1, good.len() - 1] {
            damaged.push(good[..len].to_vec());
        }
        damaged.push(vec![0xff; 300]);
        damaged.push(b"tracer-btf-facts 1 00\n{}".to_vec());
        for bytes in damaged {
            fs::write(cache.path(), &bytes).unwrap();
            assert!(
                cache.load().is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn a_planted_symlink_or_open_directory_is_not_followed() {
        let dir = Dir::new("planted");
        let cache = Cache::in_dir(dir.0.clone(), BTF_FILE, Identity::of(b"btf one"));
        cache.store(&facts()).unwrap();
        let elsewhere = dir.0.with_extension("elsewhere");
        fs::rename(cache.path(), &elsewhere).unwrap();
        symlink(&elsewhere, cache.path()).unwrap();
        let refused = cache.load();
        fs::remove_file(&elsewhere).unwrap();
        assert!(refused.is_err());

        fs::remove_file(cache.path()).unwrap();
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o777)).unwrap();
        let e = cache.store(&facts()).unwrap_err();
        assert!(format!("{e:#}").contains(DIR_ENV), "{e:#}");
        assert!(!cache.path().exists());
    }
}
