//! Route matching: compiles the configured routes into per-host indexes once per config
//! snapshot, and finds the most specific route for a request without scanning every route.
//!
//! # Where the data comes from, what goes out
//! The snapshot builder calls [`Router::new`] with every [`RouteRule`] whenever the config
//! changes; the request path calls [`normalize_path`] on the raw request path (a bad path is
//! a 400, never a match) and then [`Router::find`], which returns the winning rule and what the
//! later phases need from the match (pattern index, matched prefix length, regex captures).
//! Per request nothing here awaits or locks; it allocates only to lowercase a mixed-case Host,
//! to decode the query when a candidate has query conditions, and for regex captures.
//!
//! # Matching
//! A rule matches only when **all** of its conditions hold:
//! - **hosts** (any of them; empty = any host). Case-insensitive; the port of the Host header
//!   and one trailing `.` are ignored. `*.example.com` matches one or more leading labels
//!   (`a.example.com`, `a.b.example.com`) but not `example.com`. A request without a Host
//!   matches only rules without hosts.
//! - **paths** (any of them; empty = any path), against the *normalised* path:
//!   - `Prefix("/api")` is segment-wise: it matches `/api`, `/api/` and `/api/x`, not `/apix`.
//!     `Prefix("/api/")` matches `/api/` and `/api/x`, not `/api`. `Prefix("/")` matches all.
//!   - `Exact("/api")` matches `/api` only.
//!   - `Regex(r)` is searched (not implicitly anchored: write `^` and `$`) in the normalised
//!     path, where unreserved characters are decoded and other escapes are in uppercase hex.
//!
//!   Prefix and exact patterns are normalised with [`normalize_path`] when compiled, so
//!   `Prefix("/a/./b")` is `/a/b` and `Exact("/caf%c3%a9")` matches the request path
//!   `/caf%C3%A9`.
//! - **methods** (any of them; empty = any): exact, case-sensitive (`HEAD` is not `GET`).
//! - **headers**: every listed header must have a field line whose value equals one of the
//!   listed values, byte for byte (no list splitting on `,`). An empty value list means "the
//!   header is present". Header names are case-insensitive.
//! - **query**: every listed parameter must occur with one of the listed values, compared after
//!   decoding (`%XX`, and `+` as space). An empty value list means "the parameter is present".
//!
//! # Specificity: which matching rule wins
//! Rules are compared on these keys in order; the first key that differs decides:
//! 1. **Host**: exact host > wildcard host > no host condition. Between wildcards, the longer
//!    suffix wins (`*.b.example.com` > `*.example.com`).
//! 2. **Path**: exact > regex > prefix > no path condition. Between prefixes, the longer
//!    (normalised) prefix wins, so `/api/` > `/api` > `/`. Regexes tie with each other.
//! 3. **Conditions**: more conditions win, counting 1 for a method list, 1 per header and 1 per
//!    query parameter.
//! 4. **Priority**: the higher [`RouteRule::priority`] wins.
//! 5. **Name**: the lexicographically smaller name wins (names are unique, so this is total).
//!
//! When one rule matches through several of its hosts or paths, the most specific pair
//! counts; among its equally specific paths, the one listed first is reported.
//!
//! # How `find` avoids a linear scan
//! Each (rule, host, path) combination is an entry in one [`HostBucket`]: a map of exact
//! hosts, a map of wildcard suffixes (`.example.com`) and one bucket for rules without hosts.
//! `find` visits the buckets in host-specificity order (the exact host, then each wildcard
//! suffix of the host from longest to shortest, then the any-host bucket) and stops at the
//! first bucket that yields a match. Within a bucket it tries, in path-specificity order:
//! one hash lookup of the exact path, one [`RegexSet`] pass over the bucket's regexes, a walk
//! of a segment trie holding the prefixes (deepest node first), and the rules without paths.
//! Each of those candidate lists is pre-sorted by keys 3–5, so the first candidate whose
//! method, header and query conditions hold is the winner. Work per request grows with the
//! path's depth, the host's labels, the candidates sharing one path and the size of the
//! visited buckets' regex sets, not with the number of routes.
//!
//! **Invariant** (enforced by [`Router::new`], relied on by `find`): a bucket's candidate
//! lists are each sorted by specificity keys 3–5, and every entry in a list has the same host
//! and path specificity (keys 1 and 2). That is what lets `find` return the first candidate
//! whose conditions hold.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use hyper::header::HeaderName;
use hyper::HeaderMap;
use regex::{Regex, RegexSet};

#[cfg(test)]
mod tests;

// === Inputs ===

