//! `konnect certs init`: makes a cluster CA and one certificate per node, for TLS on the admin
//! port (`--admin-tls-*`) and mutual TLS on the peer port (`--peer-tls-*`).
//!
//! Node certificates are signed by the new CA and valid both as TLS server and as TLS client
//! (serverAuth and clientAuth), for the names and IPs of `--hosts` plus `localhost` and
//! `127.0.0.1`; their CN names the node (`konnect node 3`). Keys are ECDSA P-256, written
//! with mode 0600. Existing files are never replaced without `--force`.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};

/// `konnect certs ...`
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Make a cluster CA and a certificate per node (ca.pem, ca-key.pem, node-N.pem,
    /// node-N-key.pem), for --admin-tls-* and --peer-tls-*. Refuses to overwrite files
    /// unless --force.
    Init(InitArgs),
}

/// What `konnect certs init` makes, and where.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Directory to write the files into; created (mode 0700) if missing.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Number of node certificates: node-1.pem to node-N.pem, for --node-id 1 to N.
    #[arg(long, value_name = "N")]
    pub nodes: u32,

    /// Host names and IP addresses the node certificates are valid for, comma separated:
    /// every address that peers dial (--peer-addr) and konnectctl uses. IPs become IP SANs.
    /// `localhost` and `127.0.0.1` are always included.
    #[arg(long, value_delimiter = ',', value_name = "HOST[,HOST...]")]
    pub hosts: Vec<String>,

    /// Days the node certificates stay valid (the CA: ten years).
    #[arg(long, value_name = "DAYS", default_value_t = 730)]
    pub days: u32,

    /// Replace files that already exist.
    #[arg(long)]
    pub force: bool,
}

/// Why `certs init` wrote nothing (or stopped part way, for I/O errors).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CertsError(String);

/// What `certs init` wrote, printed for the user with the flags to use next.
#[derive(Debug)]
pub struct InitReport {
    pub out: PathBuf,
    pub nodes: u32,
    pub ca_name: String,
    pub sans: Vec<String>,
    pub files: Vec<PathBuf>,
}

const CA_DAYS: u32 = 3650;

pub fn run(command: &CertsCommand) -> Result<InitReport, CertsError> {
    match command {
        CertsCommand::Init(args) => init(args),
    }
}

/// Makes the CA and the node certificates and writes them into `args.out`.
pub fn init(args: &InitArgs) -> Result<InitReport, CertsError> {
    if args.nodes == 0 {
        return Err(CertsError("--nodes: must be at least 1".into()));
    }
    if args.days == 0 {
        return Err(CertsError("--days: must be at least 1".into()));
    }
    let sans = subject_alt_names(&args.hosts)?;

    let mut names = vec!["ca.pem".to_string(), "ca-key.pem".to_string()];
    for n in 1..=args.nodes {
        names.push(format!("node-{n}.pem"));
        names.push(format!("node-{n}-key.pem"));
    }
    let paths: Vec<PathBuf> = names.iter().map(|n| args.out.join(n)).collect();
    if !args.force {
        let existing: Vec<String> = paths
            .iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(CertsError(format!(
                "refusing to overwrite {} (pass --force to replace them, which invalidates the certificates made before)",
                existing.join(", ")
            )));
        }
    }

    let rcgen_error = |what: &str, e: rcgen::Error| CertsError(format!("cannot make {what}: {e}"));
    let today = days_since_epoch();
    let mut short_id = [0u8; 4];
    rand::rng().fill_bytes(&mut short_id);
    let ca_name = format!("konnect cluster CA {}", hex::encode(short_id));

    let mut ca = CertificateParams::default();
    ca.distinguished_name = distinguished_name(&ca_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.serial_number = Some(random_serial());
    set_validity(&mut ca, today - 1, today + i64::from(CA_DAYS));
    let ca_key = KeyPair::generate().map_err(|e| rcgen_error("the CA key", e))?;
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(|e| rcgen_error("the CA certificate", e))?;
    let mut contents = vec![ca_cert.pem(), ca_key.serialize_pem()];
    let issuer = Issuer::new(ca, ca_key);

    for n in 1..=args.nodes {
        let what = format!("the certificate of node {n}");
        let mut node = CertificateParams::new(sans.clone()).map_err(|e| rcgen_error(&what, e))?;
        node.distinguished_name = distinguished_name(&format!("konnect node {n}"));
        node.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        node.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        node.use_authority_key_identifier_extension = true;
        node.serial_number = Some(random_serial());
        set_validity(&mut node, today - 1, today + i64::from(args.days));
        let key = KeyPair::generate().map_err(|e| rcgen_error(&what, e))?;
        let cert = node
            .signed_by(&key, &issuer)
            .map_err(|e| rcgen_error(&what, e))?;
        contents.push(cert.pem());
        contents.push(key.serialize_pem());
    }

    if !args.out.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&args.out)
            .map_err(|e| {
                CertsError(format!(
                    "--out {}: cannot create the directory: {e}",
                    args.out.display()
                ))
            })?;
    }
    for (path, text) in paths.iter().zip(&contents) {
        let secret = path.to_string_lossy().ends_with("-key.pem");
        write_file(path, text, secret, args.force)?;
    }
    Ok(InitReport {
        out: args.out.clone(),
        nodes: args.nodes,
        ca_name,
        sans,
        files: paths,
    })
}

