//! `kind: PromptTemplate`: a prompt published as a REST endpoint of the AI routes,
//! `POST <route>/prompts/<name>` with `{"variables": {...}}`. The messages carry `{{name}}`
//! slots; `variables` is the JSON Schema the variables must satisfy, and every slot must be
//! one of its properties.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::{parse_spec, KindDef, Reference, SpecError};

pub const KIND: KindDef = KindDef {
    name: "PromptTemplate",
    validate: |spec| PromptTemplateSpec::parse(spec).map(|_| ()),
    references: |spec| match PromptTemplateSpec::parse(spec) {
        Ok(p) => vec![Reference {
            kind: "Model",
            name: p.model,
            field: "spec.model".into(),
        }],
        Err(_) => Vec::new(),
    },
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptTemplateSpec {
    /// The Model that answers.
    pub model: String,
    /// The conversation sent, with `{{variable}}` slots in the contents.
    pub messages: Vec<TemplateMessage>,
    /// JSON Schema of the `variables` object. Default: an object with no required fields
    /// whose properties are the slots.
    #[serde(default)]
    pub variables: Option<serde_json::Value>,
    /// Other chat parameters sent as they are (`temperature`, `max_tokens`, ...).
    #[serde(default)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// Parameters a template may not set: the endpoint decides them.
const RESERVED_PARAMETERS: &[&str] = &["model", "messages", "stream", "stream_options", "n"];

impl PromptTemplateSpec {
    pub fn parse(spec: &serde_json::Value) -> Result<PromptTemplateSpec, SpecError> {
        let p: PromptTemplateSpec = parse_spec(spec)?;
        if p.model.is_empty() {
            return Err(SpecError::new("spec.model", "a Model name is required"));
        }
        if p.messages.is_empty() {
            return Err(SpecError::new("spec.messages", "give at least one message"));
        }
        for (i, m) in p.messages.iter().enumerate() {
            if !matches!(
                m.role.as_str(),
                "system" | "developer" | "user" | "assistant"
            ) {
                return Err(SpecError::new(
                    format!("spec.messages[{i}].role"),
                    "must be system, developer, user or assistant",
                ));
            }
            slots(&m.content)
                .map_err(|e| SpecError::new(format!("spec.messages[{i}].content"), e))?;
        }
        for name in RESERVED_PARAMETERS {
            if p.parameters.contains_key(*name) {
                return Err(SpecError::new(
                    format!("spec.parameters.{name}"),
                    "set by the prompt endpoint; remove it",
                ));
            }
        }
        let schema = p.schema();
        jsonschema::validator_for(&schema).map_err(|e| {
            SpecError::new("spec.variables", format!("not a valid JSON Schema: {e}"))
        })?;
        let declared: BTreeSet<&str> = schema["properties"]
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        for (i, m) in p.messages.iter().enumerate() {
            for slot in slots(&m.content).unwrap_or_default() {
                if !declared.contains(slot.as_str()) {
                    return Err(SpecError::new(
                        format!("spec.messages[{i}].content"),
                        format!("slot {{{{{slot}}}}} is not a property of spec.variables"),
                    ));
                }
            }
        }
        Ok(p)
    }

    /// The variables' schema: the given one, or every slot as an optional property.
    pub fn schema(&self) -> serde_json::Value {
        if let Some(s) = &self.variables {
            return s.clone();
        }
        let mut properties = serde_json::Map::new();
        for m in &self.messages {
            for slot in slots(&m.content).unwrap_or_default() {
                properties.insert(slot, serde_json::json!({}));
            }
        }
        serde_json::json!({"type": "object", "properties": properties})
    }
}

/// The `{{name}}` slots of a text, in order; an unclosed `{{` or a name that is not
/// `[A-Za-z0-9_]+` is an error.
pub fn slots(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "an unclosed {{ slot".to_string())?;
        let name = after[..end].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "{{{{{name}}}}} is not a slot name (letters, digits, _)"
            ));
        }
        out.push(name.to_string());
        rest = &after[end + 2..];
    }
    Ok(out)
}

/// Fills the slots of `text` from `variables`: strings as they are, other values as JSON,
/// missing optional ones as empty text.
pub fn render(text: &str, variables: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        match variables.get(after[..end].trim()) {
            Some(serde_json::Value::String(s)) => out.push_str(s),
            Some(serde_json::Value::Null) | None => {}
            Some(other) => out.push_str(&other.to_string()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn slots_are_declared_variables_and_render_fills_them() {
        let spec = json!({"model": "gpt",
            "messages": [{"role": "system", "content": "Answer {{ style }}."},
                         {"role": "user", "content": "Summarize: {{text}}"}],
            "variables": {"type": "object", "required": ["text"],
                          "properties": {"text": {"type": "string"}, "style": {"enum": ["briefly"]}}},
            "parameters": {"temperature": 0.2}});
        let p = PromptTemplateSpec::parse(&spec).unwrap();
        let vars = json!({"text": "a long story", "n": 3})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            render(&p.messages[1].content, &vars),
            "Summarize: a long story"
        );
        assert_eq!(render(&p.messages[0].content, &vars), "Answer .");
        assert_eq!(render("{{n}} items", &vars), "3 items");
        let bad = |v: serde_json::Value| PromptTemplateSpec::parse(&v).unwrap_err().field;
        assert_eq!(
            bad(
                json!({"model": "gpt", "messages": [{"role": "user", "content": "{{x}}"}],
                       "variables": {"type": "object", "properties": {}}})
            ),
            "spec.messages[0].content"
        );
        assert_eq!(
            bad(json!({"model": "gpt", "messages": [{"role": "user", "content": "{{x"}]})),
            "spec.messages[0].content"
        );
        assert_eq!(
            bad(json!({"model": "gpt", "messages": [{"role": "tool", "content": "x"}]})),
            "spec.messages[0].role"
        );
        assert_eq!(
            bad(
                json!({"model": "gpt", "messages": [{"role": "user", "content": "x"}],
                       "parameters": {"stream": true}})
            ),
            "spec.parameters.stream"
        );
        assert_eq!(
            bad(
                json!({"model": "gpt", "messages": [{"role": "user", "content": "x"}],
                       "variables": {"type": 7}})
            ),
            "spec.variables"
        );
        // Without a schema, the slots are optional properties.
        let p = PromptTemplateSpec::parse(&json!({"model": "gpt",
            "messages": [{"role": "user", "content": "Hi {{name}}"}]}))
        .unwrap();
        assert_eq!(p.schema()["properties"], json!({"name": {}}));
    }
}
