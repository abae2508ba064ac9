//! The deployment in deploy/: the manifests validate strictly, agree with each other, with
//! deploy/README.md and with the image `cargo xtask image` builds, and that image runs with
//! exactly the DaemonSet's privileges and mounts in a CRI runtime.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use k8s_cri::v1::{
    Capability, ContainerConfig, ImageSpec, Int64Value, LinuxContainerConfig,
    LinuxContainerSecurityContext, Mount, MountPropagation, SecurityProfile,
};
use nix::sys::signal::Signal;
use serde::Deserialize as _;
use serde_json::Value;
use tracer_tests::{
    cri::CriNode,
    in_netns, ours_left_behind,
    scrape::{get, Scrape},
    send, wait_until_ignored, TempDir,
};

/// What the kubelet would put for `$(HOST_IP)`: the test pod's "host network" is the test
/// node's own namespace, whose loopback is up.
const HOST_IP: &str = "127.0.0.1";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_manifests(file: &str) -> Vec<Value> {
    let text = fs::read_to_string(root().join("deploy").join(file)).expect("a manifest");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The one resource of `kind` in deploy/`file`.
fn resource(file: &str, kind: &str) -> Value {
    let mut found: Vec<Value> = read_manifests(file)
        .into_iter()
        .filter(|r| r["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} in {file}");
    found.remove(0)
}

fn pod_spec() -> Value {
    resource("daemonset.yaml", "DaemonSet")["spec"]["template"]["spec"].clone()
}

fn container() -> Value {
    let containers = pod_spec()["containers"].clone();
    assert_eq!(
        containers.as_array().map(Vec::len),
        Some(1),
        "one container"
    );
    containers[0].clone()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("a list: {value}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect()
}

/// Runs the validator `cargo xtask setup` installs on `files`; its status and report.
fn validate(files: &[PathBuf]) -> (bool, String) {
    let python = root().join("target/validator/bin/python");
    assert!(python.exists(), "no validator: run `cargo xtask setup`");
    let out = Command::new(python)
        .arg(root().join("tests/support/validate_manifests.py"))
        .args(files)
        .output()
        .expect("running the validator");
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), report)
}

#[test]
fn manifests_validate_strictly_and_broken_copies_do_not() {
    let files: Vec<PathBuf> = ["daemonset.yaml", "servicemonitor.yaml"]
        .iter()
        .map(|f| root().join("deploy").join(f))
        .collect();
    let (ok, report) = validate(&files);
    assert!(ok, "{report}");
    let resources =
        read_manifests("daemonset.yaml").len() + read_manifests("servicemonitor.yaml").len();
    assert_eq!(
        report.lines().filter(|l| l.starts_with("ok ")).count(),
        resources,
        "{report}"
    );

    // Each copy breaks one thing: a misspelled field or a wrong type, in a built-in kind and in
    // the custom resource. The validator must reject every one.
    let dir = TempDir::new("deploy-broken");
    let breaks = [
        ("daemonset.yaml", "hostPID: true", "hostPid: true"),
        (
            "daemonset.yaml",
            "containerPort: 9435",
            "containerPort: \"9435\"",
        ),
        ("servicemonitor.yaml", "interval: 30s", "intervall: 30s"),
        ("servicemonitor.yaml", "port: metrics", "port: 9435"),
    ];
    for (i, (file, from, to)) in breaks.iter().enumerate() {
        let text = fs::read_to_string(root().join("deploy").join(file)).unwrap();
        assert!(text.contains(from), "{file} has `{from}` to break");
        let broken = dir.0.join(format!("{i}-{file}"));
        fs::write(&broken, text.replacen(from, to, 1)).unwrap();
        let (ok, report) = validate(&[broken]);
        assert!(!ok, "`{to}` in {file} passed the validator: {report}");
        assert!(report.contains("ERROR"), "{report}");
    }
}

#[test]
fn ports_mounts_capabilities_and_docs_agree() {
    let spec = pod_spec();
    let container = container();
    let port = &container["ports"][0];
    let (name, number) = (&port["name"], &port["containerPort"]);
    // A probe or a targetPort may name the port or give its number.
    let is_the_port = |v: &Value| v == name || v == number;
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert!(is_the_port(&get["port"]), "{probe} port {}", get["port"]);
        assert_eq!(get["path"], path, "{probe}");
    }
    let args = strings(&container["args"]);
    let listen = args
        .iter()
        .skip_while(|a| *a != "--listen")
        .nth(1)
        .expect("--listen ADDR:PORT");
    assert_eq!(
        listen.rsplit(':').next(),
        Some(&*number.to_string()),
        "{listen}"
    );

    let service = resource("daemonset.yaml", "Service");
    let service_port = &service["spec"]["ports"][0];
    assert!(is_the_port(&service_port["targetPort"]), "{service_port}");
    assert_eq!(service["spec"]["clusterIP"], "None", "headless");
    assert_eq!(
        service["metadata"]["annotations"]["prometheus.io/port"],
        number.to_string()
    );
    let monitor = resource("servicemonitor.yaml", "ServiceMonitor");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service_port["name"]
    );
    // The Service selects the pods, the ServiceMonitor the Service.
    let daemonset = resource("daemonset.yaml", "DaemonSet");
    let pod_labels = &daemonset["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&service["spec"]["selector"], pod_labels);
    assert_eq!(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"]
    );

    let volumes: BTreeSet<String> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    let mounted: BTreeSet<String> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        mounted, volumes,
        "every mount has a volume and every volume is mounted"
    );

    // The capabilities and host paths are exactly those deploy/README.md explains.
    let readme = fs::read_to_string(root().join("deploy/README.md")).unwrap();
    let documented: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `CAP_")?.split('`').next())
        .map(str::to_string)
        .collect();
    let security = &container["securityContext"];
    let added: BTreeSet<String> = strings(&security["capabilities"]["add"])
        .into_iter()
        .collect();
    assert_eq!(added, documented);
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(security["privileged"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    let documented_paths: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `/")?.split('`').next())
        .map(|p| format!("/{p}"))
        .collect();
    let host_paths: BTreeSet<String> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v["hostPath"]["path"]
                .as_str()
                .expect("a hostPath")
                .to_string()
        })
        .collect();
    assert_eq!(host_paths, documented_paths);
}

