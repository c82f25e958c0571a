//! The deployment files in deploy/ (docs/deploy.md) parse, and every setting they hand to
//! `konnect serve` (flags, KONNECT_* variables, config keys) is one the binary knows, so the
//! manifests cannot drift from the code; and the container image builds from
//! deploy/Dockerfile (with buildah, as root) and runs a node that becomes ready.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_yaml_ng::Value;
use support::KONNECT;

fn deploy(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The flags and environment variables of `konnect serve`, from its help.
fn serve_settings() -> (BTreeSet<String>, BTreeSet<String>) {
    let out = std::process::Command::new(KONNECT)
        .args(["serve", "--help"])
        .output()
        .expect("konnect serve --help");
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    let words = |prefix: &str| -> BTreeSet<String> {
        help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .filter(|w| w.starts_with(prefix) && w.len() > prefix.len())
            .map(str::to_string)
            .collect()
    };
    let flags = words("--");
    let vars = words("KONNECT_");
    assert!(
        flags.contains("--peers") && vars.contains("KONNECT_PEERS"),
        "{help}"
    );
    (flags, vars)
}

/// The `--flags` in a shell command line.
fn flags_in(text: &str) -> Vec<String> {
    text.split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.split('=').next().unwrap().trim_matches('"').to_string())
        .collect()
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| {
            let mut v = Value::deserialize(d).expect("valid YAML");
            v.apply_merge().expect("merge keys");
            v
        })
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

#[test]
fn compose_runs_three_nodes_in_three_zones_with_known_settings() {
    let (_, vars) = serve_settings();
    let doc = &yaml_docs(&deploy("docker-compose.yml"))[0];
    let mut ids = BTreeSet::new();
    let mut zones = BTreeSet::new();
    for n in 1..=3 {
        let svc = &doc["services"][format!("konnect-{n}").as_str()];
        let env = svc["environment"].as_mapping().expect("environment");
        for (k, _) in env {
            let k = k.as_str().unwrap();
            assert!(
                vars.contains(k),
                "konnect-{n}: {k} is not a konnect serve variable"
            );
        }
        ids.insert(
            env[&Value::from("KONNECT_NODE_ID")]
                .as_str()
                .unwrap()
                .to_string(),
        );
        zones.insert(
            env[&Value::from("KONNECT_ZONE")]
                .as_str()
                .unwrap()
                .to_string(),
        );
        let peers = env[&Value::from("KONNECT_PEERS")].as_str().unwrap();
        assert_eq!(peers.split(',').count(), 3, "{peers}");
        assert!(svc["volumes"][0]
            .as_str()
            .unwrap()
            .ends_with(":/var/lib/konnect"));
    }
    assert_eq!(ids.len(), 3);
    assert_eq!(zones.len(), 3, "one node per zone");
    let init = doc["services"]["init"]["entrypoint"].as_sequence().unwrap();
    assert_eq!(init[0].as_str(), Some("konnectctl"));
}

