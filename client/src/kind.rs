//! Resource kind names: turns what a user types (`services`, `route`, `api-keys`) into the
//! canonical kind the admin API expects (`Service`, `Route`, `ApiKey`).

/// Every kind the admin API knows, spelled as the server expects it.
pub const KNOWN_KINDS: [&str; 15] = [
    "Service",
    "Route",
    "Certificate",
    "JwtProvider",
    "Consumer",
    "Team",
    "ApiKey",
    "LogRedaction",
    "RateLimit",
    "ConcurrencyLimit",
    "Provider",
    "Model",
    "PromptTemplate",
    "ModelPrice",
    "Budget",
];

/// Returns the canonical spelling of a kind.
///
/// Matching is case-insensitive, ignores `-` and `_` (`api-key`, `rate_limit`) and accepts
/// the plural with a trailing `s` or `es`. A kind that matches nothing is returned with its
/// first letter capitalised, so the server rejects it by the name the user wrote.
pub fn canonical_kind(typed: &str) -> String {
    let typed = typed.trim();
    let folded: String = typed
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect();
    for known in KNOWN_KINDS {
        let singular = known.to_lowercase();
        if folded == singular
            || folded == format!("{singular}s")
            || folded == format!("{singular}es")
        {
            return known.to_string();
        }
    }
    capitalise(typed)
}

fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plural_lowercase_kind_becomes_canonical_singular() {
        assert_eq!(canonical_kind("services"), "Service");
        assert_eq!(canonical_kind("routes"), "Route");
        assert_eq!(canonical_kind("budgets"), "Budget");
    }

    #[test]
    fn kind_matching_ignores_case() {
        assert_eq!(canonical_kind("service"), "Service");
        assert_eq!(canonical_kind("Service"), "Service");
        assert_eq!(canonical_kind("SERVICE"), "Service");
        assert_eq!(canonical_kind("apikey"), "ApiKey");
        assert_eq!(canonical_kind("RATELIMITS"), "RateLimit");
    }

    #[test]
    fn kind_matching_ignores_dashes_and_underscores() {
        assert_eq!(canonical_kind("api-keys"), "ApiKey");
        assert_eq!(canonical_kind("rate_limit"), "RateLimit");
    }

    #[test]
    fn every_known_kind_is_its_own_canonical_form() {
        for kind in KNOWN_KINDS {
            assert_eq!(canonical_kind(kind), kind);
            assert_eq!(canonical_kind(&format!("{kind}s")), kind);
        }
    }

    #[test]
    fn unknown_kind_passes_through_capitalised() {
        assert_eq!(canonical_kind("widget"), "Widget");
        assert_eq!(canonical_kind("gadgets"), "Gadgets");
        assert_eq!(canonical_kind(""), "");
    }
}