/// Whether the mount holding `path` propagates to slaves (shared, or a slave itself): what
/// containerd requires of a HostToContainer mount's source.
fn propagates(path: &Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(" - ").next()?.split(' ').collect();
            let point = *fields.get(4)?;
            path.starts_with(point)
                .then(|| (point.len(), fields[6..].join(" ")))
        })
        .max_by_key(|(len, _)| *len)
        .is_some_and(|(_, tags)| tags.contains("shared:") || tags.contains("master:"))
}

/// The DaemonSet's container as the kubelet hands it to the runtime: its image, capabilities,
/// root filesystem, seccomp profile, user and host-path mounts, running `args`.
fn cri_config(args: &[&str], node: &CriNode) -> ContainerConfig {
    let spec = pod_spec();
    let container = container();
    let security = &container["securityContext"];
    let mut mounts = Vec::new();
    for mount in container["volumeMounts"].as_array().unwrap() {
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let mut host_path = PathBuf::from(volume["hostPath"]["path"].as_str().unwrap());
        // The test node's containerd keeps its tasks where a node's keeps them at that path.
        if host_path == Path::new("/run/containerd/io.containerd.runtime.v2.task") {
            host_path = node.containerd_tasks_dir();
        }
        // containerd would create a missing directory on the machine: the runtimes this
        // machine lacks stay unmounted.
        if !host_path.exists() {
            eprintln!("not mounting {} (not on this machine)", host_path.display());
            continue;
        }
        // containerd refuses HostToContainer from a private mount, which a machine without
        // systemd has (kubelet nodes run systemd, whose mounts are shared).
        let propagation =
            if mount["mountPropagation"] == "HostToContainer" && propagates(&host_path) {
                MountPropagation::PropagationHostToContainer
            } else {
                MountPropagation::PropagationPrivate
            };
        mounts.push(Mount {
            container_path: mount["mountPath"].as_str().unwrap().into(),
            host_path: host_path.display().to_string(),
            readonly: mount["readOnly"] == true,
            propagation: propagation as i32,
            ..Default::default()
        });
    }
    let seccomp = match security["seccompProfile"]["type"].as_str() {
        Some("RuntimeDefault") => k8s_cri::v1::security_profile::ProfileType::RuntimeDefault,
        Some("Unconfined") | None => k8s_cri::v1::security_profile::ProfileType::Unconfined,
        Some(other) => panic!("seccomp profile {other} not translated"),
    };
    ContainerConfig {
        image: Some(ImageSpec {
            image: container["image"].as_str().unwrap().into(),
            ..Default::default()
        }),
        args: args.iter().map(|a| a.to_string()).collect(),
        mounts,
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                capabilities: Some(Capability {
                    add_capabilities: strings(&security["capabilities"]["add"]),
                    drop_capabilities: strings(&security["capabilities"]["drop"]),
                    ..Default::default()
                }),
                privileged: security["privileged"] == true,
                readonly_rootfs: security["readOnlyRootFilesystem"] == true,
                run_as_user: security["runAsUser"]
                    .as_i64()
                    .map(|value| Int64Value { value }),
                seccomp: Some(SecurityProfile {
                    profile_type: seccomp as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Builds the image with `cargo xtask image`; returns the archive it wrote.
fn build_image() -> PathBuf {
    let out = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()))
        .args(["xtask", "image"])
        .current_dir(root())
        .output()
        .expect("running cargo xtask image");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo xtask image: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `xtask: image REF: PATH (N MiB)`
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("xtask: image "))
        .unwrap_or_else(|| panic!("no image line in: {stdout}"));
    eprintln!("{line}");
    let path = line
        .split(": ")
        .nth(1)
        .and_then(|p| p.rsplit_once(" ("))
        .unwrap()
        .0;
    PathBuf::from(path)
}

/// The image name the archive carries (the OCI index's `ref.name` annotation).
fn archived_name(archive: &Path) -> String {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg("index.json")
        .output()
        .expect("tar");
    let index: Value = serde_json::from_slice(&out.stdout).expect("an OCI index");
    index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .expect("a named image")
        .to_string()
}

#[test]
fn image_builds_and_runs_with_the_daemonsets_privileges() {
    let archive = build_image();
    let image = container()["image"].as_str().unwrap().to_string();
    assert_eq!(
        archived_name(&archive),
        image,
        "the DaemonSet runs the image built"
    );

    let mut node = CriNode::up();
    let imported = node
        .import_image(&archive)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("imported: {imported}");
    let spec = pod_spec();
    let pod = node.run_host_network_pod("tracer", "tracer", spec["hostPID"] == true);
    assert_eq!(spec["hostNetwork"], true);
    let args: Vec<String> = strings(&container()["args"])
        .iter()
        .map(|a| a.replace("$(HOST_IP)", HOST_IP))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let config = cri_config(&args, &node);
    let tracer = node.start_container_with(&pod, "tracer", config);
    let log = || fs::read_to_string(&tracer.log).unwrap_or_default();
    let port = args
        .iter()
        .find_map(|a| a.strip_prefix(&format!("{HOST_IP}:")))
        .expect("--listen HOST_IP:PORT")
        .to_string();
    let address = format!("{HOST_IP}:{port}");
    let netns = node.netns_path();
    // The probes' view: /healthz answers 200 once the programs run, /readyz once the census
    // names the node's containers (the tracer's own pod among them), /metrics is valid.
    let (scrape, ready) = in_netns(&netns, move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut ready = (0, String::new());
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&address).is_ok() && get(&address, "/healthz").0 == 200
            {
                ready = get(&address, "/readyz");
                if ready.0 == 200 {
                    return (Some(Scrape::of(&address)), ready);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        (None, ready)
    });
    let scrape = scrape.unwrap_or_else(|| {
        panic!(
            "/healthz and /readyz never both answered 200 (readyz: {ready:?}):\n{}",
            log()
        )
    });
    let own_pod = format!("pod {}/{}", pod.namespace, pod.name);
    assert!(ready.1.contains(&own_pod), "{ready:?}, expected {own_pod}");
    // The binary in the image is the version the image is tagged with.
    let version = image.rsplit(':').next().unwrap();
    assert_eq!(
        scrape.value("tracer_build_info", &[("version", version)]),
        Some(1.0),
        "{}",
        scrape.text
    );
    if let Err(complaint) = scrape.promtool_check() {
        panic!("promtool check metrics: {complaint}");
    }
    // Through its mounts (cgroups, containerd's bundles), the tracer in the container names
    // the pod of a process it sees signalled.
    // Named as a pod of Deployment `web` is: the series names the workload.
    let web = node.run_pod("shop", "web-5d78c9f6b-x2x9q", false);
    let app = node.start_container(
        &web,
        "app",
        &["/bin/sh", "-c", "trap '' USR1; exec sleep 600"],
    );
    wait_until_ignored(app.pid, Signal::SIGUSR1);
    for _ in 0..2 {
        send(app.pid, Signal::SIGUSR1);
    }
    let labels: Vec<(String, String)> = [
        ("signal", "SIGUSR1"),
        ("result", "ignored"),
        ("kernel_reason", "none"),
        ("k8s_namespace", web.namespace.as_str()),
        ("k8s_pod", web.name.as_str()),
        ("k8s_workload", "web"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let address = format!("{HOST_IP}:{port}");
    let counted = in_netns(&netns, move || {
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let value = Scrape::of(&address).value("tracer_signals_total", &labels);
            if value == Some(2.0) {
                return value;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Scrape::of(&address).value("tracer_signals_total", &labels)
    });
    assert_eq!(counted, Some(2.0), "the pod's signals, named:\n{}", log());
    node.remove_pod(&web);
    // Deleting the pod: SIGTERM, on which the tracer detaches and ends with its summary,
    // well within the DaemonSet's grace period.
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    let stopping = Instant::now();
    node.stop_container(&tracer, Duration::from_secs(grace));
    assert_eq!(node.wait_exit(&tracer, Duration::from_secs(5)), Some(0));
    assert!(stopping.elapsed() < Duration::from_secs(grace));
    node.remove_pod(&pod);
    let log = log();
    assert!(
        log.contains(r#""stopped_by":"terminate""#),
        "no summary after SIGTERM:\n{log}"
    );
    let left = ours_left_behind();
    assert!(left.is_empty(), "left attached: {left:?}");
    node.down();
    let leftovers = node.footprint().leftovers();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

/// `kubectl apply -k deploy/` renders, or `kustomize build`, where either is installed.
fn kustomize_build(dir: &Path) -> Option<String> {
    let tools: [(&str, &[&str]); 2] = [("kubectl", &["kustomize"]), ("kustomize", &["build"])];
    tools.iter().find_map(|(tool, args)| {
        let out = Command::new(tool).args(*args).arg(dir).output().ok()?;
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(String::from_utf8(out.stdout).expect("UTF-8"))
    })
}

/// A resource's identity, to compare sets of resources whatever their order.
fn kind_and_name(resource: &Value) -> (String, String) {
    (
        resource["kind"].as_str().unwrap_or_default().into(),
        resource["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .into(),
    )
}

#[test]
fn kustomization_applies_todays_manifests_with_the_image_as_a_field() {
    let kustomization = resource("kustomization.yaml", "Kustomization");
    assert_eq!(
        kustomization["apiVersion"],
        "kustomize.config.k8s.io/v1beta1"
    );
    // Every manifest is named, and exists and parses, except the ServiceMonitor: its CRD is
    // the Prometheus operator's, which a cluster may not have (apply -k would fail there).
    let named = strings(&kustomization["resources"]);
    let mut manifests: Vec<String> = fs::read_dir(root().join("deploy"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .filter(|f| f != "servicemonitor.yaml")
        .collect();
    manifests.sort();
    assert_eq!(named, manifests);
    let mut expected: Vec<Value> = named.iter().flat_map(|f| read_manifests(f)).collect();
    assert!(!expected.is_empty());
    // The image is a kustomize field: the one the DaemonSet names, at its tag.
    let image = container()["image"].as_str().unwrap().to_string();
    let (name, tag) = image.rsplit_once(':').unwrap();
    let images = kustomization["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["name"], name);
    assert_eq!(images[0]["newName"], name);
    assert_eq!(images[0]["newTag"], tag);
    // README's cluster section starts with the command.
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let cluster = readme
        .split("### Across a cluster")
        .nth(1)
        .expect("the cluster section");
    let first_command = cluster.lines().find(|l| l.starts_with("$ ")).unwrap();
    assert!(
        first_command.starts_with("$ kubectl apply -k deploy/"),
        "{first_command}"
    );

    // Rendered by kustomize itself where it is installed (kubectl has it built in; neither is
    // a prerequisite): the same resources, with the image a different newTag gives.
    let dir = TempDir::new("kustomize");
    for file in named
        .iter()
        .map(String::as_str)
        .chain(["kustomization.yaml"])
    {
        let text = fs::read_to_string(root().join("deploy").join(file)).unwrap();
        fs::write(
            dir.0.join(file),
            text.replace(&format!("newTag: \"{tag}\""), "newTag: \"9.9\""),
        )
        .unwrap();
    }
    let Some(rendered) = kustomize_build(&dir.0) else {
        eprintln!("neither kubectl nor kustomize is installed: the kustomization is not rendered");
        return;
    };
    let mut rendered: Vec<Value> = serde_yaml::Deserializer::from_str(&rendered)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .collect();
    for r in &mut expected {
        if r["kind"] == "DaemonSet" {
            r["spec"]["template"]["spec"]["containers"][0]["image"] = format!("{name}:9.9").into();
        }
    }
    rendered.sort_by_key(kind_and_name);
    expected.sort_by_key(kind_and_name);
    assert_eq!(rendered, expected);
    let file = dir.0.join("rendered.yaml");
    fs::write(
        &file,
        rendered
            .iter()
            .map(|r| serde_yaml::to_string(r).unwrap())
            .collect::<Vec<_>>()
            .join("---\n"),
    )
    .unwrap();
    let (ok, report) = validate(&[file]);
    assert!(ok, "{report}");
}
