//! `konnectctl apply`, `get`, `delete` and `watch`: resources in and out of the cluster.

use std::io::Read;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use futures::StreamExt;
use konnect_client::admin::{ApplyResponse, WatchEvent};
use konnect_client::state::{ChangeAction, Resource};
use konnect_client::{
    canonical_kind, explain_apply_error, parse_manifest, ClientError, ManifestDoc,
};
use serde::Serialize;
use tonic::Code;

use super::output::{
    action_word, event_type_word, labels_text, print_stdout, print_structured, render_table,
    resources_to_manifest_yaml, to_json, to_json_line, to_yaml, ApplyView, OutputFormat,
    ResourceView, WatchEventView,
};
use super::Context;

/// The kinds `get`, `delete` and `watch` take, for help texts.
const KIND_HELP: &str = "Service, Route, Certificate, JwtProvider, Consumer, Team, ApiKey, \
                         LogRedaction, RateLimit, ConcurrencyLimit, Provider, Model, \
                         PromptTemplate, ModelPrice or Budget \
                         (any case, singular or plural)";

#[derive(Args)]
pub struct ApplyArgs {
    /// The manifest: YAML documents of kind, name, labels and spec separated by `---`; `-`
    /// reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: String,
    /// Also delete resources of the kinds in the file that the file does not list.
    #[arg(long)]
    prune: bool,
}

#[derive(Args)]
pub struct GetArgs {
    #[arg(help = format!("Resource kind: {KIND_HELP}"))]
    kind: String,
    /// Show only this resource.
    name: Option<String>,
    /// Only resources whose labels match all of these comma-separated `key=value` and
    /// `key!=value` terms.
    #[arg(
        short = 'l',
        long = "selector",
        value_name = "SELECTOR",
        conflicts_with = "name"
    )]
    selector: Option<String>,
    /// Linearizable read: the leader confirms it still leads with a quorum first.
    #[arg(long)]
    consistent: bool,
}

#[derive(Args)]
pub struct DeleteArgs {
    #[arg(help = format!("Resource kind: {KIND_HELP}"))]
    kind: String,
    name: String,
    /// Delete only if the resource's revision is still N (see `konnectctl get`).
    #[arg(long, value_name = "N")]
    expected_revision: Option<u64>,
}

#[derive(Args)]
pub struct WatchArgs {
    #[arg(help = format!("Resource kind: {KIND_HELP}; omit it to watch every kind"))]
    kind: Option<String>,
    /// Start after this revision (replaying the changes since); default: the current
    /// revision, so only new changes are shown.
    #[arg(long, value_name = "N")]
    from_revision: Option<u64>,
}

// === apply ===

