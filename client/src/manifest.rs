//! Resource manifests: multi-document YAML files of `kind`/`name`/`labels`/`spec`, parsed into
//! `ManifestDoc`s with errors that name the file, the document and the field; plus the
//! conversions between JSON and the `google.protobuf.Struct` the admin API carries specs in.

use std::collections::BTreeMap;
use std::fmt;

use konnect_proto::admin::v1::ResourceInput;
use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

use crate::kind::canonical_kind;
use crate::ClientError;

/// The top-level fields a manifest document may have.
pub const TOP_LEVEL_FIELDS: [&str; 4] = ["kind", "name", "labels", "spec"];

/// One resource from a manifest file.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestDoc {
    /// Position of the YAML document in the file, starting at 1 and counting empty documents,
    /// so it matches what the user sees between `---` lines.
    pub doc_number: usize,
    /// Canonical kind (`Service`, not `services`).
    pub kind: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Always a JSON object; `{}` when the document has no `spec`.
    pub spec: Json,
}

/// One problem in a manifest file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// The file as the user named it (`config.yaml`, `<stdin>`).
    pub file: String,
    /// The document the problem is in; `None` for problems with the file as a whole.
    pub doc_number: Option<usize>,
    pub problem: String,
}

/// Every problem found in a manifest file, in file order. Nothing should be applied when
/// there is any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestErrors(pub Vec<ManifestError>);

// === impl ManifestDoc ===

impl ManifestDoc {
    /// Where this resource is, for messages: `config.yaml: document 2 (Route "billing")`.
    pub fn describe(&self, file: &str) -> String {
        format!(
            "{file}: document {} ({} {:?})",
            self.doc_number, self.kind, self.name
        )
    }

    /// The resource as the admin API takes it.
    pub fn to_resource_input(&self) -> Result<ResourceInput, SpecNotObject> {
        Ok(ResourceInput {
            kind: self.kind.clone(),
            name: self.name.clone(),
            labels: self
                .labels
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            spec: Some(json_to_struct(&self.spec)?),
        })
    }
}

// === impl ManifestError ===

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.doc_number {
            Some(number) => write!(f, "{}: document {number}: {}", self.file, self.problem),
            None => write!(f, "{}: {}", self.file, self.problem),
        }
    }
}

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

// === parsing ===

/// Parses a multi-document YAML manifest. `file` is only used in messages.
///
/// Empty documents (a trailing `---`, a document of comments) are skipped but counted. Every
/// document is checked, so all problems are reported at once; a YAML syntax error stops the
/// parse because nothing after it can be trusted.
pub fn parse_manifest(file: &str, text: &str) -> Result<Vec<ManifestDoc>, ManifestErrors> {
    let mut docs: Vec<ManifestDoc> = Vec::new();
    let mut errors: Vec<ManifestError> = Vec::new();
    let problem = |doc_number: usize, problem: String| ManifestError {
        file: file.to_string(),
        doc_number: Some(doc_number),
        problem,
    };

    for (position, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let doc_number = position + 1;
        let mut value = match Yaml::deserialize(document) {
            Ok(value) => value,
            Err(error) => {
                errors.push(problem(doc_number, describe_yaml_error(&error)));
                break;
            }
        };
        if let Err(error) = value.apply_merge() {
            errors.push(problem(
                doc_number,
                format!("invalid merge key (<<): {error}"),
            ));
            continue;
        }
        match parse_document(doc_number, value) {
            Ok(None) => {}
            Ok(Some(doc)) => {
                if let Some(first) = docs
                    .iter()
                    .find(|seen| seen.kind == doc.kind && seen.name == doc.name)
                {
                    errors.push(problem(
                        doc_number,
                        format!(
                            "{} {:?} is already defined in document {}; each resource may \
                             appear once",
                            doc.kind, doc.name, first.doc_number
                        ),
                    ));
                } else {
                    docs.push(doc);
                }
            }
            Err(problems) => {
                errors.extend(problems.into_iter().map(|text| problem(doc_number, text)));
            }
        }
    }

    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(ManifestErrors(errors))
    }
}

