//! How `konnectctl` shows results: plain aligned tables, and serde views of the proto types
//! (prost types do not derive serde) for `-o json` and `-o yaml`.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context as _;
use clap::ValueEnum;
use comfy_table::{presets, ContentArrangement, Table};
use konnect_client::admin::{ApplyResponse, InitResponse, Member, StatusResponse, WatchEvent};
use konnect_client::manifest::struct_to_json;
use konnect_client::state::{ChangeAction, EventType, NodeInfo, Resource, ResourceChange};
use serde::Serialize;
use serde_json::Value as Json;

/// The `-o` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable lines and tables.
    Table,
    /// JSON (one object per line for `watch`).
    Json,
    /// YAML (resources in a shape `konnectctl apply` accepts back).
    Yaml,
    /// CSV with a header line (`spend` only).
    Csv,
}

// === writing ===

/// Writes text to stdout, adding a final newline if missing. Errors (a closed pipe) are
/// returned rather than panicking as `println!` would.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| {
            if text.ends_with('\n') {
                Ok(())
            } else {
                stdout.write_all(b"\n")
            }
        })
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

/// Pretty JSON of `value`.
pub fn to_json(value: &impl Serialize) -> anyhow::Result<String> {
    serde_json::to_string_pretty(value).context("cannot encode the result as JSON")
}

/// JSON of `value` on one line (for streams of objects).
pub fn to_json_line(value: &impl Serialize) -> anyhow::Result<String> {
    serde_json::to_string(value).context("cannot encode the result as JSON")
}

pub fn to_yaml(value: &impl Serialize) -> anyhow::Result<String> {
    serde_yaml_ng::to_string(value).context("cannot encode the result as YAML")
}

/// Prints `value` as JSON or YAML; `table` is never passed here.
pub fn print_structured(format: OutputFormat, value: &impl Serialize) -> anyhow::Result<()> {
    match format {
        OutputFormat::Yaml => print_stdout(&to_yaml(value)?),
        OutputFormat::Json | OutputFormat::Table | OutputFormat::Csv => {
            print_stdout(&to_json(value)?)
        }
    }
}

/// Aligned columns without borders, like `kubectl get`.
pub fn render_table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    let lines: Vec<String> = table
        .lines()
        .map(|line| line.trim_end().to_string())
        .collect();
    lines.join("\n")
}

/// `-` for a value the server did not report.
pub fn optional(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_string(), |number| number.to_string())
}

// === resources ===

/// A resource as `get -o json` shows it.
#[derive(Serialize)]
pub struct ResourceView {
    pub kind: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub spec: Json,
    pub revision: u64,
    pub create_revision: u64,
    pub updated_unix_ms: u64,
}

impl From<&Resource> for ResourceView {
    fn from(resource: &Resource) -> Self {
        ResourceView {
            kind: resource.kind.clone(),
            name: resource.name.clone(),
            labels: resource
                .labels
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            spec: resource
                .spec
                .as_ref()
                .map_or_else(|| Json::Object(Default::default()), struct_to_json),
            revision: resource.revision,
            create_revision: resource.create_revision,
            updated_unix_ms: resource.updated_unix_ms,
        }
    }
}

/// The fields of a resource that `konnectctl apply` accepts.
#[derive(Serialize)]
struct ManifestView<'a> {
    kind: &'a str,
    name: &'a str,
    labels: &'a BTreeMap<String, String>,
    spec: &'a Json,
}

/// Resources as a multi-document YAML manifest that `konnectctl apply -f` accepts back. The
/// read-only fields are kept as a comment above each document.
pub fn resources_to_manifest_yaml(resources: &[Resource]) -> anyhow::Result<String> {
    let mut documents = Vec::with_capacity(resources.len());
    for resource in resources {
        let view = ResourceView::from(resource);
        let body = to_yaml(&ManifestView {
            kind: &view.kind,
            name: &view.name,
            labels: &view.labels,
            spec: &view.spec,
        })?;
        documents.push(format!(
            "# revision: {}, create_revision: {}, updated_unix_ms: {}\n{body}",
            view.revision, view.create_revision, view.updated_unix_ms
        ));
    }
    Ok(documents.join("---\n"))
}