/// One route as configured: the conditions a request must meet, and how it ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    /// Route name, unique among the rules given to one [`Router`].
    pub name: String,
    /// `api.example.com` or `*.example.com` (one or more leading labels); empty = any host.
    /// Case-insensitive; must not carry a port.
    pub hosts: Vec<String>,
    /// Empty = any path.
    pub paths: Vec<PathPattern>,
    /// Uppercase HTTP methods; empty = any.
    pub methods: Vec<String>,
    /// Header name -> accepted exact values (case-sensitive); every listed header must match.
    pub headers: Vec<(String, Vec<String>)>,
    /// Query parameter -> accepted values (after decoding); every listed parameter must match.
    pub query: Vec<(String, Vec<String>)>,
    /// Breaks ties between equally specific rules; higher wins.
    pub priority: i32,
}

/// A path condition. See the module documentation for the exact semantics of each kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// Segment-wise prefix: `/api` matches `/api` and `/api/x`, not `/apix`.
    Prefix(String),
    /// The whole normalised path.
    Exact(String),
    /// A `regex` crate expression searched in the normalised path.
    Regex(String),
}

/// What `find` needs from a request. `path` must already be normalised by [`normalize_path`].
#[derive(Debug, Clone, Copy)]
pub struct MatchInput<'r> {
    pub method: &'r str,
    /// The Host header (or `:authority`), port and case as received.
    pub host: Option<&'r str>,
    /// The normalised path, without the query.
    pub path: &'r str,
    /// The raw query string, without the `?`.
    pub query: Option<&'r str>,
    pub headers: &'r HeaderMap,
}

// === Outputs ===

/// The winning rule and what later phases (strip_prefix, rewrite) need from the match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    /// Index of the rule in the `Vec` given to [`Router::new`].
    pub rule_index: usize,
    pub rule: &'a RouteRule,
    /// Index into `rule.paths` of the pattern that matched; `None` when the rule has no paths.
    pub path_pattern: Option<usize>,
    /// Bytes at the start of the normalised path that the pattern consumed: the prefix length
    /// for a prefix, the whole path for an exact path, the end of the match for a regex whose
    /// match starts at 0 (else 0), and 0 for a rule without paths.
    pub matched_prefix_len: usize,
    /// Capture groups 1.. of a regex match that took part in the match; empty otherwise.
    pub captures: Vec<PathCapture<'a>>,
}

/// One capture group of a regex path match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathCapture<'a> {
    /// Group number, as in `$1`.
    pub index: usize,
    /// Group name, as in `(?P<name>...)`.
    pub name: Option<&'a str>,
    pub value: String,
}

/// A rule set that cannot be compiled; names the route and the offending value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouterError {
    #[error("route #{index} has an empty name: every route needs a unique name")]
    EmptyName { index: usize },
    #[error("route \"{route}\": the name is used by more than one route; names must be unique")]
    DuplicateName { route: String },
    #[error("route \"{route}\": host \"{host}\": {reason}")]
    InvalidHost {
        route: String,
        host: String,
        reason: &'static str,
    },
    #[error("route \"{route}\": path {kind} \"{pattern}\": {reason}")]
    InvalidPath {
        route: String,
        kind: &'static str,
        pattern: String,
        reason: String,
    },
    #[error("route \"{route}\": path regex \"{pattern}\": {cause}")]
    InvalidRegex {
        route: String,
        pattern: String,
        cause: regex::Error,
    },
    #[error("route \"{route}\": method \"{method}\": {reason}")]
    InvalidMethod {
        route: String,
        method: String,
        reason: &'static str,
    },
    #[error("route \"{route}\": header \"{header}\": not a valid HTTP header name")]
    InvalidHeaderName { route: String, header: String },
    #[error("route \"{route}\": a query condition has an empty parameter name")]
    EmptyQueryName { route: String },
    #[error(
        "the regex paths of the routes for {hosts} do not compile together ({cause}); \
         use fewer or simpler regexes, or prefix paths"
    )]
    RegexSetTooLarge { hosts: String, cause: regex::Error },
}

/// Why a request path was refused before matching (the gateway answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path does not start with '/'")]
    NotAbsolute,
    #[error("encoded '/' in path")]
    EncodedSlash,
    #[error("encoded '\\' in path")]
    EncodedBackslash,
    #[error("'\\' in path")]
    Backslash,
    #[error("NUL or control character in path")]
    ControlCharacter,
    #[error("malformed percent-encoding in path: '%' must be followed by two hex digits")]
    MalformedPercentEncoding,
}

// === Path normalisation ===

