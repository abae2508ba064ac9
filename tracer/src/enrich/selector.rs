//! `--container`, `--pod`, `--namespace`, `--workload`: which workloads a run is about.

use globset::{Glob, GlobMatcher};

use super::identity::{Enricher, Identity, Pod};

/// A name from the command line: a glob (`web-*`, `db-?`, `api-[ab]`) or a plain name, which
/// matches itself only.
#[derive(Clone, Debug)]
pub struct NamePattern {
    text: String,
    matcher: GlobMatcher,
}

impl NamePattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let glob = Glob::new(text).map_err(|e| format!("`{text}` is not a glob: {}", e.kind()))?;
        Ok(Self {
            text: text.into(),
            matcher: glob.compile_matcher(),
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.matcher.is_match(name)
    }

    /// As given.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for NamePattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for NamePattern {}

/// The characters of the random parts of generated Kubernetes names (apimachinery's
/// `rand.SafeEncodeString`: no vowels, no digits that read as letters).
const GENERATED: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generated(part: &str, lengths: std::ops::RangeInclusive<usize>) -> bool {
    lengths.contains(&part.len()) && part.bytes().all(|b| GENERATED.contains(&b))
}

/// A StatefulSet ordinal: `0`, `1`, ... (no leading zero).
fn ordinal(part: &str) -> bool {
    !part.is_empty()
        && part.bytes().all(|b| b.is_ascii_digit())
        && (part == "0" || !part.starts_with('0'))
}

/// The workload names a pod's name can stem from, by the names Kubernetes generates, most
/// likely first:
/// - Deployment: `NAME-<pod-template-hash>-<5>` (the hash: a uint32's decimal digits, encoded
///   one character each; fewer than 6 only for one hash in 40,000, so 6 to 10 are taken, and a
///   DaemonSet `api-grpc` is not read as Deployment `api`'s pods);
/// - CronJob: `NAME-<scheduled minute>-<5>` (its Job is `NAME-<minute>`);
/// - DaemonSet, Job, a bare ReplicaSet: `NAME-<5>`;
/// - StatefulSet: `NAME-<ordinal>`.
///
/// `<5>` is 5 generated characters. The rule is the name alone: the kubelet gives the runtime
/// no owner references, so a bare pod named like one of these is taken for its workload's.
pub fn workloads_of(pod: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let Some((base, last)) = pod.rsplit_once('-') else {
        return names;
    };
    if generated(last, 5..=5) {
        if let Some((name, middle)) = base.rsplit_once('-') {
            let cron_minute = middle.len() >= 8 && middle.bytes().all(|b| b.is_ascii_digit());
            if !name.is_empty() && (generated(middle, 6..=10) || cron_minute) {
                names.push(name);
            }
        }
    }
    if !base.is_empty() && (generated(last, 5..=5) || ordinal(last)) {
        names.push(base);
    }
    names
}

/// Workload filters from the command line; all given ones must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// A container id prefix, or a container name or glob.
    pub container: Option<NamePattern>,
    /// A pod name or glob.
    pub pod: Option<NamePattern>,
    /// A pod namespace.
    pub namespace: Option<String>,
    /// A Deployment, StatefulSet, DaemonSet, Job or CronJob: its pods, by [`workloads_of`].
    pub workload: Option<String>,
}

impl Selector {
    /// Whether any filter is set.
    pub fn is_active(&self) -> bool {
        self.container.is_some()
            || self.pod.is_some()
            || self.namespace.is_some()
            || self.workload.is_some()
    }

    pub fn matches(&self, identity: &Identity) -> bool {
        let container = identity.container.as_ref();
        let container_ok = self.container.as_ref().is_none_or(|want| {
            container.is_some_and(|c| {
                (!want.as_str().is_empty() && c.id.starts_with(want.as_str()))
                    || c.name.as_deref().is_some_and(|name| want.matches(name))
            })
        });
        container_ok && self.matches_pod(identity.pod.as_ref())
    }

    /// The `--pod`, `--workload` and `--namespace` part, for what only a pod identifies (a
    /// network namespace).
    pub fn matches_pod(&self, pod: Option<&Pod>) -> bool {
        let name = pod.and_then(|p| p.name.as_deref());
        let pod_ok = self
            .pod
            .as_ref()
            .is_none_or(|want| name.is_some_and(|n| want.matches(n)));
        let workload_ok = self
            .workload
            .as_deref()
            .is_none_or(|want| name.is_some_and(|n| workloads_of(n).contains(&want)));
        let namespace_ok = self
            .namespace
            .as_deref()
            .is_none_or(|want| pod.is_some_and(|p| p.namespace.as_deref() == Some(want)));
        pod_ok && workload_ok && namespace_ok
    }