fn describe_yaml_error(error: &serde_yaml_ng::Error) -> String {
    let text = error.to_string();
    match error.location() {
        // libyaml's own messages already end in "at line L column C".
        Some(location) if !text.contains(" at line ") => format!(
            "invalid YAML at line {}, column {}: {text}",
            location.line(),
            location.column()
        ),
        _ => format!("invalid YAML: {text}"),
    }
}

/// Checks one document; `Ok(None)` for an empty one.
fn parse_document(doc_number: usize, value: Yaml) -> Result<Option<ManifestDoc>, Vec<String>> {
    let mapping = match value {
        Yaml::Null => return Ok(None),
        Yaml::Mapping(mapping) => mapping,
        other => {
            return Err(vec![format!(
                "expected a mapping with fields kind, name, labels, spec; found {}",
                yaml_type_name(&other)
            )])
        }
    };

    let mut problems = Vec::new();
    let (mut kind, mut saw_kind) = (None, false);
    let (mut name, mut saw_name) = (None, false);
    let mut labels = BTreeMap::new();
    let mut spec = Json::Object(serde_json::Map::new());
    for (key, value) in mapping {
        match key.as_str() {
            Some("kind") => {
                saw_kind = true;
                kind = required_string("kind", value, &mut problems);
            }
            Some("name") => {
                saw_name = true;
                name = required_string("name", value, &mut problems);
            }
            Some("labels") => match parse_labels(value) {
                Ok(parsed) => labels = parsed,
                Err(mut label_problems) => problems.append(&mut label_problems),
            },
            Some("spec") => match value {
                Yaml::Null => {}
                Yaml::Mapping(_) => match yaml_to_json(value, "spec") {
                    Ok(json) => spec = json,
                    Err(problem) => problems.push(problem),
                },
                other => problems.push(format!(
                    "\"spec\" must be a mapping, found {}",
                    yaml_type_name(&other)
                )),
            },
            _ => problems.push(format!(
                "unknown field {} (expected {})",
                describe_key(&key),
                TOP_LEVEL_FIELDS.join(", ")
            )),
        }
    }
    if !saw_kind {
        problems.push("missing \"kind\"".to_string());
    }
    if !saw_name {
        problems.push("missing \"name\"".to_string());
    }
    match (kind, name) {
        (Some(kind), Some(name)) if problems.is_empty() => Ok(Some(ManifestDoc {
            doc_number,
            kind: canonical_kind(&kind),
            name,
            labels,
            spec,
        })),
        _ => Err(problems),
    }
}

/// A non-empty string field; records a problem and returns `None` otherwise.
fn required_string(field: &str, value: Yaml, problems: &mut Vec<String>) -> Option<String> {
    match value {
        Yaml::String(text) if !text.trim().is_empty() => Some(text),
        Yaml::String(_) => {
            problems.push(format!("\"{field}\" must not be empty"));
            None
        }
        Yaml::Null => {
            problems.push(format!("\"{field}\" has no value"));
            None
        }
        other => {
            problems.push(format!(
                "\"{field}\" must be a string, found {}",
                yaml_type_name(&other)
            ));
            None
        }
    }
}

fn parse_labels(value: Yaml) -> Result<BTreeMap<String, String>, Vec<String>> {
    let mapping = match value {
        Yaml::Null => return Ok(BTreeMap::new()),
        Yaml::Mapping(mapping) => mapping,
        other => {
            return Err(vec![format!(
                "\"labels\" must be a mapping of strings to strings, found {}",
                yaml_type_name(&other)
            )])
        }
    };
    let mut labels = BTreeMap::new();
    let mut problems = Vec::new();
    for (key, value) in mapping {
        let Some(key) = key.as_str().map(str::to_string) else {
            problems.push(format!(
                "labels: key {} must be a string",
                describe_key(&key)
            ));
            continue;
        };
        match value {
            Yaml::String(text) => {
                labels.insert(key, text);
            }
            Yaml::Number(_) | Yaml::Bool(_) => problems.push(format!(
                "labels.{key}: label values must be strings; quote it: \"{}\"",
                scalar_text(&value)
            )),
            other => problems.push(format!(
                "labels.{key}: label values must be strings, found {}",
                yaml_type_name(&other)
            )),
        }
    }
    if problems.is_empty() {
        Ok(labels)
    } else {
        Err(problems)
    }
}

