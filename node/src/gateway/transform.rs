//! Per-route request and response transformations (add, set, remove and rename headers;
//! rewrite the path with regex captures; add and remove query parameters), built so that
//! neither a configured value nor anything in the request can inject a header line, a query
//! or a fragment.
//!
//! # Where the data comes from, what goes out
//! A Route spec carries an optional [`RequestTransform`] and [`ResponseTransform`]. The admin
//! API refuses a spec whose transforms fail [`RequestTransform::validate`] or
//! [`ResponseTransform::validate`]. On the request path the gateway calls
//! [`RequestTransform::apply`] after `strip_prefix` (it edits the upstream request headers and
//! returns the path and query to forward), and [`ResponseTransform::apply`] in
//! `prepare_response`. Nothing here awaits, locks or touches anything but the headers given.
//!
//! # Order of operations
//! Header operations run in this order, each seeing the result of the one before:
//! 1. **remove**: the header goes, with every value it had.
//! 2. **rename**: all values of the old header move to the new name and replace whatever the
//!    new name carried; an absent old header changes nothing. Renames happen at once, so
//!    `a -> b` together with `b -> c` moves the old `b` to `c` and `a` to `b`.
//! 3. **set**: the value replaces every value the header had, or creates the header.
//! 4. **add**: the value is appended as one more field line; existing values stay.
//!
//! Header names are case-insensitive everywhere (`X-Foo` and `x-foo` are one header).
//! A request transform computes the path rewrite first (so a failing rewrite leaves the
//! headers untouched), then the query (remove, then add), then the header operations.
//!
//! # Path rewrite templates
//! A template such as `/v2/users/${id}/$1` replaces the whole forwarded path. `$1`..`$9` are
//! the numbered capture groups of the route's regex path (one digit: `$10` is group 1 and a
//! literal `0`), `${name}` a named group `(?P<name>...)`, and `$$` a literal `$`. A group
//! that did not take part in the match expands to nothing.
//!
//! # Hardening
//! - Validation refuses CR, LF and NUL in header names and values, query keys and values and
//!   path templates, and refuses headers that frame or route the message
//!   ([`PROXY_MANAGED_HEADERS`]); `apply` skips such entries too, should an unvalidated spec
//!   ever reach it, and `HeaderValue` itself refuses control characters.
//! - Substituted capture values (and template text) are percent-encoded wherever a character
//!   is not allowed in a path (CR, LF, NUL, space, `?`, `#`, `%` not starting an escape,
//!   control and non-ASCII characters, ...), so a capture can never start a query, a fragment
//!   or a new line. Existing `%XX` escapes are kept as they are.
//! - Runs of `/` in the rewritten path collapse to one (normalised request paths never hold
//!   `//`, and an upstream may read `//host/...` as a network path), and a `.` or `..` segment
//!   in the result is refused ([`TransformError::DotSegment`]), so a capture cannot climb out
//!   of the directory the template names.
//! - Query keys and values added by the config are percent-encoded (everything but
//!   `A-Z a-z 0-9 - . _ ~`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use hyper::header::{HeaderName, HeaderValue};
use hyper::HeaderMap;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

use crate::gateway::router::PathCapture;
use crate::resources::SpecError;

#[cfg(test)]
mod tests;

/// Headers that frame the message, name its target or belong to one connection. The proxy
/// manages them itself; a transform that touched them could smuggle requests or break framing.
pub const PROXY_MANAGED_HEADERS: &[&str] = &[
    "connection",
    "transfer-encoding",
    "content-length",
    "host",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
];

// === Spec ===

/// Header operations; they run in the order remove, rename, set, add (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Header name -> value appended as one more field line; values already present stay.
    /// Runs last. Default: nothing added.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Header name -> value that replaces every value the header had (or creates it). Runs
    /// after rename. Default: nothing set.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Header names removed together with all their values. Runs first. Default: none.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Old name -> new name: every value of the old header moves to the new name, replacing
    /// what the new name carried; nothing happens when the old header is absent. Runs after
    /// remove. Default: nothing renamed.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}