/// `--hosts` plus `localhost` and `127.0.0.1`, checked, without duplicates, in order.
fn subject_alt_names(hosts: &[String]) -> Result<Vec<String>, CertsError> {
    let mut sans: Vec<String> = Vec::new();
    let defaults = ["localhost".to_string(), "127.0.0.1".to_string()];
    for host in hosts.iter().map(|h| h.trim()).filter(|h| !h.is_empty()) {
        let canonical = match host.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => {
                let valid = rustls_pki_types::DnsName::try_from(host).is_ok()
                    && !host.contains('*')
                    && !host.contains(':');
                if !valid {
                    return Err(CertsError(format!(
                        "--hosts {host:?}: not an IP address or DNS name"
                    )));
                }
                host.trim_end_matches('.').to_ascii_lowercase()
            }
        };
        if !sans.contains(&canonical) {
            sans.push(canonical);
        }
    }
    for d in defaults {
        if !sans.contains(&d) {
            sans.push(d);
        }
    }
    Ok(sans)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "konnect");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A random positive 127-bit serial number.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Writes `text` to `path`: keys 0600, certificates 0644. Without `replace`, fails if the file
/// appeared since the check (never overwrites).
fn write_file(path: &Path, text: &str, secret: bool, replace: bool) -> Result<(), CertsError> {
    let mode = if secret { 0o600 } else { 0o644 };
    let mut options = OpenOptions::new();
    options.write(true).mode(mode);
    if replace {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let fail = |e: std::io::Error| CertsError(format!("cannot write {}: {e}", path.display()));
    let mut file = options.open(path).map_err(fail)?;
    // A replaced file keeps its old mode unless set again.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)
}

fn days_since_epoch() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0)
}

/// Valid from midnight UTC of day `from` to midnight UTC of day `to` (days since 1970-01-01).
fn set_validity(params: &mut CertificateParams, from: i64, to: i64) {
    let (y, m, d) = civil_from_days(from);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(to);
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// The (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

impl fmt::Display for InitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let out = self.out.display();
        writeln!(f, "wrote {} (\"{}\"):", out, self.ca_name)?;
        for path in &self.files {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let what = if name == "ca.pem" {
                "cluster CA certificate: give it to every node and to konnectctl".to_string()
            } else if name == "ca-key.pem" {
                "cluster CA key (0600): signs node certificates; keep it off the nodes".to_string()
            } else if let Some(n) = name.strip_suffix("-key.pem") {
                format!("{} key (0600)", n.replace('-', " "))
            } else {
                let n = name.trim_end_matches(".pem").replace('-', " ");
                format!("{n} certificate")
            };
            writeln!(f, "  {:<40} {what}", path.display())?;
        }
        writeln!(
            f,
            "node certificates are valid for: {}",
            self.sans.join(", ")
        )?;
        writeln!(f, "\nstart node N (1 to {}) with:", self.nodes)?;
        writeln!(
            f,
            "  konnect serve --node-id N ... \\\n    --peer-tls-cert {out}/node-N.pem --peer-tls-key {out}/node-N-key.pem --peer-tls-ca {out}/ca.pem \\\n    --admin-tls-cert {out}/node-N.pem --admin-tls-key {out}/node-N-key.pem"
        )?;
        writeln!(f, "and talk to it with:")?;
        write!(
            f,
            "  konnectctl --ca {out}/ca.pem --endpoint https://HOST:ADMIN_PORT ..."
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    fn args(out: &Path) -> InitArgs {
        InitArgs {
            out: out.to_path_buf(),
            nodes: 2,
            hosts: vec![
                "10.1.2.3".into(),
                "Node1.Example".into(),
                "127.0.0.1".into(),
            ],
            days: 30,
            force: false,
        }
    }

    fn cert(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap()
    }

    #[test]
    fn node_certificates_verify_as_server_and_client_against_the_new_ca() {
        let dir = tempfile::tempdir().unwrap();
        let report = init(&args(dir.path())).unwrap();
        assert_eq!(
            report.sans,
            vec!["10.1.2.3", "node1.example", "127.0.0.1", "localhost"]
        );
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert(&dir.path().join("ca.pem"))).unwrap();
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let client = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .unwrap();
        let node = cert(&dir.path().join("node-2.pem"));
        let now = UnixTime::now();
        for name in ["10.1.2.3", "127.0.0.1", "localhost", "node1.example"] {
            let name = ServerName::try_from(name).unwrap();
            server
                .verify_server_cert(&node, &[], &name, &[], now)
                .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
        let other = ServerName::try_from("10.9.9.9").unwrap();
        assert!(server
            .verify_server_cert(&node, &[], &other, &[], now)
            .is_err());
        client.verify_client_cert(&node, &[], now).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&node).unwrap();
        let cn: Vec<_> = parsed
            .subject()
            .iter_common_name()
            .filter_map(|c| c.as_str().ok())
            .collect();
        assert_eq!(cn, vec!["konnect node 2"]);
        assert!(report.to_string().contains("--peer-tls-ca"));
    }

    #[test]
    fn refuses_to_overwrite_without_force_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        init(&args(dir.path())).unwrap();
        let before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let e = init(&args(dir.path())).unwrap_err().to_string();
        assert!(e.starts_with("refusing to overwrite"), "{e}");
        assert!(e.contains("ca.pem") && e.contains("--force"), "{e}");
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);

        // A key file left readable by others gets 0600 again when replaced.
        let key = dir.path().join("node-1-key.pem");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        init(&InitArgs {
            force: true,
            ..args(dir.path())
        })
        .unwrap();
        assert_ne!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);
        for name in ["ca-key.pem", "node-1-key.pem", "node-2-key.pem"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    #[test]
    fn bad_hosts_and_counts_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let e = init(&InitArgs {
            hosts: vec!["not a host".into()],
            ..args(&out)
        })
        .unwrap_err()
        .to_string();
        assert_eq!(e, "--hosts \"not a host\": not an IP address or DNS name");
        let e = init(&InitArgs {
            nodes: 0,
            ..args(&out)
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("--nodes"), "{e}");
        assert!(!out.exists());
    }

    #[test]
    fn civil_dates_from_day_counts() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