/// Converts YAML to JSON; `path` names the value in messages (`spec.targets[0]`).
fn yaml_to_json(value: Yaml, path: &str) -> Result<Json, String> {
    Ok(match value {
        Yaml::Null => Json::Null,
        Yaml::Bool(flag) => Json::Bool(flag),
        Yaml::Number(number) => {
            if let Some(integer) = number.as_i64() {
                Json::from(integer)
            } else if let Some(integer) = number.as_u64() {
                Json::from(integer)
            } else {
                let float = number.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(float)
                    .map(Json::Number)
                    .ok_or_else(|| format!("{path}: {number} is not a finite number"))?
            }
        }
        Yaml::String(text) => Json::String(text),
        Yaml::Sequence(items) => Json::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(index, item)| yaml_to_json(item, &format!("{path}[{index}]")))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Mapping(mapping) => {
            let mut object = serde_json::Map::new();
            for (key, item) in mapping {
                let key = match &key {
                    Yaml::String(_) | Yaml::Number(_) | Yaml::Bool(_) => scalar_text(&key),
                    other => {
                        return Err(format!(
                            "{path}: mapping keys must be strings, found {}",
                            yaml_type_name(other)
                        ))
                    }
                };
                let item = yaml_to_json(item, &format!("{path}.{key}"))?;
                object.insert(key, item);
            }
            Json::Object(object)
        }
        Yaml::Tagged(tagged) => {
            return Err(format!(
                "{path}: YAML tags ({}) are not supported; remove the tag",
                tagged.tag
            ))
        }
    })
}

fn scalar_text(value: &Yaml) -> String {
    match value {
        Yaml::String(text) => text.clone(),
        Yaml::Number(number) => number.to_string(),
        Yaml::Bool(flag) => flag.to_string(),
        Yaml::Null => "null".to_string(),
        other => yaml_type_name(other).to_string(),
    }
}

fn describe_key(key: &Yaml) -> String {
    match key {
        Yaml::String(text) => format!("{text:?}"),
        Yaml::Number(_) | Yaml::Bool(_) | Yaml::Null => scalar_text(key),
        other => yaml_type_name(other).to_string(),
    }
}

fn yaml_type_name(value: &Yaml) -> &'static str {
    match value {
        Yaml::Null => "nothing (null)",
        Yaml::Bool(_) => "a boolean",
        Yaml::Number(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Sequence(_) => "a list",
        Yaml::Mapping(_) => "a mapping",
        Yaml::Tagged(_) => "a tagged value",
    }
}

// === errors from Apply, mapped back to the file ===

/// Explains a failed `Apply` of `docs` (sent in order) in terms of the file: when the server
/// named the rejected resource (`x-konnect-write-index`), the message starts with its
/// document: `config.yaml: document 2 (Route "billing"): spec.service: unknown service "bill"`.
pub fn explain_apply_error(file: &str, docs: &[ManifestDoc], error: &ClientError) -> String {
    match error.write_index().and_then(|index| docs.get(index)) {
        Some(doc) => format!("{}: {}", doc.describe(file), error.message()),
        None => match error {
            ClientError::Status { .. } => format!("{file}: {error}"),
            other => other.to_string(),
        },
    }
}

// JSON <-> google.protobuf.Struct lives in konnect-proto, shared with the node.
pub use konnect_proto::json::{
    json_to_struct, json_to_value, json_type_name, struct_to_json, value_to_json, SpecNotObject,
};

#[cfg(test)]
mod tests;