/// Query parameter operations; remove runs before add.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryOps {
    /// Key -> value appended as `key=value` (both percent-encoded) after the parameters the
    /// request already has. Default: nothing added.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Keys whose every occurrence is removed; compared with the request's keys after
    /// decoding (`%XX`, and `+` as space). Default: none.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// What to change in a request before it is forwarded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestTransform {
    /// Header operations on the upstream request. Default: none.
    #[serde(default)]
    pub headers: HeaderOps,
    /// Template for the forwarded path, e.g. `/v2/$1/${id}`: `$1`..`$9` and `${name}` are the
    /// route's regex captures, `$$` a literal `$`. Must start with `/`. Default: the request
    /// path (after `strip_prefix`) is forwarded unchanged.
    #[serde(default)]
    pub path: Option<String>,
    /// Query parameter operations. Default: the query is forwarded unchanged.
    #[serde(default)]
    pub query: QueryOps,
}

/// What to change in a response before it is returned to the client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseTransform {
    /// Header operations on the response. Default: none.
    #[serde(default)]
    pub headers: HeaderOps,
}

// === Runtime input and errors ===

/// What a request transform reads from the request besides its headers.
#[derive(Debug, Clone, Copy)]
pub struct RewriteInput<'a> {
    /// Name of the route, for error messages.
    pub route: &'a str,
    /// The normalised request path after `strip_prefix`, without the query.
    pub path: &'a str,
    /// The raw query string, without the `?`.
    pub query: Option<&'a str>,
    /// Capture groups of the route's regex path match; empty for other paths.
    pub captures: &'a [PathCapture<'a>],
}

/// A path rewrite that cannot produce a path to forward.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The template is malformed. Validation refuses such templates, so this is a server
    /// error (500).
    #[error("route {route:?}: path rewrite template {template:?} is invalid: {reason}")]
    InvalidTemplate {
        route: String,
        template: String,
        reason: String,
    },
    /// The rewritten path does not start with `/`. Validation requires templates to start
    /// with `/`, so this is a server error (500).
    #[error(
        "route {route:?}: path rewrite template {template:?} produced {path:?}, which does not \
         start with '/'; make the template start with '/'"
    )]
    NotAbsolute {
        route: String,
        template: String,
        path: String,
    },
    /// The rewritten path has a `.` or `..` segment, which only request input (a capture) can
    /// produce: the request is refused (400) rather than let it climb out of the template's
    /// directory.
    #[error(
        "route {route:?}: path rewrite template {template:?} produced {path:?}, which has a '.' \
         or '..' segment taken from the request path"
    )]
    DotSegment {
        route: String,
        template: String,
        path: String,
    },
}

impl TransformError {
    /// True when the request itself is at fault (answer 400), false for a server error (500).
    pub fn is_caused_by_request(&self) -> bool {
        matches!(self, TransformError::DotSegment { .. })
    }
}

// === impl RequestTransform ===

impl RequestTransform {
    /// Checks every header, query and path entry; `field_prefix` is where this transform sits
    /// in the spec (`spec.request`), and errors name the field below it
    /// (`spec.request.headers.set.x-foo`).
    pub fn validate(&self, field_prefix: &str) -> Result<(), SpecError> {
        self.headers.validate(&format!("{field_prefix}.headers"))?;
        if let Some(template) = &self.path {
            validate_path_template(template)
                .map_err(|message| SpecError::new(format!("{field_prefix}.path"), message))?;
        }
        self.query.validate(&format!("{field_prefix}.query"))
    }

    /// Rewrites the path (when a template is configured), applies the query operations and
    /// then the header operations to `headers`; returns the path and query to forward (`None`
    /// when the query ends up empty). On error the headers are left untouched.
    pub fn apply(
        &self,
        headers: &mut HeaderMap,
        input: &RewriteInput<'_>,
    ) -> Result<(String, Option<String>), TransformError> {
        let path = match &self.path {
            Some(template) => rewrite_path(input.route, template, input.captures)?,
            None => input.path.to_owned(),
        };
        let query = self.query.apply(input.query);
        self.headers.apply(headers);
        Ok((path, query))
    }
}

// === impl ResponseTransform ===

impl ResponseTransform {
    /// Checks every header entry; `field_prefix` is where this transform sits in the spec
    /// (`spec.response`).
    pub fn validate(&self, field_prefix: &str) -> Result<(), SpecError> {
        self.headers.validate(&format!("{field_prefix}.headers"))
    }

    /// Applies the header operations to the response headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        self.headers.apply(headers);
    }
}

// === impl HeaderOps ===

