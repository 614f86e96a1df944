//! Passwords named by the configuration (environment variables, files), read when it is loaded.

use super::Config;

impl Config {
    /// Client users and their passwords: `default` from `listen.password_env`, then
    /// `listen.users`. Empty: clients need no password.
    pub fn credentials(&self) -> Result<Vec<(String, String)>, (&'static str, String)> {
        let mut out = Vec::new();
        if !self.listen.password_env.is_empty() {
            out.push(("default".to_owned(), env_password("listen.password_env", &self.listen.password_env)?));
        }
        for user in &self.listen.users {
            if user.name.is_empty() || user.name.contains(char::is_whitespace) {
                return Err(("listen.users", format!("{:?} is not a user name", user.name)));
            }
            if out.iter().any(|(name, _)| *name == user.name) {
                return Err(("listen.users", format!("user {:?} is defined twice", user.name)));
            }
            let password = match (&user.password_env, &user.password_file) {
                (Some(var), None) => env_password("listen.users.password_env", var)?,
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map(|text| text.trim_end_matches(['\r', '\n']).to_owned())
                    .map_err(|e| ("listen.users.password_file", format!("{}: {e}", path.display())))?,
                _ => {
                    let message = format!("user {:?} needs exactly one of password_env, password_file", user.name);
                    return Err(("listen.users", message));
                }
            };
            out.push((user.name.clone(), password));
        }
        Ok(out)
    }

    /// The upstream password: `upstream.password`, else from `upstream.password_env`.
    pub fn upstream_password(&self) -> Result<Option<String>, (&'static str, String)> {
        let up = &self.upstream;
        written_or_env(("upstream.password", &up.password), ("upstream.password_env", &up.password_env))
    }

    /// The sentinels' password (`sentinel_password` or `sentinel_password_env`), if any.
    pub fn sentinel_password(&self) -> Result<Option<String>, (&'static str, String)> {
        let up = &self.upstream;
        written_or_env(
            ("upstream.sentinel_password", &up.sentinel_password),
            ("upstream.sentinel_password_env", &up.sentinel_password_env),
        )
    }

    /// The admin password, read from `admin.password_env` (`None` when not configured).
    pub fn admin_password(&self) -> Result<Option<String>, (&'static str, String)> {
        let name = &self.admin.password_env;
        if name.is_empty() {
            return Ok(None);
        }
        env_password("admin.password_env", name).map(Some)
    }
}

/// A password written in the file, or read from the environment variable the other key names
/// (one or the other, or neither).
fn written_or_env(
    (key, written): (&'static str, &str),
    (env_key, var): (&'static str, &str),
) -> Result<Option<String>, (&'static str, String)> {
    match (written.is_empty(), var.is_empty()) {
        (true, true) => Ok(None),
        (false, true) => Ok(Some(written.to_owned())),
        (true, false) => env_password(env_key, var).map(Some),
        (false, false) => {
            let short = |k: &str| k.rsplit('.').next().unwrap_or(k).to_owned();
            Err((key, format!("set either {} or {}, not both", short(key), short(env_key))))
        }
    }
}

fn env_password(key: &'static str, var: &str) -> Result<String, (&'static str, String)> {
    match std::env::var(var) {
        Ok(password) if !password.is_empty() => Ok(password),
        _ => Err((key, format!("environment variable {var} is not set (or empty)"))),
    }
}
