//! docs/configuration.md cannot drift from the code: every flag and environment variable that
//! `konnect serve --help` prints must be documented there.

use std::collections::BTreeSet;
use std::process::Command;

fn serve_help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_konnect"))
        .args(["serve", "--help"])
        .output()
        .expect("the konnect binary runs");
    assert!(
        out.status.success(),
        "`konnect serve --help` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("help text is UTF-8")
}

fn configuration_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Every `<prefix><word>` in `text` (`--data-dir`, `KONNECT_DATA_DIR`): the prefix does not
/// continue a longer word, and the word starts with a letter or digit and runs on through
/// `[A-Za-z0-9_-]`.
fn words_starting_with(text: &str, prefix: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices(prefix) {
        let starts_word = at == 0 || !is_word_byte(bytes[at - 1]);
        let rest = at + prefix.len();
        if !starts_word || rest >= bytes.len() || !bytes[rest].is_ascii_alphanumeric() {
            continue;
        }
        let mut end = rest;
        while end < bytes.len() && is_word_byte(bytes[end]) {
            end += 1;
        }
        found.insert(text[at..end].trim_end_matches('-').to_string());
    }
    found
}

/// Whether `doc` names `word` as a whole word: `--log` is not documented by `--log-format`.
fn names(doc: &str, word: &str) -> bool {
    let bytes = doc.as_bytes();
    doc.match_indices(word).any(|(at, _)| {
        let end = at + word.len();
        (at == 0 || !is_word_byte(bytes[at - 1]))
            && (end == bytes.len() || !is_word_byte(bytes[end]))
    })
}

#[test]
fn every_flag_of_serve_help_is_documented_in_configuration_md() {
    let help = serve_help();
    let doc = configuration_md();
    let flags = words_starting_with(&help, "--");
    assert!(
        flags.contains("--node-id") && flags.contains("--peers"),
        "could not read the flags from `konnect serve --help`; found {flags:?} in:\n{help}"
    );
    let missing: Vec<&String> = flags.iter().filter(|f| !names(&doc, f)).collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not mention {missing:?}; document each with the words of \
         its doc comment in node/src/config.rs"
    );
}

#[test]
fn every_environment_variable_of_serve_help_is_documented_in_configuration_md() {
    let help = serve_help();
    let doc = configuration_md();
    let vars = words_starting_with(&help, "KONNECT_");
    assert!(
        vars.contains("KONNECT_NODE_ID"),
        "could not read the environment variables from `konnect serve --help`; found {vars:?}"
    );
    let missing: Vec<&String> = vars.iter().filter(|v| !names(&doc, v)).collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not mention {missing:?}"
    );
}

#[test]
fn a_flag_is_not_documented_by_a_longer_flag_that_starts_with_it() {
    assert!(names("`--log-format`, and `--log`.", "--log"));
    assert!(!names("`--log-format` only", "--log"));
    assert_eq!(
        words_starting_with("  --data-dir <DIR>  (see --dev) ---", "--"),
        BTreeSet::from(["--data-dir".to_string(), "--dev".to_string()])
    );
}