impl HeaderOps {
    /// Applies remove, rename, set and add, in that order. Entries that validation would
    /// refuse (invalid or proxy-managed names, invalid values) are skipped.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            if let Some(name) = transformable_header_name(name) {
                headers.remove(name);
            }
        }

        // Take every renamed header out first, then put the values back under their new
        // names, so that chained renames (a -> b, b -> c) each move the original values.
        let mut moved: Vec<(HeaderName, Vec<HeaderValue>)> = Vec::new();
        for (from, to) in &self.rename {
            let (Some(from), Some(to)) = (
                transformable_header_name(from),
                transformable_header_name(to),
            ) else {
                continue;
            };
            if from == to || !headers.contains_key(&from) {
                continue;
            }
            let values: Vec<HeaderValue> = headers.get_all(&from).iter().cloned().collect();
            headers.remove(&from);
            moved.push((to, values));
        }
        for (to, values) in moved {
            headers.remove(&to);
            for value in values {
                headers.append(&to, value);
            }
        }

        for (name, value) in &self.set {
            if let Some((name, value)) = transformable_header(name, value) {
                headers.insert(name, value);
            }
        }
        for (name, value) in &self.add {
            if let Some((name, value)) = transformable_header(name, value) {
                headers.append(name, value);
            }
        }
    }

    /// `field_prefix` is e.g. `spec.request.headers`.
    fn validate(&self, field_prefix: &str) -> Result<(), SpecError> {
        let keyed_field =
            |op: &str, key: &str| format!("{field_prefix}.{op}.{}", key.escape_debug());

        for (index, name) in self.remove.iter().enumerate() {
            validate_header_name(name)
                .map_err(|m| SpecError::new(format!("{field_prefix}.remove[{index}]"), m))?;
        }

        let mut rename_targets = HashSet::new();
        for (from, to) in &self.rename {
            let field = keyed_field("rename", from);
            let from_name =
                validate_header_name(from).map_err(|m| SpecError::new(field.clone(), m))?;
            let to_name = validate_header_name(to)
                .map_err(|m| SpecError::new(field.clone(), format!("new name: {m}")))?;
            if from_name == to_name {
                return Err(SpecError::new(
                    field,
                    format!(
                        "renaming {from:?} to {to:?} has no effect (header names are \
                         case-insensitive); remove this entry"
                    ),
                ));
            }
            if !rename_targets.insert(to_name) {
                return Err(SpecError::new(
                    field,
                    format!(
                        "more than one header is renamed to {to:?}; rename at most one header \
                         to each name"
                    ),
                ));
            }
        }
        reject_case_insensitive_duplicates(self.rename.keys(), |key| keyed_field("rename", key))?;

        for (op, entries) in [("set", &self.set), ("add", &self.add)] {
            for (name, value) in entries {
                let field = keyed_field(op, name);
                validate_header_name(name).map_err(|m| SpecError::new(field.clone(), m))?;
                validate_header_value(name, value).map_err(|m| SpecError::new(field, m))?;
            }
        }
        reject_case_insensitive_duplicates(self.set.keys(), |key| keyed_field("set", key))
    }
}

/// Refuses two keys that name the same header in different case (`X-A` and `x-a`), since
/// which of them wins would depend on how the keys sort.
fn reject_case_insensitive_duplicates<'k>(
    keys: impl Iterator<Item = &'k String>,
    field_of: impl Fn(&str) -> String,
) -> Result<(), SpecError> {
    let mut seen = HashSet::new();
    for key in keys {
        if !seen.insert(key.to_ascii_lowercase()) {
            return Err(SpecError::new(
                field_of(key),
                format!(
                    "header {key:?} is listed more than once (header names are case-insensitive); \
                     keep one entry"
                ),
            ));
        }
    }
    Ok(())
}

/// True for the characters that end a header line or a C string.
fn is_line_breaking(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\0')
}

fn validate_header_name(name: &str) -> Result<HeaderName, String> {
    if name.contains(is_line_breaking) {
        return Err(format!(
            "header name {name:?} contains CR, LF or NUL, which would allow header injection \
             (a forged header line); remove the line break"
        ));
    }
    let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        format!(
            "{name:?} is not a valid header name; use letters, digits and \
             !#$%&'*+-.^_`|~ only"
        )
    })?;
    if PROXY_MANAGED_HEADERS.contains(&parsed.as_str()) {
        return Err(format!(
            "header {name:?} frames or routes the message and is managed by the proxy; \
             transforms may not touch {}",
            PROXY_MANAGED_HEADERS.join(", ")
        ));
    }
    Ok(parsed)
}