#[test]
fn the_dockerfile_ships_both_binaries_as_a_non_root_user_with_known_settings() {
    let (_, vars) = serve_settings();
    let text = deploy("Dockerfile");
    assert!(text.contains("COPY --from=binaries /out/konnect /out/konnectctl /usr/local/bin/"));
    assert!(text.contains("USER 10001"), "non-root");
    assert!(text.contains(r#"ENTRYPOINT ["konnect"]"#));
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("KONNECT_") {
            assert!(
                vars.contains(word),
                "Dockerfile: {word} is not a konnect serve variable"
            );
        }
    }
}

#[test]
fn kubernetes_spreads_three_nodes_over_zones_with_probes_volumes_and_a_disruption_budget() {
    let (flags, vars) = serve_settings();
    let docs = yaml_docs(&deploy("kubernetes/konnect.yaml"));
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["Service", "Service", "StatefulSet", "PodDisruptionBudget"]
    );
    assert_eq!(
        docs[0]["spec"]["clusterIP"].as_str(),
        Some("None"),
        "headless"
    );
    assert_eq!(
        docs[0]["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );
    let sts = &docs[2]["spec"];
    assert_eq!(sts["replicas"].as_u64(), Some(3));
    let pod = &sts["template"]["spec"];
    assert_eq!(
        pod["topologySpreadConstraints"][0]["topologyKey"].as_str(),
        Some("topology.kubernetes.io/zone")
    );
    let c = &pod["containers"][0];
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    let script = c["args"][0].as_str().unwrap();
    assert!(script.starts_with("exec konnect serve"), "{script}");
    for f in flags_in(script) {
        assert!(
            flags.contains(&f),
            "StatefulSet: {f} is not a konnect serve flag"
        );
    }
    for e in c["env"].as_sequence().unwrap() {
        let name = e["name"].as_str().unwrap();
        assert!(
            !name.starts_with("KONNECT_") || vars.contains(name),
            "{name}"
        );
    }
    assert!(script
        .contains("1=konnect-0.konnect:7101,2=konnect-1.konnect:7101,3=konnect-2.konnect:7101"));
    assert_eq!(
        sts["volumeClaimTemplates"][0]["metadata"]["name"].as_str(),
        Some("data")
    );
    assert_eq!(docs[3]["spec"]["minAvailable"].as_u64(), Some(2));
    let job = &yaml_docs(&deploy("kubernetes/init-job.yaml"))[0];
    assert_eq!(job["kind"].as_str(), Some("Job"));
    let cmd: Vec<&str> = job["spec"]["template"]["spec"]["containers"][0]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(cmd[0], "konnectctl");
    assert!(cmd.ends_with(&["cluster", "init"]));
}

#[test]
fn the_systemd_unit_is_hardened_and_its_config_keys_are_konnect_settings() {
    let (flags, _) = serve_settings();
    let unit = deploy("systemd/konnect.service");
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            assert!(line.ends_with(']'), "{line}");
            section = line.to_string();
            continue;
        }
        let (k, _) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not KEY=VALUE: {line}"));
        keys.insert(format!("{section}{k}"));
    }
    for needed in [
        "[Service]ExecStart",
        "[Service]User",
        "[Service]NoNewPrivileges",
        "[Service]ProtectSystem",
        "[Service]CapabilityBoundingSet",
        "[Service]SystemCallFilter",
        "[Service]MemoryDenyWriteExecute",
        "[Service]TimeoutStopSec",
        "[Install]WantedBy",
    ] {
        assert!(keys.contains(needed), "the unit lacks {needed}");
    }
    let config: toml::Table = deploy("systemd/konnect.toml").parse().expect("valid TOML");
    for key in config.keys() {
        let flag = format!("--{}", key.replace('_', "-"));
        assert!(
            flags.contains(&flag),
            "konnect.toml: {key} is not a konnect serve setting"
        );
    }
}

// The container image, built from deploy/Dockerfile and run for real. There is no Docker
// engine and no registry in CI, so the test builds with buildah (chroot isolation, no daemon)
// on a Debian bookworm base it makes itself with debootstrap, from the binaries this test run
// built (BINARIES=prebuilt); the Dockerfile's runtime stage runs unchanged, `apt-get` included.

/// The Debian mirror debootstrap fetches the base image from, and the one the image's
/// `apt-get` then uses: `KONNECT_TEST_DEBIAN_MIRROR`, by default Debian's own mirror network.
fn debian_mirror() -> String {
    std::env::var("KONNECT_TEST_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".to_string())
}

/// Runs `cmd` and returns its standard output; panics with both outputs if it fails.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Panics naming what to install when the image test cannot run here (CI installs it all).
fn require_image_tools() {
    let uid = run_ok(Command::new("id").arg("-u"));
    assert_eq!(
        uid.trim(),
        "0",
        "building the container image needs root (debootstrap and buildah's chroot isolation)"
    );
    for (tool, package) in [
        ("buildah", "buildah"),
        ("debootstrap", "debootstrap"),
        ("strip", "binutils"),
    ] {
        if let Err(e) = Command::new(tool).arg("--version").output() {
            panic!(
                "building the container image needs {tool} ({e}): \
                 apt-get install -y --no-install-recommends {package} (see .ci/run)"
            );
        }
    }
}

/// buildah with an image store of its own in a temporary directory (`--root`, `--runroot`,
/// the vfs driver, which needs no overlay support from the kernel): parallel runs share no
/// images or locks, and dropping it deletes every image and container it made.
struct Buildah {
    dir: Option<tempfile::TempDir>,
}

