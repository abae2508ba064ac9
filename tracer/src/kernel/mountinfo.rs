//! The lines of /proc/self/mountinfo that the tracers look at.

use std::fs;

/// One mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The mounted object's root within its filesystem (`net:[4026532290]` for an nsfs mount).
    pub root: String,
    /// Where it is mounted, with mountinfo's octal escapes (`\040`) undone.
    pub mount_point: Vec<u8>,
    pub fstype: String,
    pub super_options: String,
}

/// Parses mountinfo; malformed lines are skipped. Bytes, not text: a mount point may hold any
/// byte but the few mountinfo escapes (whitespace and backslash).
pub fn parse(mountinfo: &[u8]) -> Vec<Mount> {
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            // Fields: id parent major:minor root mount-point options ... - fstype source super-options
            let split = line.windows(3).position(|w| w == b" - ")?;
            let (left, right) = (&line[..split], &line[split + 3..]);
            let mut left = left.split(|&b| b == b' ');
            let root = left.nth(3)?;
            let mount_point = left.next()?;
            let mut right = right.split(|&b| b == b' ');
            let fstype = right.next()?;
            let super_options = right.nth(1).unwrap_or(b"");
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            Some(Mount {
                root: text(root),
                mount_point: unescape(mount_point),
                fstype: text(fstype),
                super_options: text(super_options),
            })
        })
        .collect()
}

/// The mounts of this process's mount namespace (none if unreadable).
pub fn read() -> Vec<Mount> {
    fs::read("/proc/self/mountinfo")
        .map(|m| parse(&m))
        .unwrap_or_default()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_and_skips_malformed_lines() {
        let text = b"\
not a mountinfo line
36 25 0:31 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
615 29 0:4 net:[4026532300] /var/run/with\\040space rw - nsfs nsfs rw
616 29 0:4 net:[4026532301] /run/\xff\\012nl rw - nsfs nsfs rw";
        let mounts = parse(text);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[2].mount_point, b"/run/\xff\nnl");
        assert_eq!(mounts[0].mount_point, b"/sys/fs/cgroup/memory");
        assert_eq!(
            (mounts[0].fstype.as_str(), mounts[0].super_options.as_str()),
            ("cgroup", "rw,memory")
        );
        assert_eq!(mounts[1].root, "net:[4026532300]");
        assert_eq!(mounts[1].mount_point, b"/var/run/with space");
        assert_eq!(unescape(b"/trailing\\04"), b"/trailing\\04");
    }
}
