use super::*;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("test.toml")).map_err(|e| e.to_string())
}

#[test]
fn the_shipped_proxy_toml_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
    let config = Config::load(&path).unwrap();
    assert_eq!(config.listen.address, "127.0.0.1:6380");
    assert_eq!(config.upstream.address, "127.0.0.1:6379");
}

#[test]
fn an_empty_file_means_the_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config.listen.max_request_size, ByteSize(512 << 20));
    assert_eq!(config.upstream.connections, 4);
}

#[test]
fn units_are_read() {
    let config = parse("[listen]\nmax_request_size = \"64KiB\"\n[upstream]\ncommand_timeout = \"250ms\"\n").unwrap();
    assert_eq!(config.listen.max_request_size, ByteSize(65_536));
    assert_eq!(config.upstream.command_timeout, Span(Duration::from_millis(250)));
}

#[test]
fn unknown_keys_are_named_with_file_and_line() {
    let err = parse("[listen]\naddress = \"127.0.0.1:1\"\nmax_clinets = 5\n").unwrap_err();
    assert!(err.starts_with("test.toml: "), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("max_clinets"), "{err}");
    let err = parse("[lisen]\n").unwrap_err();
    assert!(err.contains("lisen") && err.contains("line 1"), "{err}");
}

#[test]
fn bad_values_are_named() {
    let err = parse("[listen]\nmax_request_size = \"12XB\"\n").unwrap_err();
    assert!(err.contains("12XB") && err.contains("line 2"), "{err}");
    let err = parse("[upstream]\nconnections = 0\n").unwrap_err();
    assert_eq!(err, "test.toml: upstream.connections: 0 is out of range (1..=256)");
    let err = parse("[upstream]\naddress = \"localhost\"\n").unwrap_err();
    assert_eq!(err, "test.toml: upstream.address: \"localhost\" is not host:port");
    let err = parse("[upstream]\ncommand_timeout = \"0s\"\n").unwrap_err();
    assert_eq!(err, "test.toml: upstream.command_timeout: must be greater than 0s");
}

#[test]
fn default_ttl_may_not_exceed_max_ttl() {
    let err = parse("[default]\nmax_ttl = \"1h\"\n[[rule]]\npattern = \"s:*\"\ndefault_ttl = \"2h\"\n").unwrap_err();
    assert_eq!(
        err,
        "test.toml: rule.default_ttl: 2h exceeds max_ttl 1h (pattern \"s:*\"; both may come from [default])"
    );
    let err = parse("[default]\ndefault_ttl = \"2d\"\nmax_ttl = \"1d\"\n").unwrap_err();
    assert_eq!(err, "test.toml: default.default_ttl: 2d exceeds default.max_ttl 1d");
    // "0s" is no maximum; a rule may lift the inherited one.
    parse("[default]\nmax_ttl = \"1h\"\n[[rule]]\npattern = \"s:*\"\ndefault_ttl = \"2h\"\nmax_ttl = \"0s\"\n")
        .unwrap();
    let err = parse("[[rule]]\npattern = \"s:*\"\npersist = \"keep\"\n").unwrap_err();
    assert!(err.contains("keep") && err.contains("line 3"), "{err}");
}