/// Brings a raw request path to the one form routes are matched against, so that no spelling
/// of a path reaches a route that its canonical form would not (and vice versa):
/// - percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, including
///   `%2e`; the hex of every other escape is uppercased (`%3a` -> `%3A`);
/// - `%2F` (`/`) and `%5C` (`\`) are refused, as nginx and Envoy do by default, and so is a raw
///   `\` (some backends treat it as a separator);
/// - empty segments (`//`) and `.` segments are removed, `..` removes the segment before it
///   (never above the root: `/../a` is `/a`); a trailing `/` is kept, and a path ending in `.`
///   or `..` ends in `/`;
/// - raw bytes that may not appear in a path (space, `"`, `<`, non-ASCII, ...) are escaped;
/// - control characters, `%00`, malformed escapes and paths not starting with `/` (including
///   `*`) are refused; the empty path is `/`.
///
/// The result is a fixed point: normalising it again returns it unchanged. A path already in
/// normal form (most are) is returned as it is, without a copy.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let Some(after_root) = raw.strip_prefix('/') else {
        return if raw.is_empty() {
            Ok(Cow::Borrowed("/"))
        } else {
            Err(PathError::NotAbsolute)
        };
    };
    if is_normal(after_root) {
        return Ok(Cow::Borrowed(raw));
    }
    // `normalized` holds "/seg1/seg2" with no trailing slash ("" for the root); segments never
    // contain '/' because encoded slashes are refused, so `..` can pop back to the last '/'.
    let mut normalized = String::with_capacity(raw.len());
    let mut segment = String::new();
    let mut ends_with_slash = false;
    for raw_segment in after_root.split('/') {
        segment.clear();
        decode_path_segment(raw_segment, &mut segment)?;
        match segment.as_str() {
            "" | "." => ends_with_slash = true,
            ".." => {
                let parent_end = normalized.rfind('/').unwrap_or(0);
                normalized.truncate(parent_end);
                ends_with_slash = true;
            }
            decoded => {
                normalized.push('/');
                normalized.push_str(decoded);
                ends_with_slash = false;
            }
        }
    }
    if normalized.is_empty() || ends_with_slash {
        normalized.push('/');
    }
    Ok(Cow::Owned(normalized))
}

/// Whether a path (after its leading `/`) is already what [`normalize_path`] would make of
/// it: only characters kept as they are, no escapes, no empty segment but a trailing one,
/// and no `.` or `..` segment.
fn is_normal(after_root: &str) -> bool {
    let bytes = after_root.as_bytes();
    let mut segment_start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        if byte == b'/' {
            if matches!(&bytes[segment_start..i], b"" | b"." | b"..") {
                return false;
            }
            segment_start = i + 1;
        } else if !(is_unreserved(byte) || is_path_sub_delimiter(byte)) {
            return false;
        }
    }
    // The last segment may be empty (a trailing `/`, or the root itself).
    !matches!(&bytes[segment_start..], b"." | b"..")
}

/// Appends one path segment (between two `/`) in normal form to `out`.
fn decode_path_segment(raw_segment: &str, out: &mut String) -> Result<(), PathError> {
    let bytes = raw_segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            let escaped = match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(&high), Some(&low)) => match (hex_value(high), hex_value(low)) {
                    (Some(high), Some(low)) => high << 4 | low,
                    _ => return Err(PathError::MalformedPercentEncoding),
                },
                _ => return Err(PathError::MalformedPercentEncoding),
            };
            match escaped {
                b'/' => return Err(PathError::EncodedSlash),
                b'\\' => return Err(PathError::EncodedBackslash),
                0 => return Err(PathError::ControlCharacter),
                unreserved if is_unreserved(unreserved) => out.push(char::from(unreserved)),
                other => push_percent_escape(out, other),
            }
            i += 3;
            continue;
        }
        match byte {
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            b'\\' => return Err(PathError::Backslash),
            allowed if is_unreserved(allowed) || is_path_sub_delimiter(allowed) => {
                out.push(char::from(allowed));
            }
            other => push_percent_escape(out, other),
        }
        i += 1;
    }
    Ok(())
}

/// RFC 3986 unreserved: decoding these never changes what a path means.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` characters besides unreserved ones and escapes: kept as they are.
fn is_path_sub_delimiter(byte: u8) -> bool {
    matches!(
        byte,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@'
    )
}