pub async fn apply(context: &Context, args: ApplyArgs) -> anyhow::Result<()> {
    let (file, text) = read_manifest(&args.file)?;
    let docs = parse_manifest(&file, &text)?;
    if docs.is_empty() {
        bail!("{file}: nothing to apply: the file has no resources (every document is empty)");
    }
    let resources = docs
        .iter()
        .map(|doc| doc.to_resource_input().with_context(|| doc.describe(&file)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let prune_kinds = if args.prune {
        distinct_kinds(&docs)
    } else {
        Vec::new()
    };

    let client = context.connect().await?;
    let response = match client.apply(resources, prune_kinds).await {
        Ok(response) => response,
        Err(error) if error.write_index().is_some() => {
            bail!("{}", explain_apply_error(&file, &docs, &error))
        }
        Err(error) => return Err(anyhow::Error::new(error).context(format!("cannot apply {file}"))),
    };

    match context.output {
        OutputFormat::Table => print_stdout(&apply_report(&response)),
        format => print_structured(format, &ApplyView::from(&response)),
    }
}

/// Reads the manifest and returns the name to use for it in messages.
fn read_manifest(path: &str) -> anyhow::Result<(String, String)> {
    if path == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the manifest from stdin")?;
        return Ok(("<stdin>".to_string(), text));
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read manifest {path}"))?;
    Ok((path.to_string(), text))
}

/// The kinds in the file, each once, in order of first appearance.
fn distinct_kinds(docs: &[ManifestDoc]) -> Vec<String> {
    let mut kinds: Vec<String> = Vec::new();
    for doc in docs {
        if !kinds.contains(&doc.kind) {
            kinds.push(doc.kind.clone());
        }
    }
    kinds
}

/// One line per change (`Service/echo created`), then the counts and the revision.
fn apply_report(response: &ApplyResponse) -> String {
    let mut lines: Vec<String> = response
        .changes
        .iter()
        .map(|change| {
            format!(
                "{}/{} {}",
                change.kind,
                change.name,
                action_word(change.action)
            )
        })
        .collect();
    let count = |action: ChangeAction| {
        response
            .changes
            .iter()
            .filter(|change| change.action == action as i32)
            .count()
    };
    lines.push(format!(
        "{} created, {} updated, {} unchanged, {} deleted (revision {})",
        count(ChangeAction::Created),
        count(ChangeAction::Updated),
        count(ChangeAction::Unchanged),
        count(ChangeAction::Deleted),
        response.revision
    ));
    lines.join("\n")
}

// === get ===

pub async fn get(context: &Context, args: GetArgs) -> anyhow::Result<()> {
    let kind = canonical_kind(&args.kind);
    let client = context.connect().await?;
    match args.name {
        Some(name) => {
            let resource = client.get(&kind, &name, args.consistent).await?;
            match context.output {
                OutputFormat::Table => print_stdout(&resources_table(&[resource])),
                OutputFormat::Json | OutputFormat::Csv => {
                    print_stdout(&to_json(&ResourceView::from(&resource))?)
                }
                OutputFormat::Yaml => print_stdout(&resources_to_manifest_yaml(&[resource])?),
            }
        }
        None => {
            let selector = args.selector.unwrap_or_default();
            let list = client.list(&kind, &selector, args.consistent).await?;
            match context.output {
                OutputFormat::Table if list.items.is_empty() => {
                    if selector.is_empty() {
                        eprintln!("no {kind} resources found");
                    } else {
                        eprintln!("no {kind} resources match {selector:?}");
                    }
                    Ok(())
                }
                OutputFormat::Table => print_stdout(&resources_table(&list.items)),
                OutputFormat::Json | OutputFormat::Csv => {
                    let views: Vec<ResourceView> =
                        list.items.iter().map(ResourceView::from).collect();
                    print_stdout(&to_json(&views)?)
                }
                OutputFormat::Yaml if list.items.is_empty() => Ok(()),
                OutputFormat::Yaml => print_stdout(&resources_to_manifest_yaml(&list.items)?),
            }
        }
    }
}

fn resources_table(resources: &[Resource]) -> String {
    let rows = resources
        .iter()
        .map(|resource| {
            vec![
                resource.kind.clone(),
                resource.name.clone(),
                resource.revision.to_string(),
                labels_text(resource),
            ]
        })
        .collect();
    render_table(&["KIND", "NAME", "REVISION", "LABELS"], rows)
}

// === delete ===

#[derive(Serialize)]
struct DeletedView<'a> {
    kind: &'a str,
    name: &'a str,
    revision: u64,
}

pub async fn delete(context: &Context, args: DeleteArgs) -> anyhow::Result<()> {
    let kind = canonical_kind(&args.kind);
    let client = context.connect().await?;
    let response = client
        .delete(&kind, &args.name, args.expected_revision)
        .await?;
    match context.output {
        OutputFormat::Table => print_stdout(&format!(
            "{kind}/{} deleted (revision {})",
            args.name, response.revision
        )),
        format => print_structured(
            format,
            &DeletedView {
                kind: &kind,
                name: &args.name,
                revision: response.revision,
            },
        ),
    }
}

// === watch ===

/// Pause before reopening a watch stream that broke, so a failing node is not hammered.
const WATCH_RESUME_DELAY: Duration = Duration::from_secs(1);
/// Give up after this many reopened streams in a row that delivered nothing.
const WATCH_MAX_EMPTY_RESUMES: u32 = 5;

pub async fn watch(context: &Context, args: WatchArgs) -> anyhow::Result<()> {
    let kind = args.kind.as_deref().map(canonical_kind).unwrap_or_default();
    let client = context.connect().await?;
    let mut after_revision = match args.from_revision {
        Some(revision) => revision,
        // A one-item list tells the current revision without reading everything.
        None => client.list_page(&kind, "", 1, "", false).await?.revision,
    };
    let mut empty_resumes = 0;
    loop {
        let mut stream = client.watch(&kind, after_revision).await?;
        let mut delivered = false;
        let ended_by = loop {
            match stream.next().await {
                Some(Ok(event)) => {
                    delivered = true;
                    after_revision = after_revision.max(event.revision);
                    print_event(context.output, &event)?;
                }
                Some(Err(error)) if is_resumable(&error) => break error.to_string(),
                Some(Err(error)) if error.code() == Code::FailedPrecondition => {
                    return Err(anyhow::Error::new(error).context(format!(
                        "cannot watch after revision {after_revision} (older changes may be \
                         compacted): run `konnectctl watch` without --from-revision to start \
                         at the current revision"
                    )))
                }
                Some(Err(error)) => return Err(error.into()),
                None => break "the server ended the stream".to_string(),
            }
        };
        empty_resumes = if delivered { 0 } else { empty_resumes + 1 };
        if empty_resumes > WATCH_MAX_EMPTY_RESUMES {
            bail!(
                "watch keeps breaking without delivering changes ({ended_by}); \
                 check the cluster with `konnectctl cluster status`"
            );
        }
        eprintln!("watch interrupted ({ended_by}); resuming after revision {after_revision}");
        tokio::time::sleep(WATCH_RESUME_DELAY).await;
    }
}

/// A stream that broke because its node went away, not because the watch is wrong.
fn is_resumable(error: &ClientError) -> bool {
    matches!(
        error.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

fn print_event(format: OutputFormat, event: &WatchEvent) -> anyhow::Result<()> {
    match format {
        OutputFormat::Table => {
            let (kind, name) = event.resource.as_ref().map_or(("?", "?"), |resource| {
                (resource.kind.as_str(), resource.name.as_str())
            });
            print_stdout(&format!(
                "{} {} {kind}/{name}",
                event.revision,
                event_type_word(event.r#type)
            ))
        }
        OutputFormat::Json | OutputFormat::Csv => {
            print_stdout(&to_json_line(&WatchEventView::from(event))?)
        }
        OutputFormat::Yaml => {
            print_stdout(&format!("---\n{}", to_yaml(&WatchEventView::from(event))?))
        }
    }
}

#[cfg(test)]
mod tests {
    use konnect_client::state::ResourceChange;

    use super::*;

    fn change(kind: &str, name: &str, action: ChangeAction) -> ResourceChange {
        ResourceChange {
            kind: kind.into(),
            name: name.into(),
            action: action as i32,
            revision: 42,
        }
    }

    #[test]
    fn apply_report_lists_each_change_then_the_totals() {
        let response = ApplyResponse {
            changes: vec![
                change("Service", "echo", ChangeAction::Created),
                change("Route", "echo", ChangeAction::Unchanged),
                change("Route", "new", ChangeAction::Created),
                change("Route", "old", ChangeAction::Deleted),
            ],
            revision: 42,
        };
        assert_eq!(
            apply_report(&response),
            "Service/echo created\nRoute/echo unchanged\nRoute/new created\nRoute/old deleted\n\
             2 created, 0 updated, 1 unchanged, 1 deleted (revision 42)"
        );
    }

    #[test]
    fn prune_kinds_are_the_distinct_kinds_of_the_file_in_order() {
        let docs = parse_manifest(
            "f.yaml",
            "kind: Route\nname: a\n---\nkind: Service\nname: s\n---\nkind: routes\nname: b\n",
        )
        .expect("valid manifest");
        assert_eq!(distinct_kinds(&docs), vec!["Route", "Service"]);
    }

    #[test]
    fn resources_table_shows_kind_name_revision_and_sorted_labels() {
        let resource = Resource {
            kind: "Route".into(),
            name: "echo".into(),
            labels: [
                ("b".to_string(), "2".to_string()),
                ("a".to_string(), "1".to_string()),
            ]
            .into_iter()
            .collect(),
            revision: 7,
            ..Resource::default()
        };
        assert_eq!(
            resources_table(&[resource]),
            "KIND    NAME   REVISION   LABELS\nRoute   echo   7          a=1,b=2"
        );
    }
}