impl Buildah {
    fn new() -> Buildah {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("tmp")).expect("buildah's temp dir");
        Buildah { dir: Some(dir) }
    }

    /// The temporary directory; the store is in `storage/` and `run/` under it, buildah's
    /// temporary files in `tmp/`.
    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("present until drop").path()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(self.dir().join("storage"))
            .arg("--runroot")
            .arg(self.dir().join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            // Its working files (of `buildah run`, left behind when the test kills one) go
            // here instead of /var/tmp.
            .env("TMPDIR", self.dir().join("tmp"));
        cmd
    }

    /// Runs `buildah ARGS` to success and returns its output, trimmed.
    fn run(&self, args: &[&str]) -> String {
        run_ok(&mut self.command(args)).trim().to_string()
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        let _ = self.command(&["rm", "--all"]).output();
        let _ = self.command(&["rmi", "--all", "--force"]).output();
        let dir = self.dir.take().expect("present until drop");
        // Deleting the directory while something is mounted under it would delete through the
        // mount: leave it then (buildah mounts nothing here with vfs and chroot isolation).
        let prefix = dir.path().to_string_lossy().into_owned();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|mount_point| mount_point.starts_with(&prefix))
        {
            eprintln!("left {prefix} in place: something is mounted under it");
            let _ = dir.keep();
        }
    }
}

/// A `buildah run` in a process group of its own (buildah, its chroot helpers and the
/// command): dropping it kills the whole group, so a failing test leaves no node behind.
struct RunningContainer {
    child: std::process::Child,
}

impl Drop for RunningContainer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// `GET path` on `addr` over plain HTTP/1.1: the status code and body, or `None` when nothing
/// answers.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// A Debian bookworm image (`--variant=minbase`, what `debian:bookworm-slim` is made of)
/// stored as `name`, made by debootstrap from the mirror into an empty container.
fn make_base_image(buildah: &Buildah, name: &str) {
    let rootfs = buildah.dir().join("rootfs");
    run_ok(
        Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&rootfs)
            .arg(debian_mirror()),
    );
    let container = buildah.run(&["from", "scratch"]);
    let mount_point = buildah.run(&["mount", &container]);
    // cp -a keeps owners, modes and links as debootstrap made them.
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(rootfs.join("."))
            .arg(&mount_point),
    );
    buildah.run(&["umount", &container]);
    buildah.run(&["commit", "--quiet", &container, name]);
    buildah.run(&["rm", &container]);
    std::fs::remove_dir_all(&rootfs).expect("remove the base rootfs");
}