fn push_percent_escape(out: &mut String, byte: u8) {
    const HEX_DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
    out.push(char::from(HEX_DIGITS[usize::from(byte & 0xf)]));
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

// === impl Router ===

/// The compiled routes of one config snapshot. Immutable; share it behind an `Arc`.
#[derive(Debug)]
pub struct Router {
    rules: Vec<RouteRule>,
    compiled: Vec<CompiledConditions>,
    exact_hosts: ConfigKeyedMap<HostBucket>,
    /// Keyed by the suffix with its leading dot: `*.example.com` is `.example.com`.
    wildcard_hosts: ConfigKeyedMap<HostBucket>,
    any_host: HostBucket,
}

/// What `find` needs of a rule beyond the `RouteRule` itself, prepared once.
#[derive(Debug)]
struct CompiledConditions {
    header_names: Vec<HeaderName>,
    /// One per entry of `rule.paths`: the compiled regex for `Regex` patterns.
    path_regexes: Vec<Option<Regex>>,
}

/// One (rule, path pattern) pair that can match inside a host bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    rule_index: usize,
    path_pattern: Option<usize>,
}

/// The rules reachable through one host key, indexed by path.
#[derive(Debug, Default)]
struct HostBucket {
    exact_paths: ConfigKeyedMap<Vec<Candidate>>,
    regex_paths: Option<RegexPaths>,
    prefix_paths: PrefixTrie,
    any_path: Vec<Candidate>,
}

/// All regex candidates of a bucket: `set` pattern `i` is the regex of `candidates[i]`.
#[derive(Debug)]
struct RegexPaths {
    set: RegexSet,
    candidates: Vec<Candidate>,
}

/// Prefix patterns by path segment. Node 0 is the root, i.e. the path `/`.
#[derive(Debug)]
struct PrefixTrie {
    nodes: Vec<PrefixNode>,
}

#[derive(Debug, Default)]
struct PrefixNode {
    children: ConfigKeyedMap<usize>,
    /// Patterns ending at this node without a trailing `/` (`/api`): they match when the path
    /// ends here or goes on with `/`.
    up_to_segment: Vec<Candidate>,
    /// Patterns ending at this node with a trailing `/` (`/api/`, `/`): they match when the
    /// path goes on with `/`.
    through_slash: Vec<Candidate>,
}

impl Default for PrefixTrie {
    fn default() -> PrefixTrie {
        PrefixTrie {
            nodes: vec![PrefixNode::default()],
        }
    }
}

/// A host condition in compiled form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum HostKey {
    Exact(String),
    WildcardSuffix(String),
    Any,
}

impl Router {
    /// Validates and compiles `rules`. Runs when a snapshot is built, never per request.
    pub fn new(rules: Vec<RouteRule>) -> Result<Router, RouterError> {
        let mut names = HashSet::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            if rule.name.is_empty() {
                return Err(RouterError::EmptyName { index });
            }
            if !names.insert(rule.name.as_str()) {
                return Err(RouterError::DuplicateName {
                    route: rule.name.clone(),
                });
            }
        }

        // Rank of each rule on specificity keys 3-5 (conditions, priority, name): 0 is best.
        let mut by_tie_keys: Vec<usize> = (0..rules.len()).collect();
        by_tie_keys.sort_by(|&a, &b| {
            let key = |r: &RouteRule| (Reverse(condition_count(r)), Reverse(r.priority));
            key(&rules[a])
                .cmp(&key(&rules[b]))
                .then_with(|| rules[a].name.cmp(&rules[b].name))
        });
        let mut tie_rank = vec![0; rules.len()];
        for (rank, &rule_index) in by_tie_keys.iter().enumerate() {
            tie_rank[rule_index] = rank;
        }

        let mut compiled = Vec::with_capacity(rules.len());
        let mut buckets: HashMap<HostKey, BucketBuilder> = HashMap::new();
        for (rule_index, rule) in rules.iter().enumerate() {
            compiled.push(compile_conditions(rule)?);
            let mut paths = Vec::with_capacity(rule.paths.len());
            for pattern in &rule.paths {
                paths.push(compile_path(rule, pattern)?);
            }
            let mut host_keys = Vec::with_capacity(rule.hosts.len().max(1));
            for host in &rule.hosts {
                host_keys.push(compile_host(rule, host)?);
            }
            if host_keys.is_empty() {
                host_keys.push(HostKey::Any);
            }
            host_keys.sort();
            host_keys.dedup();
            for host_key in host_keys {
                let bucket = buckets.entry(host_key).or_default();
                if paths.is_empty() {
                    bucket.any_path.push(Candidate {
                        rule_index,
                        path_pattern: None,
                    });
                }
                for (path_index, path) in paths.iter().enumerate() {
                    let candidate = Candidate {
                        rule_index,
                        path_pattern: Some(path_index),
                    };
                    match path {
                        CompiledPath::Exact(exact) => bucket
                            .exact_paths
                            .entry(exact.clone())
                            .or_default()
                            .push(candidate),
                        CompiledPath::Prefix(prefix) => {
                            bucket.prefix_paths.push((prefix.clone(), candidate))
                        }
                        CompiledPath::Regex(source) => {
                            bucket.regex_paths.push((source.clone(), candidate))
                        }
                    }
                }
            }
        }