/// `k=v,k2=v2`, sorted by key; `<none>` when there are no labels.
pub fn labels_text(resource: &Resource) -> String {
    let sorted: BTreeMap<&String, &String> = resource.labels.iter().collect();
    if sorted.is_empty() {
        return "<none>".to_string();
    }
    let pairs: Vec<String> = sorted
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    pairs.join(",")
}

// === apply ===

#[derive(Serialize)]
pub struct ApplyView {
    pub changes: Vec<ChangeView>,
    pub revision: u64,
}

#[derive(Serialize)]
pub struct ChangeView {
    pub kind: String,
    pub name: String,
    /// created, updated, unchanged or deleted.
    pub action: String,
    pub revision: u64,
}

impl From<&ApplyResponse> for ApplyView {
    fn from(response: &ApplyResponse) -> Self {
        ApplyView {
            changes: response.changes.iter().map(ChangeView::from).collect(),
            revision: response.revision,
        }
    }
}

impl From<&ResourceChange> for ChangeView {
    fn from(change: &ResourceChange) -> Self {
        ChangeView {
            kind: change.kind.clone(),
            name: change.name.clone(),
            action: action_word(change.action),
            revision: change.revision,
        }
    }
}

/// `created`, `updated`, `unchanged`, `deleted`.
pub fn action_word(action: i32) -> String {
    match ChangeAction::try_from(action) {
        Ok(ChangeAction::Created) => "created".into(),
        Ok(ChangeAction::Updated) => "updated".into(),
        Ok(ChangeAction::Unchanged) => "unchanged".into(),
        Ok(ChangeAction::Deleted) => "deleted".into(),
        Ok(ChangeAction::Unspecified) | Err(_) => format!("changed (action {action})"),
    }
}

// === watch ===

#[derive(Serialize)]
pub struct WatchEventView {
    /// PUT or DELETE.
    #[serde(rename = "type")]
    pub event_type: String,
    pub revision: u64,
    pub resource: Option<ResourceView>,
}