fn validate_header_value(name: &str, value: &str) -> Result<HeaderValue, String> {
    if value.contains(is_line_breaking) {
        return Err(format!(
            "the value of header {name:?} contains CR, LF or NUL, which would allow header \
             injection (a forged header line or a split response); remove the line break"
        ));
    }
    HeaderValue::from_str(value).map_err(|_| {
        format!(
            "the value of header {name:?} contains a control character; only visible \
             characters, spaces and tabs are allowed"
        )
    })
}

/// The parsed name, or `None` when validation would refuse it.
fn transformable_header_name(name: &str) -> Option<HeaderName> {
    validate_header_name(name).ok()
}

/// The parsed name and value, or `None` when validation would refuse either.
fn transformable_header(name: &str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    Some((
        validate_header_name(name).ok()?,
        validate_header_value(name, value).ok()?,
    ))
}

// === impl QueryOps ===

/// Characters of a query key or value that are encoded: all but RFC 3986 unreserved ones.
const QUERY_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl QueryOps {
    fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Removes, then adds; parameters left alone keep their order and their exact spelling.
    fn apply(&self, query: Option<&str>) -> Option<String> {
        if self.is_empty() {
            return query.filter(|q| !q.is_empty()).map(str::to_owned);
        }
        let mut out = String::with_capacity(query.map_or(0, str::len) + 32);
        for param in query.unwrap_or_default().split('&') {
            if param.is_empty() {
                continue;
            }
            if !self.remove.is_empty() {
                let raw_key = param.split_once('=').map_or(param, |(key, _)| key);
                let key = decode_query_component(raw_key);
                if self.remove.iter().any(|removed| *removed == key) {
                    continue;
                }
            }
            push_query_separator(&mut out);
            out.push_str(param);
        }
        for (key, value) in &self.add {
            push_query_separator(&mut out);
            out.extend(utf8_percent_encode(key, QUERY_COMPONENT));
            out.push('=');
            out.extend(utf8_percent_encode(value, QUERY_COMPONENT));
        }
        (!out.is_empty()).then_some(out)
    }

    /// `field_prefix` is e.g. `spec.request.query`.
    fn validate(&self, field_prefix: &str) -> Result<(), SpecError> {
        for (index, key) in self.remove.iter().enumerate() {
            validate_query_text("key", key)
                .map_err(|m| SpecError::new(format!("{field_prefix}.remove[{index}]"), m))?;
        }
        for (key, value) in &self.add {
            let field = format!("{field_prefix}.add.{}", key.escape_debug());
            validate_query_text("key", key).map_err(|m| SpecError::new(field.clone(), m))?;
            validate_query_text("value", value).map_err(|m| SpecError::new(field, m))?;
        }
        Ok(())
    }
}

fn validate_query_text(what: &str, text: &str) -> Result<(), String> {
    if what == "key" && text.is_empty() {
        return Err("a query parameter key must not be empty".to_owned());
    }
    if text.contains(is_line_breaking) {
        return Err(format!(
            "query {what} {text:?} contains CR, LF or NUL, which would allow request or header \
             injection; remove the line break"
        ));
    }
    Ok(())
}

fn push_query_separator(out: &mut String) {
    if !out.is_empty() {
        out.push('&');
    }
}

/// Decodes `+` as space and `%XX` escapes (invalid UTF-8 becomes U+FFFD), as the router does.
fn decode_query_component(raw: &str) -> Cow<'_, str> {
    if !raw.contains(['+', '%']) {
        return Cow::Borrowed(raw);
    }
    let spaced = raw.replace('+', " ");
    Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
}

// === Path templates ===

