//! Parses the `--endpoint` list (`KONNECT_ENDPOINT`): comma-separated admin addresses, where a
//! bare `host:port` means `http://host:port` (`https://host:port` when konnectctl has `--ca`).

use crate::ClientError;

/// Splits a comma-separated endpoint list, trims each entry, drops empty ones and adds
/// `http://` to entries without a scheme. Fails when no endpoint is left.
pub fn parse_endpoint_list(list: &str) -> Result<Vec<String>, ClientError> {
    parse_endpoint_list_with_default_scheme(list, "http")
}

/// Like [`parse_endpoint_list`], adding `scheme://` (`http` or `https`) to bare entries.
pub fn parse_endpoint_list_with_default_scheme(
    list: &str,
    scheme: &str,
) -> Result<Vec<String>, ClientError> {
    let endpoints: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| with_default_scheme(entry, scheme))
        .collect();
    if endpoints.is_empty() {
        return Err(ClientError::NoEndpoints);
    }
    Ok(endpoints)
}

/// Adds `http://` to an address written without a scheme; keeps any trailing `/` out.
pub fn with_scheme(address: &str) -> String {
    with_default_scheme(address, "http")
}

/// Adds `scheme://` to an address written without a scheme; keeps any trailing `/` out.
pub fn with_default_scheme(address: &str, scheme: &str) -> String {
    let address = address.trim().trim_end_matches('/');
    if address.contains("://") {
        address.to_string()
    } else {
        format!("{scheme}://{address}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_host_port_gets_http_scheme() {
        assert_eq!(
            parse_endpoint_list("127.0.0.1:7201").expect("one endpoint"),
            vec!["http://127.0.0.1:7201"]
        );
    }

    #[test]
    fn comma_separated_list_keeps_order_and_existing_schemes() {
        assert_eq!(
            parse_endpoint_list("http://a:1, b:2 ,https://c:3/").expect("three endpoints"),
            vec!["http://a:1", "http://b:2", "https://c:3"]
        );
    }

    #[test]
    fn bare_entries_get_https_when_asked_and_explicit_schemes_stay() {
        assert_eq!(
            parse_endpoint_list_with_default_scheme("a:1,http://b:2", "https")
                .expect("two endpoints"),
            vec!["https://a:1", "http://b:2"]
        );
    }

    #[test]
    fn empty_entries_are_ignored() {
        assert_eq!(
            parse_endpoint_list(",a:1,,").expect("one endpoint"),
            vec!["http://a:1"]
        );
    }

    #[test]
    fn list_without_any_endpoint_is_an_error() {
        let error = parse_endpoint_list(" , ").expect_err("no endpoints");
        assert!(matches!(error, ClientError::NoEndpoints));
        assert!(error.to_string().contains("--endpoint"));
    }
}
