//! FTP logins: anonymous (read-only, when enabled) and the configured `[[ftp.user]]`
//! accounts with `sha256:<hex>` password hashes, each read-only or allowed to write in
//! the upload area.
//!
//! libunftp's events carry no client address, and its user-detail provider only sees
//! the login name. So the server builds one [`SessionAuth`] per control connection
//! (it owns the accept loop), which knows that connection's real peer and puts it into
//! the [`FtpUser`] every storage call receives: that is how a download is tied to a
//! phone.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use unftp_core::auth::{
    AuthenticationError, Authenticator, Credentials, Principal, UserDetail, UserDetailError,
    UserDetailProvider,
};

use super::FtpError;

/// Login names treated as anonymous (RFC 1635).
const ANONYMOUS_NAMES: [&str; 2] = ["anonymous", "ftp"];

/// The logged-in user of one FTP session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FtpUser {
    /// The login name (`anonymous` for every anonymous spelling).
    pub name: String,
    /// The control connection's client address.
    pub peer: SocketAddr,
    /// May write in the upload area (a configured user with `upload = true`, and an
    /// upload directory configured).
    pub upload: bool,
}

impl UserDetail for FtpUser {}

impl fmt::Display for FtpUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer)
    }
}

#[derive(Clone)]
struct Account {
    name: String,
    hash: [u8; 32],
    upload: bool,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the hash.
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("upload", &self.upload)
            .finish()
    }
}

/// The accounts of the whole server, parsed once from the config.
#[derive(Debug)]
pub(crate) struct Accounts {
    anonymous: bool,
    users: Vec<Account>,
}

impl Accounts {
    /// `upload_area`: whether an upload directory is configured; without one no user
    /// can write, whatever its `upload` flag says.
    pub(crate) fn from_config(
        cfg: &provbox_config::FtpConfig,
        upload_area: bool,
    ) -> Result<Accounts, FtpError> {
        let mut users = Vec::with_capacity(cfg.users.len());
        for (i, u) in cfg.users.iter().enumerate() {
            let hash = parse_hash(&u.password_hash).ok_or_else(|| FtpError::Config {
                field: format!("ftp.user[{i}].password_hash"),
                message: format!(
                    "user {:?}: write \"sha256:<64 hex digits>\" (e.g. from `printf %s PASSWORD | sha256sum`)",
                    u.name
                ),
            })?;
            if u.upload && !upload_area {
                tracing::warn!(user = %u.name, "ftp user has upload = true but no ftp.upload_dir is configured; the user is read-only");
            }
            users.push(Account {
                name: u.name.clone(),
                hash,
                upload: u.upload && upload_area,
            });
        }
        Ok(Accounts {
            anonymous: cfg.anonymous,
            users,
        })
    }

    fn account(&self, name: &str) -> Option<&Account> {
        self.users.iter().find(|a| a.name == name)
    }
}

fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let hex_part = s.strip_prefix("sha256:")?;
    let bytes = hex::decode(hex_part).ok()?;
    bytes.try_into().ok()
}

/// Compares two digests in time independent of where they differ. Hand-written: three
/// lines do not justify a dependency.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Authenticator and user-detail provider of one control connection.
#[derive(Debug)]
pub(crate) struct SessionAuth {
    accounts: Arc<Accounts>,
    peer: SocketAddr,
}

impl SessionAuth {
    pub(crate) fn new(accounts: Arc<Accounts>, peer: SocketAddr) -> SessionAuth {
        SessionAuth { accounts, peer }
    }

