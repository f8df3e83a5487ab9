//! Secrets on disk and in text: the data dir's private files (the generated
//! token secret, generated NATS credentials) and URLs with credentials in
//! them.
//!
//! A private file is written with `O_NOFOLLOW` (a symlink planted at its path
//! is an error, never followed to overwrite something else) and mode 0600
//! enforced on every write, not only at creation, and on every read of a
//! looser one (with a warning); the data dir is created 0700, and an
//! existing one others may enter is warned about at start. [`redact_url`] hides the user info of a URL before it reaches a log
//! line or an error text.
//!
//! Knows nothing of what the secrets protect: it stores, reads and hides them.

use std::path::Path;

use crate::config::{Config, NatsAuth, Secret};

/// The user of the auto-started nats-server (`nats_autostart`).
pub const CHILD_NATS_USER: &str = "herald";

/// File in the data dir holding the auto-started nats-server's password.
pub const CHILD_NATS_PASSWORD_FILE: &str = "nats_password";

/// Credentials for the nats-server `serve` starts itself: user
/// [`CHILD_NATS_USER`], the password in [`CHILD_NATS_PASSWORD_FILE`] of the
/// data dir, generated on first use. Other processes sharing that server
/// (edges) connect with `nats_user = herald` and that password.
pub fn child_nats_auth(config: &Config) -> std::io::Result<NatsAuth> {
    let (password, _) = load_or_generate(&config.data_dir.join(CHILD_NATS_PASSWORD_FILE))?;
    Ok(NatsAuth {
        user: Some(CHILD_NATS_USER.to_string()),
        password: Some(password),
        ..NatsAuth::default()
    })
}

/// Creates `dir` (and parents) with mode 0700 when missing; warns when an
/// existing one is readable or writable by group or others.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{:o}", mode & 0o777),
                "data_dir is accessible to other users; it holds secrets (chmod 700)"
            );
        }
        Ok(())
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Writes `text` to `path`: not through a symlink, mode 0600 whether the
/// file is new or not.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Reads a private file (not through a symlink), trimmed; `None` when it is
/// missing or empty. A file others may read is warned about and set to 0600.
pub fn read_private(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NOFOLLOW);
    }
    let mut f = match opts.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = f.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "secret file was accessible to other users; set to 0600 (rotate the secret if others read it)"
            );
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
    }
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    let s = s.trim();
    Ok((!s.is_empty()).then(|| s.to_string()))
}

/// The secret stored at `path`, or a new random one (256 bits, hex) stored
/// there. `true` when generated.
pub fn load_or_generate(path: &Path) -> std::io::Result<(Secret, bool)> {
    if let Some(s) = read_private(path)? {
        return Ok((Secret::new(s), false));
    }
    let secret = random_hex();
    write_private(path, &secret)?;
    Ok((Secret::new(secret), true))
}

/// 256 random bits as 64 hex digits.
pub fn random_hex() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// `url` with any user info (`user:password@`, `token@`) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let redacted = match rest[..authority_end].rfind('@') {
        Some(at) => format!("***@{}", &rest[at + 1..]),
        None => rest.to_string(),
    };
    match scheme {
        Some(s) => format!("{s}://{redacted}"),
        None => redacted,
    }
}

/// Credentials taken out of a URL's user info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlCredentials {
    /// `user:password@`
    UserPassword(String, String),
    /// `token@` (NATS reads a lone user as a token)
    Token(String),
}

/// A comma-separated URL list without user info, and the first URL's
/// credentials, if any: a client library then never holds them in a URL it
/// might log. Percent-escapes in the user info are decoded.
pub fn split_credentials(urls: &str) -> (String, Option<UrlCredentials>) {
    let mut found = None;
    let clean: Vec<String> = urls
        .split(',')
        .map(|u| {
            let u = u.trim();
            let (scheme, rest) = match u.split_once("://") {
                Some((s, r)) => (Some(s), r),
                None => (None, u),
            };
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let Some(at) = rest[..authority_end].rfind('@') else {
                return u.to_string();
            };
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            if found.is_none() {
                found = Some(match rest[..at].split_once(':') {
                    Some((user, password)) => {
                        UrlCredentials::UserPassword(decode(user), decode(password))
                    }
                    None => UrlCredentials::Token(decode(&rest[..at])),
                });
            }
            match scheme {
                Some(s) => format!("{s}://{}", &rest[at + 1..]),
                None => rest[at + 1..].to_string(),
            }
        })
        .collect();
    (clean.join(","), found)
}

/// Every URL in a comma-separated list redacted (NATS accepts a list).
pub fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|u| redact_url(u.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_hidden() {
        assert_eq!(
            redact_url("nats://herald:hunter2@10.0.0.1:4222"),
            "nats://***@10.0.0.1:4222"
        );
        assert_eq!(redact_url("nats://tok@h:1/x@y"), "nats://***@h:1/x@y");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
        assert_eq!(redact_url("a:b@h:4222"), "***@h:4222");
        assert_eq!(
            redact_urls("nats://a:b@h1:1, nats://h2:2"),
            "nats://***@h1:1,nats://h2:2"
        );
        assert_eq!(
            split_credentials("nats://a:p%40ss@h1:1,nats://h2:2"),
            (
                "nats://h1:1,nats://h2:2".to_string(),
                Some(UrlCredentials::UserPassword("a".into(), "p@ss".into()))
            )
        );
        assert_eq!(
            split_credentials("tls://tok@h:1/x@y"),
            (
                "tls://h:1/x@y".to_string(),
                Some(UrlCredentials::Token("tok".into()))
            )
        );
        assert_eq!(
            split_credentials("nats://h:1"),
            ("nats://h:1".to_string(), None)
        );
    }

    #[cfg(unix)]
    #[test]
    fn private_files_refuse_symlinks_and_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("secret");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(write_private(&link, "x").is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(load_or_generate(&link).is_err());

        let path = dir.path().join("loose");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, "new").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_generate(&path).unwrap().0.expose(), "new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "a loose existing secret file is tightened"
        );

        let sub = dir.path().join("data");
        ensure_private_dir(&sub).unwrap();
        let mode = std::fs::metadata(&sub).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
