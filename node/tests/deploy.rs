//! The deployment files in deploy/ (docs/deploy.md) parse, and every setting they hand to
//! `konnect serve` (flags, KONNECT_* variables, config keys) is one the binary knows, so the
//! manifests cannot drift from the code.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;

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
    assert!(text.contains("target/release/konnect /src/target/release/konnectctl /usr/local/bin/"));
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