        let mut router = Router {
            rules,
            compiled,
            exact_hosts: ConfigKeyedMap::default(),
            wildcard_hosts: ConfigKeyedMap::default(),
            any_host: HostBucket::default(),
        };
        for (host_key, builder) in buckets {
            let bucket = builder.build(&host_key, &tie_rank)?;
            match host_key {
                HostKey::Exact(host) => {
                    router.exact_hosts.insert(host.into(), bucket);
                }
                HostKey::WildcardSuffix(suffix) => {
                    router.wildcard_hosts.insert(suffix.into(), bucket);
                }
                HostKey::Any => router.any_host = bucket,
            }
        }
        Ok(router)
    }

    /// The rules this router was compiled from, in the order given to [`Router::new`].
    pub fn rules(&self) -> &[RouteRule] {
        &self.rules
    }

    /// The most specific rule whose every condition holds for `input`, if any.
    pub fn find<'a>(&'a self, input: &MatchInput<'_>) -> Option<RouteMatch<'a>> {
        let mut query = LazyQuery::new(input.query);
        if let Some(raw_host) = input.host {
            let host = request_host(raw_host);
            if let Some(bucket) = self.exact_hosts.get(host.as_ref()) {
                if let Some(found) = self.find_in_bucket(bucket, input, &mut query) {
                    return Some(found);
                }
            }
            if !self.wildcard_hosts.is_empty() {
                // Leftmost dot first = longest suffix first. A dot at 0 would leave no label
                // for the `*` to stand for.
                let dots = host
                    .bytes()
                    .enumerate()
                    .filter(|&(i, b)| b == b'.' && i > 0);
                for (dot, _) in dots {
                    if let Some(bucket) = self.wildcard_hosts.get(&host[dot..]) {
                        if let Some(found) = self.find_in_bucket(bucket, input, &mut query) {
                            return Some(found);
                        }
                    }
                }
            }
        }
        self.find_in_bucket(&self.any_host, input, &mut query)
    }

    /// The best candidate of one host bucket, trying path kinds in specificity order.
    fn find_in_bucket<'a>(
        &'a self,
        bucket: &HostBucket,
        input: &MatchInput<'_>,
        query: &mut LazyQuery<'_>,
    ) -> Option<RouteMatch<'a>> {
        let path = input.path;
        if let Some(candidates) = bucket.exact_paths.get(path) {
            for &candidate in candidates {
                if self.conditions_hold(candidate.rule_index, input, query) {
                    return Some(self.route_match(candidate, path.len(), Vec::new()));
                }
            }
        }
        if let Some(regex_paths) = &bucket.regex_paths {
            let matched = regex_paths.set.matches(path);
            for set_index in matched.iter() {
                let candidate = regex_paths.candidates[set_index];
                if !self.conditions_hold(candidate.rule_index, input, query) {
                    continue;
                }
                // The set and the rule's own regex come from the same source, so this only
                // fails if they disagree, and then the candidate is rightly skipped.
                if let Some(found) = self.regex_match(candidate, path) {
                    return Some(found);
                }
            }
        }
        if let Some(found) = self.find_prefix(&bucket.prefix_paths, 0, 0, input, query) {
            return Some(found);
        }
        for &candidate in &bucket.any_path {
            if self.conditions_hold(candidate.rule_index, input, query) {
                return Some(self.route_match(candidate, 0, Vec::new()));
            }
        }
        None
    }

    /// Walks the trie along the path's segments from `node_index` (whose prefix is
    /// `path[..matched]`) and returns the longest matching prefix whose conditions hold:
    /// deeper nodes first, and at each node `/api/` (longer) before `/api`.
    fn find_prefix<'a>(
        &'a self,
        trie: &PrefixTrie,
        node_index: usize,
        matched: usize,
        input: &MatchInput<'_>,
        query: &mut LazyQuery<'_>,
    ) -> Option<RouteMatch<'a>> {
        let path = input.path;
        let node = &trie.nodes[node_index];
        let rest = &path[matched..];
        let continues_with_slash = rest.starts_with('/');
        if continues_with_slash && !node.children.is_empty() {
            // A byte loop: segments are short, so memchr's setup costs more than it saves.
            let segment_end = rest.as_bytes()[1..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(path.len(), |i| matched + 1 + i);
            let segment = &path[matched + 1..segment_end];
            if let Some(&child) = node.children.get(segment) {
                if let Some(found) = self.find_prefix(trie, child, segment_end, input, query) {
                    return Some(found);
                }
            }
        }
        if continues_with_slash {
            for &candidate in &node.through_slash {
                if self.conditions_hold(candidate.rule_index, input, query) {
                    return Some(self.route_match(candidate, matched + 1, Vec::new()));
                }
            }
        }
        if rest.is_empty() || continues_with_slash {
            for &candidate in &node.up_to_segment {
                if self.conditions_hold(candidate.rule_index, input, query) {
                    return Some(self.route_match(candidate, matched, Vec::new()));
                }
            }
        }
        None
    }

    /// Runs the candidate's own regex for its captures (the set only says which matched).
    fn regex_match(&self, candidate: Candidate, path: &str) -> Option<RouteMatch<'_>> {
        let path_index = candidate.path_pattern?;
        let regex = self.compiled[candidate.rule_index].path_regexes[path_index].as_ref()?;
        let groups = regex.captures(path)?;
        let whole = groups.get(0)?;
        let matched_prefix_len = if whole.start() == 0 { whole.end() } else { 0 };
        let captures = regex
            .capture_names()
            .enumerate()
            .skip(1)
            .filter_map(|(index, name)| {
                groups.get(index).map(|group| PathCapture {
                    index,
                    name,
                    value: group.as_str().to_owned(),
                })
            })
            .collect();
        Some(self.route_match(candidate, matched_prefix_len, captures))
    }

    fn route_match<'a>(
        &'a self,
        candidate: Candidate,
        matched_prefix_len: usize,
        captures: Vec<PathCapture<'a>>,
    ) -> RouteMatch<'a> {
        RouteMatch {
            rule_index: candidate.rule_index,
            rule: &self.rules[candidate.rule_index],
            path_pattern: candidate.path_pattern,
            matched_prefix_len,
            captures,
        }
    }

    /// Method, header and query conditions (host and path were settled by the index).
    fn conditions_hold(
        &self,
        rule_index: usize,
        input: &MatchInput<'_>,
        query: &mut LazyQuery<'_>,
    ) -> bool {
        let rule = &self.rules[rule_index];
        if !rule.methods.is_empty() && !rule.methods.iter().any(|m| m == input.method) {
            return false;
        }
        let header_names = &self.compiled[rule_index].header_names;
        for (name, (_, accepted)) in header_names.iter().zip(&rule.headers) {
            let mut values = input.headers.get_all(name).iter();
            let present = if accepted.is_empty() {
                values.next().is_some()
            } else {
                values.any(|value| accepted.iter().any(|a| a.as_bytes() == value.as_bytes()))
            };
            if !present {
                return false;
            }
        }
        if !rule.query.is_empty() {
            let pairs = query.pairs();
            for (name, accepted) in &rule.query {
                let mut values = pairs.iter().filter(|(n, _)| n == name).map(|(_, v)| v);
                let present = if accepted.is_empty() {
                    values.next().is_some()
                } else {
                    values.any(|value| accepted.iter().any(|a| a == value))
                };
                if !present {
                    return false;
                }
            }
        }
        true
    }
}

