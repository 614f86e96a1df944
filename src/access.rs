//! Who may use the proxy and which commands they may not: client users and passwords
//! (`[listen] password_env` for `default`, `[listen] users`), and `[listen] deny_commands`.
//!
//! A client that must authenticate gets Redis's `-NOAUTH Authentication required.` for every
//! command but AUTH, HELLO ... AUTH, QUIT and RESET until it does. Each user has a number that
//! is part of every cached reply's identity: clients of different users never share replies.

use crate::config::Config;

#[derive(Debug, Default, Clone)]
pub struct Access {
    /// (name, password); a user's number is its index. Empty: no authentication.
    users: Vec<(String, String)>,
    /// Denied command names, uppercase.
    denied: Vec<Vec<u8>>,
}

/// The user a client is authenticated as (0 when the proxy has no users).
pub type UserId = u16;

impl Access {
    pub fn new(config: &Config) -> Result<Access, (&'static str, String)> {
        let users = config.credentials()?;
        if users.len() > usize::from(UserId::MAX) {
            return Err(("listen.users", format!("at most {} users", UserId::MAX)));
        }
        let denied = config.listen.deny_commands.iter().map(|c| c.to_ascii_uppercase().into_bytes()).collect();
        Ok(Access { users, denied })
    }

    /// The name of user `id`, when the proxy has users.
    pub fn user_name(&self, id: UserId) -> Option<&str> {
        self.users.get(usize::from(id)).map(|(name, _)| name.as_str())
    }

    /// Whether the proxy has a user of this name.
    pub fn knows(&self, name: &[u8]) -> bool {
        self.users.iter().any(|(n, _)| n.as_bytes() == name)
    }

    /// Clients must authenticate.
    pub fn required(&self) -> bool {
        !self.users.is_empty()
    }

    /// The user a new client starts as: none when it must authenticate.
    pub fn initial_user(&self) -> Option<UserId> {
        (!self.required()).then_some(0)
    }

    /// `AUTH [user] password`: the user's number when the pair is right.
    pub fn authenticate(&self, user: &[u8], password: &[u8]) -> Option<UserId> {
        let mut found = None;
        for (id, (name, expected)) in self.users.iter().enumerate() {
            // Every user's password is compared, so timing does not tell which names exist.
            let matches = constant_time_eq(password, expected.as_bytes());
            if name.as_bytes() == user && matches {
                found = Some(id as UserId);
            }
        }
        found
    }

    /// Whether `listen.deny_commands` lists anything (checked before looking at a name).
    pub fn denies_any(&self) -> bool {
        !self.denied.is_empty()
    }

    /// Whether command `name` is in `listen.deny_commands`.
    pub fn denied(&self, name: &[u8]) -> bool {
        !self.denied.is_empty() && self.denied.iter().any(|d| d.eq_ignore_ascii_case(name))
    }
}

/// Compares without returning early at the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn users_authenticate_by_name_and_password() {
        let dir = std::env::temp_dir().join(format!("nearcache-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ro.pw");
        std::fs::write(&file, "readonly-pw\n").unwrap();
        let text = format!(
            "[listen]\nusers = [{{ name = \"ro\", password_file = {:?} }}]\ndeny_commands = [\"flushall\", \"KEYS\"]\n",
            file.display().to_string()
        );
        let access = Access::new(&Config::parse(&text, Path::new("t.toml")).unwrap()).unwrap();
        assert!(access.required());
        assert_eq!(access.initial_user(), None);
        assert_eq!(access.authenticate(b"ro", b"readonly-pw"), Some(0));
        assert_eq!(access.authenticate(b"ro", b"readonly-pw\n"), None);
        assert_eq!(access.authenticate(b"default", b"readonly-pw"), None);
        assert!(access.denied(b"FlushAll") && access.denied(b"keys") && !access.denied(b"GET"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn passwords_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
    }

    #[test]
    fn without_users_everyone_is_default() {
        let access = Access::new(&Config::default()).unwrap();
        assert!(!access.required());
        assert_eq!(access.initial_user(), Some(0));
        assert!(!access.denied(b"FLUSHALL"));
    }

    #[test]
    fn a_user_needs_exactly_one_password_source() {
        let err = Config::parse("[listen]\nusers = [{ name = \"x\" }]\n", Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains("needs exactly one of password_env, password_file"), "{err}");
        let err =
            Config::parse("[listen]\npassword_env = \"NEARCACHE_NO_SUCH_VAR\"\n", Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains("environment variable NEARCACHE_NO_SUCH_VAR is not set"), "{err}");
    }
}
