//! `TARGET` of `tracer probe`: `host:port` (TCP connect), `udp://host:port`, `icmp://host`,
//! resolved once, in the tracer's own namespace, before anything is probed.

use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs as _},
    sync::mpsc,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A TCP connect.
    Tcp,
    /// A UDP datagram with `payload`, sent `burst` times at once from one socket; a reply to
    /// each (equal to `expect` when given) is success.
    Udp {
        payload: Vec<u8>,
        expect: Option<Vec<u8>>,
        burst: u16,
    },
    /// An ICMP (ICMPv6) echo request; its reply is success.
    Icmp,
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Udp { .. } => "udp",
            Kind::Icmp => "icmp",
        }
    }
}

/// A parsed, resolved target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    /// The address probed; port 0 for ICMP.
    pub addr: SocketAddr,
}

/// Payload of a UDP probe without `--payload`.
const DEFAULT_PAYLOAD: &[u8] = b"tracer probe\n";

/// Splits `host:port` (`[v6]:port`) into its host and port.
fn host_port(text: &str, whole: &str) -> Result<(String, u16)> {
    let (host, port) = text
        .rsplit_once(':')
        .with_context(|| format!("TARGET `{whole}` has no port: write HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("TARGET `{whole}` has no host: write HOST:PORT");
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| format!("TARGET `{whole}`: `{port}` is not a port (1-65535)"))?;
    Ok((host.to_string(), port))
}

/// How long the system's resolver may take for a TARGET's name: a resolver that never
/// answers (an unreachable nameserver, `options timeout:30 attempts:5`) must not stall the
/// command.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `host` is a name under `.invalid`, which never resolves (RFC 6761 asks libraries to
/// answer at once): it is not sent to a nameserver.
fn is_invalid_tld(host: &str) -> bool {
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    name == "invalid" || name.ends_with(".invalid")
}

/// The first address `host` resolves to, within [`RESOLVE_TIMEOUT`].
fn resolve(host: &str, port: u16, whole: &str) -> Result<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if is_invalid_tld(host) {
        bail!(
            "TARGET `{whole}`: `{host}` is under .invalid, which never resolves; give a host \
             name or an address"
        );
    }
    // getaddrinfo cannot be cancelled: it runs on a thread of its own, left to finish (or to
    // end with the process) when it takes too long.
    let (sender, receiver) = mpsc::channel();
    let name = host.to_string();
    std::thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            let _ = sender.send(
                (name.as_str(), port)
                    .to_socket_addrs()
                    .map(|mut a| a.next()),
            );
        })
        .context("starting the resolver thread")?;
    match receiver.recv_timeout(RESOLVE_TIMEOUT) {
        Ok(resolved) => resolved
            .with_context(|| format!("TARGET `{whole}`: cannot resolve `{host}`; give an address"))?
            .with_context(|| format!("TARGET `{whole}`: `{host}` has no address")),
        Err(_) => bail!(
            "TARGET `{whole}`: resolving `{host}` took longer than {}s (check the nameservers \
             in /etc/resolv.conf); give an address",
            RESOLVE_TIMEOUT.as_secs()
        ),
    }
}

impl Target {
    /// Parses and resolves `text`; `payload` and `expect` are for UDP only.
    pub fn parse(text: &str, payload: Option<&str>, expect: Option<&str>) -> Result<Self> {
        let (scheme, rest) = match text.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None => ("tcp".to_string(), text),
        };
        if (payload.is_some() || expect.is_some()) && scheme != "udp" {
            bail!("--payload and --expect are for udp:// targets only");
        }
        let (kind, addr) = match scheme.as_str() {
            "tcp" => {
                let (host, port) = host_port(rest, text)?;
                (Kind::Tcp, resolve(&host, port, text)?)
            }
            "udp" => {
                let (host, port) = host_port(rest, text)?;
                let kind = Kind::Udp {
                    payload: payload.map_or(DEFAULT_PAYLOAD.to_vec(), |p| p.as_bytes().to_vec()),
                    expect: expect.map(|e| e.as_bytes().to_vec()),
                    burst: 1,
                };
                (kind, resolve(&host, port, text)?)
            }
            "icmp" => {
                let host = rest.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() || host.parse::<SocketAddr>().is_ok() {
                    bail!("TARGET `{text}`: write icmp://HOST, without a port");
                }
                (Kind::Icmp, resolve(host, 0, text)?)
            }
            other => bail!(
                "TARGET `{text}`: unknown scheme `{other}://`; use HOST:PORT (TCP), \
                 udp://HOST:PORT or icmp://HOST"
            ),
        };
        if addr.ip().is_unspecified() {
            bail!("TARGET `{text}`: {} is not an address to probe", addr.ip());
        }
        Ok(Self { kind, addr })
    }

    /// A UDP target whose datagram is sent `burst` times at once (`--burst`).
    pub fn with_burst(mut self, copies: u16) -> Result<Self> {
        match &mut self.kind {
            Kind::Udp { burst, .. } => *burst = copies,
            _ if copies == 1 => {}
            _ => bail!("--burst is for udp:// targets only"),
        }
        Ok(self)
    }

    /// `10.0.0.1:80`, `[fd00::1]:53`, or the bare address for ICMP.
    pub fn endpoint(&self) -> String {
        match self.kind {
            Kind::Icmp => self.addr.ip().to_string(),
            _ => self.addr.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme() {
        let tcp = Target::parse("10.0.0.1:80", None, None).unwrap();
        assert_eq!(
            (tcp.kind, tcp.addr),
            (Kind::Tcp, "10.0.0.1:80".parse().unwrap())
        );
        let udp = Target::parse("udp://[fd00::1]:53", Some("q"), Some("a")).unwrap();
        assert_eq!(udp.addr, "[fd00::1]:53".parse().unwrap());
        assert_eq!(
            udp.kind,
            Kind::Udp {
                payload: b"q".to_vec(),
                expect: Some(b"a".to_vec()),
                burst: 1,
            }
        );
        let icmp = Target::parse("ICMP://127.0.0.1", None, None).unwrap();
        assert_eq!(
            (icmp.kind.name(), icmp.endpoint()),
            ("icmp", "127.0.0.1".into())
        );
        assert_eq!(
            Target::parse("127.0.0.1:22", None, None)
                .unwrap()
                .addr
                .port(),
            22
        );
    }

    #[test]
    fn malformed_targets_say_what_to_write() {
        for (text, says) in [
            ("10.0.0.1", "no port"),
            (":80", "no host"),
            ("10.0.0.1:99999", "not a port"),
            ("10.0.0.1:0", "not a port"),
            ("ftp://10.0.0.1:21", "unknown scheme"),
            ("icmp://10.0.0.1:7", "without a port"),
            ("icmp://", "without a port"),
            ("0.0.0.0:80", "not an address"),
            ("nonexistent.invalid:80", "never resolves"),
            ("udp://Host.INVALID.:53", "never resolves"),
        ] {
            let e = Target::parse(text, None, None).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
        let e = Target::parse("10.0.0.1:80", Some("x"), None).unwrap_err();
        assert!(e.to_string().contains("udp:// targets only"), "{e}");
        let tcp = Target::parse("10.0.0.1:80", None, None).unwrap();
        let e = tcp.with_burst(2).unwrap_err();
        assert!(e.to_string().contains("udp:// targets only"), "{e}");
    }
}