/// Specificity key 3: 1 for a method list, 1 per header, 1 per query parameter.
fn condition_count(rule: &RouteRule) -> usize {
    usize::from(!rule.methods.is_empty()) + rule.headers.len() + rule.query.len()
}

/// The Host header as a bucket key: port and one trailing dot removed, ASCII lowercased.
fn request_host(raw: &str) -> Cow<'_, str> {
    let without_port = if raw.starts_with('[') {
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.bytes()
            .position(|b| b == b':')
            .map_or(raw, |colon| &raw[..colon])
    };
    let host = without_port.strip_suffix('.').unwrap_or(without_port);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

// === impl compiling ===

/// A path pattern in compiled form: prefixes and exact paths normalised.
enum CompiledPath {
    Prefix(String),
    Exact(String),
    Regex(String),
}

fn compile_path(rule: &RouteRule, pattern: &PathPattern) -> Result<CompiledPath, RouterError> {
    let invalid = |kind: &'static str, pattern: &str, reason: String| RouterError::InvalidPath {
        route: rule.name.clone(),
        kind,
        pattern: pattern.to_owned(),
        reason,
    };
    match pattern {
        PathPattern::Prefix(p) | PathPattern::Exact(p) => {
            let kind = if matches!(pattern, PathPattern::Prefix(_)) {
                "prefix"
            } else {
                "exact"
            };
            if !p.starts_with('/') {
                return Err(invalid(kind, p, "must start with '/'".to_owned()));
            }
            let normalized = normalize_path(p)
                .map_err(|e| invalid(kind, p, e.to_string()))?
                .into_owned();
            Ok(match pattern {
                PathPattern::Prefix(_) => CompiledPath::Prefix(normalized),
                _ => CompiledPath::Exact(normalized),
            })
        }
        PathPattern::Regex(source) => Ok(CompiledPath::Regex(source.clone())),
    }
}