impl From<&WatchEvent> for WatchEventView {
    fn from(event: &WatchEvent) -> Self {
        WatchEventView {
            event_type: event_type_word(event.r#type),
            revision: event.revision,
            resource: event.resource.as_ref().map(ResourceView::from),
        }
    }
}

/// `PUT` or `DELETE`.
pub fn event_type_word(event_type: i32) -> String {
    match EventType::try_from(event_type) {
        Ok(EventType::Put) => "PUT".into(),
        Ok(EventType::Delete) => "DELETE".into(),
        Ok(EventType::Unspecified) | Err(_) => format!("EVENT({event_type})"),
    }
}

// === cluster ===

#[derive(Serialize)]
pub struct InitView {
    pub cluster_id: String,
    pub admin_token: String,
    pub members: Vec<MemberView>,
}

impl From<&InitResponse> for InitView {
    fn from(response: &InitResponse) -> Self {
        InitView {
            cluster_id: response.cluster_id.clone(),
            admin_token: response.admin_token.clone(),
            members: response.members.iter().map(MemberView::from).collect(),
        }
    }
}

#[derive(Serialize)]
pub struct StatusView {
    pub cluster_id: String,
    pub node_id: u64,
    pub role: String,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub members: Vec<MemberView>,
    pub millis_since_quorum_ack: Option<u64>,
}

impl From<&StatusResponse> for StatusView {
    fn from(status: &StatusResponse) -> Self {
        StatusView {
            cluster_id: status.cluster_id.clone(),
            node_id: status.node_id,
            role: status.role.clone(),
            leader_id: status.leader_id,
            term: status.term,
            last_log_index: status.last_log_index,
            applied_index: status.applied_index,
            snapshot_index: status.snapshot_index,
            purged_index: status.purged_index,
            members: status.members.iter().map(MemberView::from).collect(),
            millis_since_quorum_ack: status.millis_since_quorum_ack,
        }
    }
}

#[derive(Serialize)]
pub struct MembersView {
    pub members: Vec<MemberView>,
}

#[derive(Serialize)]
pub struct MemberView {
    pub node_id: u64,
    pub info: Option<NodeInfoView>,
    /// voter or learner.
    pub role: String,
    pub matched_index: Option<u64>,
    pub lag: Option<u64>,
}

#[derive(Serialize)]
pub struct NodeInfoView {
    pub peer_addr: String,
    pub admin_addr: String,
    pub zone: String,
    pub proxy_addr: String,
    pub status_addr: String,
}

impl From<&Member> for MemberView {
    fn from(member: &Member) -> Self {
        MemberView {
            node_id: member.node_id,
            info: member.info.as_ref().map(NodeInfoView::from),
            role: member.role.clone(),
            matched_index: member.matched_index,
            lag: member.lag,
        }
    }
}

impl From<&NodeInfo> for NodeInfoView {
    fn from(info: &NodeInfo) -> Self {
        NodeInfoView {
            peer_addr: info.peer_addr.clone(),
            admin_addr: info.admin_addr.clone(),
            zone: info.zone.clone(),
            proxy_addr: info.proxy_addr.clone(),
            status_addr: info.status_addr.clone(),
        }
    }
}

/// The members table: ID, ZONE, ROLE, PEER ADDR, ADMIN ADDR, MATCHED, LAG.
pub fn members_table(members: &[Member]) -> String {
    let mut members: Vec<&Member> = members.iter().collect();
    members.sort_by_key(|member| member.node_id);
    let rows = members
        .into_iter()
        .map(|member| {
            let info = member.info.clone().unwrap_or_default();
            vec![
                member.node_id.to_string(),
                or_dash(info.zone),
                or_dash(member.role.clone()),
                or_dash(info.peer_addr),
                or_dash(info.admin_addr),
                optional(member.matched_index),
                optional(member.lag),
            ]
        })
        .collect();
    render_table(
        &[
            "ID",
            "ZONE",
            "ROLE",
            "PEER ADDR",
            "ADMIN ADDR",
            "MATCHED",
            "LAG",
        ],
        rows,
    )
}

fn or_dash(text: String) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_are_aligned_without_borders_or_trailing_spaces() {
        let text = render_table(
            &["KIND", "NAME"],
            vec![
                vec!["Service".into(), "echo".into()],
                vec!["Route".into(), "a-much-longer-name".into()],
            ],
        );
        assert_eq!(
            text,
            "KIND      NAME\nService   echo\nRoute     a-much-longer-name"
        );
    }

    #[test]
    fn yaml_output_of_a_resource_parses_back_as_the_same_manifest() {
        let mut labels = BTreeMap::new();
        labels.insert("team".to_string(), "edge".to_string());
        let spec = serde_json::json!({"service": "echo", "paths": ["/a"], "weight": 2});
        let resource = Resource {
            kind: "Route".into(),
            name: "echo".into(),
            labels: labels.clone().into_iter().collect(),
            spec: Some(konnect_client::json_to_struct(&spec).expect("object")),
            revision: 9,
            create_revision: 3,
            updated_unix_ms: 1,
        };
        let mut other = resource.clone();
        other.name = "other".into();

        let yaml = resources_to_manifest_yaml(&[resource, other]).expect("yaml");

        assert!(
            yaml.starts_with("# revision: 9, create_revision: 3"),
            "{yaml}"
        );
        let docs =
            konnect_client::parse_manifest("out.yaml", &yaml).expect("apply accepts get -o yaml");
        assert_eq!(docs.len(), 2);
        assert_eq!(
            (docs[0].name.as_str(), docs[1].name.as_str()),
            ("echo", "other")
        );
        assert_eq!(docs[0].kind, "Route");
        assert_eq!(docs[0].spec, spec);
        assert_eq!(docs[0].labels, labels);
    }
}