#[test]
fn the_container_image_builds_from_the_dockerfile_and_runs_a_node() {
    require_image_tools();
    let buildah = Buildah::new();
    let base = "localhost/konnect-test-base:bookworm";
    make_base_image(&buildah, base);

    // The build context of BINARIES=prebuilt: the two binaries, stripped as a release build is.
    let context = buildah.dir().join("context");
    std::fs::create_dir(&context).expect("context dir");
    for binary in [PathBuf::from(KONNECT), support::konnectctl_bin()] {
        let name = binary.file_name().expect("binary name");
        run_ok(
            Command::new("strip")
                .arg("-o")
                .arg(context.join(name))
                .arg(&binary),
        );
    }
    let dockerfile = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/Dockerfile");
    let image = "localhost/konnect-test:image";
    buildah.run(&[
        "bud",
        "--isolation",
        "chroot",
        "--skip-unused-stages",
        "--build-arg",
        &format!("RUNTIME_IMAGE={base}"),
        "--build-arg",
        "BINARIES=prebuilt",
        "--file",
        dockerfile.to_str().expect("UTF-8 path"),
        "--tag",
        image,
        context.to_str().expect("UTF-8 path"),
    ]);

    // What `docker run` would start: the image's configuration.
    let inspect: serde_json::Value =
        serde_json::from_str(&buildah.run(&["inspect", "--type", "image", image]))
            .expect("buildah inspect gives JSON");
    let config = &inspect["OCIv1"]["config"];
    assert_eq!(config["User"], "10001:10001", "{config}");
    assert_eq!(config["Entrypoint"], serde_json::json!(["konnect"]));
    assert_eq!(config["Cmd"], serde_json::json!(["serve"]));
    assert_eq!(config["WorkingDir"], "/var/lib/konnect");
    assert!(
        config["Volumes"].get("/var/lib/konnect").is_some(),
        "{config}"
    );
    let ports: BTreeSet<&str> = config["ExposedPorts"]
        .as_object()
        .expect("exposed ports")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from(["7101/tcp", "7201/tcp", "7301/tcp", "8080/tcp"])
    );
    let env: Vec<&str> = config["Env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for setting in [
        "KONNECT_DATA_DIR=/var/lib/konnect",
        "KONNECT_PEER_ADDR=0.0.0.0:7101",
        "KONNECT_STATUS_ADDR=0.0.0.0:7301",
        "KONNECT_LOG_FORMAT=json",
    ] {
        assert!(env.contains(&setting), "{setting} not in {env:?}");
    }

    // Inside: the unprivileged user owns the data directory, both binaries and the CA
    // certificates are there.
    let container = buildah.run(&["from", "--quiet", image]);
    let in_container = |script: &str| {
        buildah.run(&[
            "run",
            "--isolation",
            "chroot",
            &container,
            "--",
            "sh",
            "-c",
            script,
        ])
    };
    assert_eq!(
        in_container("id; pwd; stat -c %U /var/lib/konnect"),
        "uid=10001(konnect) gid=10001(konnect) groups=10001(konnect)\n/var/lib/konnect\nkonnect"
    );
    assert!(in_container("konnectctl --version").starts_with("konnectctl "));
    in_container("test -s /etc/ssl/certs/ca-certificates.crt");
    in_container("umask 077 && konnect secrets new-key > konnect.key");

    // A node from the image (the image's entrypoint and settings, its listeners moved to free
    // loopback ports, since chroot isolation shares the host's network), initialised by the
    // image's konnectctl, becomes ready.
    let ports = support::free_ports(4);
    let addr = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let log_path = buildah.dir().join("node.log");
    let log = std::fs::File::create(&log_path).expect("node log");
    let mut run = buildah.command(&["run", "--isolation", "chroot"]);
    for (variable, i) in [
        ("KONNECT_PEER_ADDR", 0),
        ("KONNECT_ADMIN_ADDR", 1),
        ("KONNECT_STATUS_ADDR", 2),
        ("KONNECT_PROXY_ADDR", 3),
    ] {
        run.arg("--env").arg(format!("{variable}={}", addr(i)));
    }
    run.args([&container, "--", "konnect", "serve", "--node-id", "1"])
        .arg("--peers")
        .arg(format!("1={}", addr(0)))
        .args(["--secret-key-file", "konnect.key"])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut run, 0);
    let mut node = RunningContainer {
        child: run.spawn().expect("spawn buildah run"),
    };
    let node_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !node_log().contains("konnect node started") {
        if let Ok(Some(status)) = node.child.try_wait() {
            panic!(
                "the node in the image exited with {status}:\n{}",
                node_log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the node in the image did not start:\n{}",
            node_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let first_line = node_log().lines().next().unwrap_or_default().to_string();
    serde_json::from_str::<serde_json::Value>(&first_line)
        .unwrap_or_else(|e| panic!("the image logs JSON ({e}): {first_line}"));

    let endpoint = format!("http://{}", addr(1));
    let init = buildah.run(&[
        "run",
        "--isolation",
        "chroot",
        &container,
        "--",
        "konnectctl",
        "--endpoint",
        &endpoint,
        "cluster",
        "init",
    ]);
    assert!(init.starts_with("kadm_"), "cluster init printed {init:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match http_get(&addr(2), "/readyz") {
            Some((200, body)) => {
                assert!(body.contains(r#""ready":true"#), "{body}");
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "the node in the image did not become ready: {other:?}\n{}",
                node_log()
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Killing the group must take the node with it (a SIGKILLed buildah alone would orphan it).
    drop(node);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(&addr(2), "/healthz").is_some() {
        assert!(
            Instant::now() < deadline,
            "the node in the image kept running after its container was stopped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