fn compile_conditions(rule: &RouteRule) -> Result<CompiledConditions, RouterError> {
    for method in &rule.methods {
        let reason = if method.is_empty() {
            Some("a method cannot be empty")
        } else if method.bytes().any(|b| b.is_ascii_lowercase()) {
            Some("methods are case-sensitive and written in uppercase (GET, not get)")
        } else if !method.bytes().all(is_token_byte) {
            Some("not an HTTP method token")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(RouterError::InvalidMethod {
                route: rule.name.clone(),
                method: method.clone(),
                reason,
            });
        }
    }
    let mut header_names = Vec::with_capacity(rule.headers.len());
    for (header, _) in &rule.headers {
        let name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
            RouterError::InvalidHeaderName {
                route: rule.name.clone(),
                header: header.clone(),
            }
        })?;
        header_names.push(name);
    }
    if rule.query.iter().any(|(name, _)| name.is_empty()) {
        return Err(RouterError::EmptyQueryName {
            route: rule.name.clone(),
        });
    }
    let mut path_regexes = Vec::with_capacity(rule.paths.len());
    for pattern in &rule.paths {
        path_regexes.push(match pattern {
            PathPattern::Regex(source) => {
                Some(
                    Regex::new(source).map_err(|cause| RouterError::InvalidRegex {
                        route: rule.name.clone(),
                        pattern: source.clone(),
                        cause,
                    })?,
                )
            }
            PathPattern::Prefix(_) | PathPattern::Exact(_) => None,
        });
    }
    Ok(CompiledConditions {
        header_names,
        path_regexes,
    })
}

/// RFC 9110 `tchar`.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn compile_host(rule: &RouteRule, host: &str) -> Result<HostKey, RouterError> {
    let invalid = |reason| RouterError::InvalidHost {
        route: rule.name.clone(),
        host: host.to_owned(),
        reason,
    };
    let lowered = host.to_ascii_lowercase();
    let lowered = lowered.strip_suffix('.').unwrap_or(&lowered);
    let (is_wildcard, name) = match lowered.strip_prefix("*.") {
        Some(suffix) => (true, suffix),
        None => (false, lowered),
    };
    if name.is_empty() {
        return Err(invalid(
            "a host needs a name (for any host, leave hosts empty)",
        ));
    }
    if name.contains('*') {
        return Err(invalid(
            "'*' is allowed only as a whole leading label ('*.example.com')",
        ));
    }
    let is_ip_v6_literal = !is_wildcard && name.starts_with('[') && name.ends_with(']');
    if is_ip_v6_literal {
        if !name[1..name.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(invalid("not an IPv6 address literal"));
        }
    } else if name.contains(':') {
        return Err(invalid(
            "host patterns carry no port (the port of the Host header is ignored)",
        ));
    } else if name.starts_with('.')
        || name.ends_with('.')
        || name.contains("..")
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(invalid(
            "not a host name (letters, digits, '-', '_' and dots between labels)",
        ));
    }
    Ok(if is_wildcard {
        HostKey::WildcardSuffix(format!(".{name}"))
    } else {
        HostKey::Exact(name.to_owned())
    })
}

/// A host bucket while rules are being added; `build` sorts it into a [`HostBucket`].
#[derive(Default)]
struct BucketBuilder {
    exact_paths: HashMap<String, Vec<Candidate>>,
    regex_paths: Vec<(String, Candidate)>,
    prefix_paths: Vec<(String, Candidate)>,
    any_path: Vec<Candidate>,
}