/// One piece of a path template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TemplatePiece<'t> {
    /// Text copied as it is (`$$` yields a literal `$`).
    Literal(&'t str),
    /// `$1`..`$9`.
    NumberedCapture(usize),
    /// `${name}`.
    NamedCapture(&'t str),
}

/// Splits `template` into pieces, calling `on_piece` for each in order; errors describe the
/// first malformed `$` reference.
fn parse_template<'t>(
    template: &'t str,
    mut on_piece: impl FnMut(TemplatePiece<'t>),
) -> Result<(), String> {
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        if dollar > 0 {
            on_piece(TemplatePiece::Literal(&rest[..dollar]));
        }
        let after = &rest[dollar + 1..];
        let mut chars = after.chars();
        match chars.next() {
            Some('$') => {
                on_piece(TemplatePiece::Literal("$"));
                rest = &after[1..];
            }
            Some(digit @ '1'..='9') => {
                // The match arm guarantees an ASCII digit.
                let index = usize::from(digit as u8 - b'0');
                on_piece(TemplatePiece::NumberedCapture(index));
                rest = &after[1..];
            }
            Some('{') => {
                let Some(close) = after.find('}') else {
                    return Err("'${' has no closing '}'".to_owned());
                };
                let name = &after[1..close];
                if !is_capture_name(name) {
                    return Err(format!(
                        "'${{{name}}}' is not a capture reference: a name starts with a letter \
                         or '_' and holds only letters, digits and '_'"
                    ));
                }
                on_piece(TemplatePiece::NamedCapture(name));
                rest = &after[close + 1..];
            }
            _ => {
                return Err(
                    "'$' must be followed by a digit 1-9 ($1), by {name} (${name}) or by '$' \
                     ($$ is a literal '$')"
                        .to_owned(),
                );
            }
        }
    }
    if !rest.is_empty() {
        on_piece(TemplatePiece::Literal(rest));
    }
    Ok(())
}

fn is_capture_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn validate_path_template(template: &str) -> Result<(), String> {
    if template.contains(is_line_breaking) {
        return Err(format!(
            "path template {template:?} contains CR, LF or NUL, which would allow request or \
             header injection; remove the line break"
        ));
    }
    if !template.starts_with('/') {
        return Err(format!("path template {template:?} must start with '/'"));
    }
    if let Some(bad) = template
        .chars()
        .find(|&c| matches!(c, ' ' | '?' | '#') || c.is_control())
    {
        return Err(format!(
            "path template {template:?} contains {bad:?}; a path may not hold spaces, control \
             characters, '?' (use query.add) or '#'"
        ));
    }
    if template.split('/').any(is_dot_segment) {
        return Err(format!(
            "path template {template:?} has a '.' or '..' segment; write the path it stands for"
        ));
    }
    parse_template(template, |_| ())
        .map_err(|reason| format!("path template {template:?}: {reason}"))
}

/// Expands `template` with `captures` and brings the result to a safe form (see the module
/// docs, "Hardening").
fn rewrite_path(
    route: &str,
    template: &str,
    captures: &[PathCapture<'_>],
) -> Result<String, TransformError> {
    let mut expanded = String::with_capacity(template.len() + 32);
    parse_template(template, |piece| {
        let text = match piece {
            TemplatePiece::Literal(text) => Some(text),
            TemplatePiece::NumberedCapture(index) => captures
                .iter()
                .find(|capture| capture.index == index)
                .map(|capture| capture.value.as_str()),
            TemplatePiece::NamedCapture(name) => captures
                .iter()
                .find(|capture| capture.name == Some(name))
                .map(|capture| capture.value.as_str()),
        };
        if let Some(text) = text {
            push_path_text(&mut expanded, text);
        }
    })
    .map_err(|reason| TransformError::InvalidTemplate {
        route: route.to_owned(),
        template: template.to_owned(),
        reason,
    })?;

    let path = collapse_slashes(&expanded);
    if !path.starts_with('/') {
        return Err(TransformError::NotAbsolute {
            route: route.to_owned(),
            template: template.to_owned(),
            path,
        });
    }
    if path.split('/').any(is_dot_segment) {
        return Err(TransformError::DotSegment {
            route: route.to_owned(),
            template: template.to_owned(),
            path,
        });
    }
    Ok(path)
}

/// Appends `text` to a path, percent-encoding every byte that may not appear in a path
/// (RFC 3986 `pchar` and `/` stay; `%XX` escapes stay; a `%` not starting one becomes `%25`).
fn push_path_text(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        let starts_escape = byte == b'%'
            && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
        if starts_escape {
            out.push_str(&text[i..i + 3]);
            i += 3;
            continue;
        }
        if is_path_byte(byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        i += 1;
    }
}

/// RFC 3986 `pchar` (without escapes) plus `/`.
fn is_path_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

fn collapse_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// `.` or `..`, also spelled with `%2e`.
fn is_dot_segment(segment: &str) -> bool {
    if segment.len() > 6 || segment.is_empty() {
        return false;
    }
    matches!(
        segment.to_ascii_lowercase().as_str(),
        "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e."
    )
}
