//! [`ServerUrl`]: where a server is and how to log in, with the password kept out of messages.

use std::fmt;
use std::path::Path;

use crate::DbError;

/// Default port of SwSQL, used when a URL names none.
pub const DEFAULT_PORT: u16 = 5002;

/// A server's address and login: `mysql://USER[:PASSWORD]@HOST[:PORT]`.
///
/// The password never appears in `Display` or `Debug` output (it is shown as `***`). The port
/// defaults to 5002, SwSQL's. Percent-escapes in the user and password are decoded, so a
/// password containing `@` or `:` can be written as `%40` / `%3A`.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Login user.
    pub user: String,
    password: Option<String>,
}

impl ServerUrl {
    /// Parses `mysql://USER[:PASSWORD]@HOST[:PORT]` (also accepts `mariadb://`).
    pub fn parse(text: &str) -> Result<Self, DbError> {
        let bad = |reason: &str| DbError::BadUrl {
            url: mask_password(text),
            reason: reason.to_string(),
        };
        let parsed = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
        if !matches!(parsed.scheme(), "mysql" | "mariadb") {
            return Err(bad("the scheme must be mysql://"));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let user = decode(parsed.username()).map_err(|_| bad("the user is not valid UTF-8"))?;
        if user.is_empty() {
            return Err(bad("no user"));
        }
        let password = match parsed.password() {
            Some(p) => Some(decode(p).map_err(|_| bad("the password is not valid UTF-8"))?),
            None => None,
        };
        if !matches!(parsed.path(), "" | "/") {
            return Err(bad("a database name is not expected"));
        }
        Ok(ServerUrl {
            host,
            port: parsed.port().unwrap_or(DEFAULT_PORT),
            user,
            password,
        })
    }

    /// The same server with `password` as the login password.
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The login password, if any. Callers must never print it.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// `host:port`, for messages and comparisons.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = if self.password.is_some() { ":***" } else { "" };
        write!(f, "mysql://{}{}@{}", self.user, secret, self.address())
    }
}

impl fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for ServerUrl {
    type Err = DbError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServerUrl::parse(s)
    }
}

/// Reads a password from the first line of `path` (trailing newline and carriage return removed).
pub fn read_password_file(path: &Path) -> Result<String, DbError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DbError::file("cannot read password file", path, e))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(DbError::file(
            "empty password file",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "the first line is empty"),
        ));
    }
    Ok(line.to_string())
}

fn decode(text: &str) -> Result<String, std::str::Utf8Error> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|c| c.into_owned())
}

/// Masks what looks like a password in a URL that failed to parse, for the error message.
fn mask_password(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, hostpart)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{hostpart}"),
            None => text.to_string(),
        },
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_masks() {
        let u = ServerUrl::parse("mysql://root:s3cr%40t+x@db1:3306").unwrap();
        assert_eq!(u.host, "db1");
        assert_eq!(u.port, 3306);
        assert_eq!(u.user, "root");
        assert_eq!(u.password(), Some("s3cr@t+x"));
        assert_eq!(u.to_string(), "mysql://root:***@db1:3306");
        assert!(!format!("{u:?}").contains("s3cr"));
    }

    #[test]
    fn port_defaults_to_swsql() {
        assert_eq!(
            ServerUrl::parse("mysql://root@10.0.0.1").unwrap().port,
            5002
        );
    }

    #[test]
    fn rejects_bad_input_without_leaking_the_password() {
        for bad in [
            "http://root@h",
            "mysql://h:1",
            "nonsense",
            "mysql://root:pw@:5",
            "mysql://u@h/db",
        ] {
            let err = ServerUrl::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("bad server URL"), "{err}");
        }
        let err = ServerUrl::parse("mysql://root:topsecret@h:notaport")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("topsecret"), "{err}");
    }
}
