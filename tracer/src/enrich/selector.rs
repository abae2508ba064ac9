//! `--container`, `--pod`, `--namespace`: which workloads a run is about.

use super::identity::{Identity, Pod};

/// Workload filters from the command line; all given ones must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// A container id prefix or a container name.
    pub container: Option<String>,
    /// A pod name.
    pub pod: Option<String>,
    /// A pod namespace.
    pub namespace: Option<String>,
}

impl Selector {
    /// Whether any filter is set.
    pub fn is_active(&self) -> bool {
        self.container.is_some() || self.pod.is_some() || self.namespace.is_some()
    }

    pub fn matches(&self, identity: &Identity) -> bool {
        let container = identity.container.as_ref();
        let container_ok = self.container.as_deref().is_none_or(|want| {
            container.is_some_and(|c| {
                (!want.is_empty() && c.id.starts_with(want)) || c.name.as_deref() == Some(want)
            })
        });
        container_ok && self.matches_pod(identity.pod.as_ref())
    }

    /// The `--pod` and `--namespace` half, for what only a pod identifies (a network
    /// namespace).
    pub fn matches_pod(&self, pod: Option<&Pod>) -> bool {
        let pod_ok = self
            .pod
            .as_deref()
            .is_none_or(|want| pod.is_some_and(|p| p.name.as_deref() == Some(want)));
        let namespace_ok = self
            .namespace
            .as_deref()
            .is_none_or(|want| pod.is_some_and(|p| p.namespace.as_deref() == Some(want)));
        pod_ok && namespace_ok
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
                container: container.map(Into::into),
                pod: pod.map(Into::into),
                namespace: namespace.map(Into::into),
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
}
