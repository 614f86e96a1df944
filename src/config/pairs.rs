//! The configuration as `section.key` / value pairs: `PROXY CONFIG GET`, and what a reload
//! compares.

use super::Config;

impl Config {
    /// The configuration flattened to `section.key` (rules as `rule.N.key`) and its value as
    /// written in proxy.toml.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Ok(value) = toml::Value::try_from(self) {
            flatten("", &value, &mut out);
        }
        out
    }
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
    let join = |key: &str| if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") };
    match value {
        toml::Value::Table(table) => table.iter().for_each(|(k, v)| flatten(&join(k), v, out)),
        toml::Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| flatten(&join(&i.to_string()), v, out)),
        // Passwords themselves are not shown (their env/file sources are).
        toml::Value::String(_) if prefix.ends_with("password") => out.push((prefix.to_owned(), "(hidden)".into())),
        toml::Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_flattens_to_named_keys() {
        let text = "[cache]\nmax_memory = \"1MiB\"\n[[rule]]\npattern = \"a:*\"\ncache = \"none\"\n";
        let config = Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        let pairs = config.pairs();
        let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("cache.max_memory"), Some("1MiB"));
        assert_eq!(get("rule.0.pattern"), Some("a:*"));
        assert_eq!(get("rule.0.cache"), Some("none"));
        assert_eq!(get("upstream.connections"), Some("4"));
        assert_eq!(get("breaker.failure_rate"), Some("0.5"));
    }
}