impl BucketBuilder {
    /// Sorts every candidate list by specificity keys 3-5 (the module invariant) and
    /// compiles the bucket's regexes into one set.
    fn build(self, host_key: &HostKey, tie_rank: &[usize]) -> Result<HostBucket, RouterError> {
        let order = |c: &Candidate| (tie_rank[c.rule_index], c.path_pattern);
        let sorted = |mut candidates: Vec<Candidate>| {
            candidates.sort_by_key(order);
            candidates
        };

        let mut bucket = HostBucket {
            any_path: sorted(self.any_path),
            ..HostBucket::default()
        };
        for (path, candidates) in self.exact_paths {
            bucket.exact_paths.insert(path.into(), sorted(candidates));
        }

        let mut regex_paths = self.regex_paths;
        if !regex_paths.is_empty() {
            regex_paths.sort_by_key(|(_, c)| order(c));
            let set = RegexSet::new(regex_paths.iter().map(|(source, _)| source.as_str()))
                .map_err(|cause| RouterError::RegexSetTooLarge {
                    hosts: match host_key {
                        HostKey::Exact(host) => format!("host \"{host}\""),
                        HostKey::WildcardSuffix(suffix) => format!("host \"*{suffix}\""),
                        HostKey::Any => "any host".to_owned(),
                    },
                    cause,
                })?;
            bucket.regex_paths = Some(RegexPaths {
                set,
                candidates: regex_paths.into_iter().map(|(_, c)| c).collect(),
            });
        }

        let mut prefix_paths = self.prefix_paths;
        prefix_paths.sort_by_key(|(_, c)| order(c));
        for (prefix, candidate) in prefix_paths {
            bucket.prefix_paths.insert(&prefix, candidate);
        }
        Ok(bucket)
    }
}

impl PrefixTrie {
    /// Adds a normalised prefix; candidates must arrive in specificity order (keys 3-5).
    fn insert(&mut self, prefix: &str, candidate: Candidate) {
        let body = prefix.strip_prefix('/').unwrap_or(prefix);
        let (body, through_slash) = match body.strip_suffix('/') {
            Some(without_slash) => (without_slash, true),
            None => (body, body.is_empty()),
        };
        let mut node_index = 0;
        if !body.is_empty() {
            for segment in body.split('/') {
                node_index = match self.nodes[node_index].children.get(segment) {
                    Some(&child) => child,
                    None => {
                        let child = self.nodes.len();
                        self.nodes.push(PrefixNode::default());
                        self.nodes[node_index]
                            .children
                            .insert(segment.into(), child);
                        child
                    }
                };
            }
        }
        let node = &mut self.nodes[node_index];
        if through_slash {
            node.through_slash.push(candidate);
        } else {
            node.up_to_segment.push(candidate);
        }
    }
}

// === impl LazyQuery ===

/// The request's query parameters, decoded on first use: most rules have no query condition.
struct LazyQuery<'r> {
    raw: Option<&'r str>,
    decoded: Option<Vec<(Cow<'r, str>, Cow<'r, str>)>>,
}

impl<'r> LazyQuery<'r> {
    fn new(raw: Option<&'r str>) -> LazyQuery<'r> {
        LazyQuery { raw, decoded: None }
    }

    fn pairs(&mut self) -> &[(Cow<'r, str>, Cow<'r, str>)] {
        let raw = self.raw;
        self.decoded.get_or_insert_with(|| {
            raw.unwrap_or("")
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode_query_component(name), decode_query_component(value))
                })
                .collect()
        })
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; invalid UTF-8
/// becomes U+FFFD and a malformed escape stays as written.
fn decode_query_component(raw: &str) -> Cow<'_, str> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(raw);
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes[i] {
            b'%' => match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(&high), Some(&low)) => hex_value(high).zip(hex_value(low)),
                _ => None,
            },
            _ => None,
        };
        match (bytes[i], escaped) {
            (_, Some((high, low))) => {
                decoded.push(high << 4 | low);
                i += 3;
            }
            (b'+', None) => {
                decoded.push(b' ');
                i += 1;
            }
            (other, None) => {
                decoded.push(other);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&decoded).into_owned())
}

// === Hashing ===

/// Maps keyed by strings from the config, looked up with strings from requests.
///
/// The hash is FxHash (fast, not keyed). That is safe here because hash flooding needs the
/// attacker to choose the *keys in the table*; these tables are built from config only, so a
/// request string costs at most the longest probe sequence the config itself produced.
type ConfigKeyedMap<V> = HashMap<Box<str>, V, BuildHasherDefault<FxHasher>>;

/// The rustc hasher: one rotate, xor and multiply per 8 bytes.
#[derive(Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add_word(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add_word(u64::from_le_bytes(word));
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            let mut word = [0; 8];
            word[..tail.len()].copy_from_slice(tail);
            self.add_word(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add_word(u64::from(byte));
    }

    fn write_usize(&mut self, value: usize) {
        self.add_word(value as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}
