//! `konnectctl cluster ...`: form the cluster, show its state, add and remove nodes.

use clap::{Args, Subcommand};
use konnect_client::admin::{MembershipResponse, StatusResponse};

use super::output::{
    members_table, optional, print_stdout, print_structured, InitView, MemberView, MembersView,
    OutputFormat, StatusView,
};
use super::Context;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Form the cluster from the node's --peers list. Prints only the first admin token on
    /// stdout (details go to stderr), so `export KONNECT_TOKEN=$(konnectctl cluster init)`
    /// works. With -o json|yaml, prints the whole response instead.
    Init,
    /// Show the answering node's view: role, leader, term, log indexes and members.
    Status,
    /// Add a node: it joins as a learner and becomes a voter once caught up.
    AddNode(AddNodeArgs),
    /// Remove a node from the cluster.
    RemoveNode(RemoveNodeArgs),
}

#[derive(Args)]
pub struct AddNodeArgs {
    /// The new node's id (its --node-id).
    #[arg(long = "id", value_name = "N")]
    node_id: u64,
    /// The address other nodes reach its peer API at (host:port).
    #[arg(long, value_name = "ADDR")]
    peer_addr: String,
    /// Keep it a non-voting learner (for far regions).
    #[arg(long)]
    learner: bool,
}

#[derive(Args)]
pub struct RemoveNodeArgs {
    /// The id of the node to remove.
    #[arg(long = "id", value_name = "N")]
    node_id: u64,
}

pub async fn run(context: &Context, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Init => init(context).await,
        ClusterCommand::Status => status(context).await,
        ClusterCommand::AddNode(args) => {
            let client = context.connect().await?;
            let response = client
                .add_node(args.node_id, &args.peer_addr, args.learner)
                .await?;
            let role = if args.learner { "learner" } else { "voter" };
            eprintln!("node {} added as a {role}", args.node_id);
            print_members(context.output, &response)
        }
        ClusterCommand::RemoveNode(args) => {
            let client = context.connect().await?;
            let response = client.remove_node(args.node_id).await?;
            eprintln!("node {} removed", args.node_id);
            print_members(context.output, &response)
        }
    }
}

async fn init(context: &Context) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let response = client.init().await?;
    if context.output != OutputFormat::Table {
        return print_structured(context.output, &InitView::from(&response));
    }
    eprintln!(
        "cluster {} initialised by {}",
        response.cluster_id,
        client.current_endpoint()
    );
    if !response.members.is_empty() {
        eprintln!("{}", members_table(&response.members));
    }
    eprintln!("admin token printed on stdout: save this token, it is not shown again");
    print_stdout(&response.admin_token)
}

async fn status(context: &Context) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let status = client.status().await?;
    match context.output {
        OutputFormat::Table => print_stdout(&status_text(&status)),
        format => print_structured(format, &StatusView::from(&status)),
    }
}

/// The header lines followed by the members table.
fn status_text(status: &StatusResponse) -> String {
    let role = if status.role.is_empty() {
        "unknown role"
    } else {
        &status.role
    };
    let mut lines = vec![
        format!("cluster id:     {}", status.cluster_id),
        format!("answering node: {} ({role})", status.node_id),
        format!(
            "leader:         {}",
            status
                .leader_id
                .map_or_else(|| "none known".to_string(), |id| id.to_string())
        ),
        format!("term:           {}", status.term),
        format!("last log index: {}", optional(status.last_log_index)),
        format!("applied index:  {}", optional(status.applied_index)),
        format!("snapshot index: {}", optional(status.snapshot_index)),
        format!("purged index:   {}", optional(status.purged_index)),
    ];
    if let Some(millis) = status.millis_since_quorum_ack {
        lines.push(format!("quorum ack:     {millis} ms ago"));
    }
    lines.push(String::new());
    lines.push(members_table(&status.members));
    lines.join("\n")
}

fn print_members(format: OutputFormat, response: &MembershipResponse) -> anyhow::Result<()> {
    match format {
        OutputFormat::Table => print_stdout(&members_table(&response.members)),
        format => print_structured(
            format,
            &MembersView {
                members: response.members.iter().map(MemberView::from).collect(),
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use konnect_client::admin::Member;
    use konnect_client::state::NodeInfo;

    use super::*;

    #[test]
    fn status_shows_header_then_members_table_with_dashes_for_unknown_values() {
        let status = StatusResponse {
            cluster_id: "c1".into(),
            node_id: 2,
            role: "Follower".into(),
            leader_id: Some(1),
            term: 3,
            last_log_index: Some(42),
            applied_index: Some(41),
            snapshot_index: None,
            purged_index: None,
            members: vec![Member {
                node_id: 1,
                info: Some(NodeInfo {
                    peer_addr: "10.0.0.1:7301".into(),
                    admin_addr: "10.0.0.1:7201".into(),
                    zone: "eu-1a".into(),
                    ..NodeInfo::default()
                }),
                role: "voter".into(),
                matched_index: Some(42),
                lag: Some(0),
            }],
            millis_since_quorum_ack: None,
        };
        let text = status_text(&status);
        assert!(
            text.starts_with(
                "cluster id:     c1\nanswering node: 2 (Follower)\nleader:         1\n"
            ),
            "{text}"
        );
        assert!(text.contains("snapshot index: -\n"), "{text}");
        assert!(
            text.contains("ID   ZONE    ROLE    PEER ADDR       ADMIN ADDR      MATCHED   LAG"),
            "{text}"
        );
        assert!(
            text.ends_with("1    eu-1a   voter   10.0.0.1:7301   10.0.0.1:7201   42        0"),
            "{text}"
        );
    }
}