    /// The filters as given: `--pod 'web-*' --namespace shop`.
    fn describe(&self) -> String {
        [
            (
                "--container",
                self.container.as_ref().map(NamePattern::as_str),
            ),
            ("--pod", self.pod.as_ref().map(NamePattern::as_str)),
            ("--workload", self.workload.as_deref()),
            ("--namespace", self.namespace.as_deref()),
        ]
        .iter()
        .filter_map(|(flag, value)| Some(format!("{flag} '{}'", (*value)?)))
        .collect::<Vec<_>>()
        .join(" ")
    }

    /// Says on stderr when no container on the node matches now, and that the run goes on:
    /// the workload may start later (its containers are added as they do).
    pub fn warn_if_unmatched(&self, tracer: &str, enricher: &Enricher) {
        if self.is_active()
            && !enricher
                .cgroups()
                .any(|(_, identity)| self.matches(identity))
        {
            eprintln!(
                "tracer: {tracer}: nothing on this node matches {} yet; tracing on, what \
                 starts later and matches is added",
                self.describe()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::identity::Container;

    fn identity(id: &str, name: &str, pod: &str, namespace: &str) -> Identity {
        Identity {
            container: Some(Container {
                id: id.into(),
                name: Some(name.into()),
                runtime: Some("containerd"),
                image: None,
            }),
            pod: Some(Pod {
                namespace: Some(namespace.into()),
                name: Some(pod.into()),
                uid: "u".into(),
                qos: None,
            }),
        }
    }

    #[test]
    fn every_given_filter_must_match() {
        let web_app = identity("abc123", "app", "web", "shop");
        let select =
            |container: Option<&str>, pod: Option<&str>, namespace: Option<&str>| Selector {
                container: container.map(|c| NamePattern::parse(c).unwrap()),
                pod: pod.map(|p| NamePattern::parse(p).unwrap()),
                namespace: namespace.map(Into::into),
                workload: None,
            };
        assert!(select(Some("abc"), None, None).matches(&web_app));
        assert!(select(Some("app"), Some("web"), Some("shop")).matches(&web_app));
        assert!(!select(Some("bc"), None, None).matches(&web_app));
        assert!(!select(Some(""), None, None).matches(&web_app));
        assert!(!select(None, Some("db"), None).matches(&web_app));
        assert!(!select(None, Some("web"), Some("store")).matches(&web_app));
        // A host process matches no workload filter; no filter at all is inactive.
        assert!(!select(None, None, Some("shop")).matches(&Identity::default()));
        assert!(!Selector::default().is_active());
        assert!(select(None, Some("web"), None).is_active());
    }

    #[test]
    fn pod_and_container_globs() {
        let web = identity("abc123", "app-main", "web-5d78c9f6b-x2x9q", "shop");
        let select = |container: Option<&str>, pod: Option<&str>| Selector {
            container: container.map(|c| NamePattern::parse(c).unwrap()),
            pod: pod.map(|p| NamePattern::parse(p).unwrap()),
            ..Selector::default()
        };
        assert!(select(None, Some("web-*")).matches(&web));
        assert!(select(Some("app-*"), Some("web-?d78c9f6b-*")).matches(&web));
        assert!(!select(None, Some("web")).matches(&web));
        assert!(!select(None, Some("db-*")).matches(&web));
        assert!(select(Some("abc"), None).matches(&web));
        assert!(NamePattern::parse("web-[").is_err());
    }

    #[test]
    fn workload_names_as_kubernetes_generates_them() {
        assert_eq!(
            workloads_of("web-5d78c9f6b-x2x9q"),
            ["web", "web-5d78c9f6b"]
        );
        assert_eq!(workloads_of("db-0"), ["db"]);
        assert_eq!(workloads_of("db-12"), ["db"]);
        assert_eq!(workloads_of("fluent-bit-x7k2m"), ["fluent-bit"]);
        assert_eq!(
            workloads_of("backup-28912345-bq7ws"),
            ["backup", "backup-28912345"]
        );
        // Vowels are never generated; a leading zero is no ordinal; no suffix, no workload.
        assert_eq!(workloads_of("web-api-x2x9q"), ["web-api"]);
        // Four consonants are a name's word, not a pod-template-hash.
        assert_eq!(workloads_of("api-grpc-x2x9q"), ["api-grpc"]);
        assert!(workloads_of("web-01").is_empty());
        assert!(workloads_of("web").is_empty());
        assert!(workloads_of("web-abcde").is_empty());
        assert!(workloads_of("-0").is_empty());

        let select = |workload: &str| Selector {
            workload: Some(workload.into()),
            ..Selector::default()
        };
        let web = identity("abc123", "app", "web-5d78c9f6b-x2x9q", "shop");
        assert!(select("web").matches(&web));
        assert!(!select("we").matches(&web));
        assert!(!select("web-5d78c9f6b-x2x9q").matches(&web));
        assert!(select("db").matches(&identity("d", "pg", "db-3", "shop")));
        assert!(!select("db").matches(&identity("d", "pg", "db-api", "shop")));
    }
}