    fn is_anonymous(&self, name: &str) -> bool {
        self.accounts.account(name).is_none()
            && ANONYMOUS_NAMES.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

#[async_trait]
impl Authenticator for SessionAuth {
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        if self.is_anonymous(username) {
            if self.accounts.anonymous {
                return Ok(Principal {
                    username: "anonymous".to_string(),
                });
            }
            metrics::counter!("provbox_ftp_logins_total", "result" => "refused").increment(1);
            crate::warn_limited!(peer = %self.peer, "ftp: anonymous login refused (ftp.anonymous = false)");
            return Err(AuthenticationError::BadUser);
        }
        let Some(account) = self.accounts.account(username) else {
            metrics::counter!("provbox_ftp_logins_total", "result" => "refused").increment(1);
            crate::warn_limited!(peer = %self.peer, user = %username, "ftp: login for an unknown user refused");
            return Err(AuthenticationError::BadUser);
        };
        let given: [u8; 32] =
            Sha256::digest(creds.password.as_deref().unwrap_or("").as_bytes()).into();
        if digests_equal(&given, &account.hash) {
            metrics::counter!("provbox_ftp_logins_total", "result" => "ok").increment(1);
            Ok(Principal {
                username: account.name.clone(),
            })
        } else {
            metrics::counter!("provbox_ftp_logins_total", "result" => "refused").increment(1);
            crate::warn_limited!(peer = %self.peer, user = %username, "ftp: wrong password");
            Err(AuthenticationError::BadPassword)
        }
    }
}

#[async_trait]
impl UserDetailProvider for SessionAuth {
    type User = FtpUser;

    async fn provide_user_detail(&self, principal: &Principal) -> Result<FtpUser, UserDetailError> {
        let upload = self
            .accounts
            .account(&principal.username)
            .is_some_and(|a| a.upload);
        Ok(FtpUser {
            name: principal.username.clone(),
            peer: self.peer,
            upload,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use provbox_config::{FtpConfig, FtpUser as CfgUser};

    fn creds(pw: &str) -> Credentials {
        Credentials::from(pw)
    }

    fn accounts(anonymous: bool) -> Arc<Accounts> {
        let cfg = FtpConfig {
            anonymous,
            users: vec![CfgUser {
                name: "lab".into(),
                // printf %s secret | sha256sum
                password_hash:
                    "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b".into(),
                upload: true,
            }],
            ..FtpConfig::default()
        };
        Arc::new(Accounts::from_config(&cfg, true).unwrap())
    }

    #[tokio::test]
    async fn checks_passwords_and_anonymous() {
        let peer: SocketAddr = "127.0.0.9:4000".parse().unwrap();
        let a = SessionAuth::new(accounts(true), peer);
        assert_eq!(
            a.authenticate("lab", &creds("secret"))
                .await
                .unwrap()
                .username,
            "lab"
        );
        assert!(matches!(
            a.authenticate("lab", &creds("Secret")).await,
            Err(AuthenticationError::BadPassword)
        ));
        assert!(matches!(
            a.authenticate("nobody", &creds("x")).await,
            Err(AuthenticationError::BadUser)
        ));
        assert_eq!(
            a.authenticate("FTP", &creds("me@x"))
                .await
                .unwrap()
                .username,
            "anonymous"
        );
        let user = a
            .provide_user_detail(&Principal {
                username: "lab".into(),
            })
            .await
            .unwrap();
        assert_eq!(
            user,
            FtpUser {
                name: "lab".into(),
                peer,
                upload: true
            }
        );
        let anon = a
            .provide_user_detail(&Principal {
                username: "anonymous".into(),
            })
            .await
            .unwrap();
        assert!(!anon.upload);

        let closed = SessionAuth::new(accounts(false), peer);
        assert!(closed.authenticate("anonymous", &creds("")).await.is_err());
    }

    #[test]
    fn upload_needs_an_upload_area() {
        let cfg = FtpConfig {
            users: vec![CfgUser {
                name: "u".into(),
                password_hash: format!("sha256:{}", "00".repeat(32)),
                upload: true,
            }],
            ..FtpConfig::default()
        };
        let acc = Accounts::from_config(&cfg, false).unwrap();
        assert!(!acc.account("u").unwrap().upload);
        let bad = FtpConfig {
            users: vec![CfgUser {
                name: "u".into(),
                password_hash: "md5:abc".into(),
                upload: false,
            }],
            ..FtpConfig::default()
        };
        assert!(Accounts::from_config(&bad, false).is_err());
    }
}
