//! Accounts on `slapos master`: API tokens, client certificates, and the
//! caller's [`Identity`] and [`Scope`].
//!
//! With `[slapmaster] authentication = token`, every call names who makes
//! it, with one of two credentials:
//!
//! * a client certificate issued by the master's authority (HTTPS only):
//!   a computer's, which acts only on that computer, or a user's;
//! * `Authorization: Bearer <token>`, which names a user.
//!
//! Both are looked up in the store on every request (tokens by their
//! SHA-256, certificates by the SHA-256 of their DER), so a revocation takes
//! effect at once. A user's calls run in that user's scope. Without
//! authentication (the default, and always for `slapos proxy`), calls run
//! in [`Scope::All`] as before.

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::json;
use sha2::{Digest, Sha256};
use slapos_store::queries::{self as q, Scope};
use slapos_store::Db;

use crate::error::MasterError;
use crate::server::AppState;
use crate::tls::Peer;

/// How callers of the JSON API are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Authentication {
    /// Nobody is asked who they are; everything is visible (the proxy).
    #[default]
    Off,
    /// A bearer token names the user; each user sees only their own.
    Token,
}

/// A new token's text: 43 random alphanumerics (over 256 bits) from a
/// cryptographically secure generator, with a recognisable prefix.
pub fn new_token() -> String {
    format!(
        "slapos_{}",
        Alphanumeric.sample_string(&mut rand::rng(), 43)
    )
}

/// What is stored of a token: the hex SHA-256 of its text.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The user a token belongs to, if it is live.
pub fn user_of_token(db: &mut dyn Db, token: &str) -> Result<Option<i64>, MasterError> {
    let hash = token_hash(token);
    Ok(q::user_of_token(db, &hash)?
        .filter(|(_, stored)| constant_time_eq(stored.as_bytes(), hash.as_bytes()))
        .map(|(user, _)| user))
}

/// Creates a user and a first token; returns the token's text (shown once).
pub fn add_user(db: &mut dyn Db, name: &str, label: &str) -> Result<String, MasterError> {
    slapos_core::validate_reference("user name", name)?;
    let now = slapos_core::now_micros();
    let id = q::insert_user(db, name, now)?
        .ok_or_else(|| MasterError::Conflict(format!("A user named {name:?} already exists")))?;
    let token = new_token();
    q::insert_token(db, id, &token_hash(&token), label, now)?;
    Ok(token)
}

/// Adds a token to an existing user; returns its id and text (shown once).
pub fn add_token(db: &mut dyn Db, user: &str, label: &str) -> Result<(i64, String), MasterError> {
    let u = q::user_by_name(db, user)?
        .ok_or_else(|| MasterError::NotFound(format!("No user named {user:?}")))?;
    let token = new_token();
    let id = q::insert_token(
        db,
        u.id,
        &token_hash(&token),
        label,
        slapos_core::now_micros(),
    )?;
    Ok((id, token))
}

/// Revokes a token by id: it is refused from then on.
pub fn revoke_token(db: &mut dyn Db, id: i64) -> Result<(), MasterError> {
    if q::revoke_token(db, id, slapos_core::now_micros())? {
        Ok(())
    } else {
        Err(MasterError::NotFound(format!("No live token {id}")))
    }
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Authentication is off: anything goes (the proxy, an open master).
    Open,
    /// A node, by its computer certificate: it acts on this computer only.
    Computer(String),
    /// A user, by a user certificate or an API token.
    User(i64),
}

/// Why a request's credential was refused: 401 without a usable one, 403
/// for a certificate the master does not accept (unknown, revoked).
#[derive(Debug, Clone)]
pub struct AuthFailure {
    pub status: StatusCode,
    pub message: String,
}

impl AuthFailure {
    fn unauthorized(message: &str) -> AuthFailure {
        AuthFailure {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
        }
    }

    fn forbidden(message: String) -> AuthFailure {
        AuthFailure {
            status: StatusCode::FORBIDDEN,
            message,
        }
    }

    /// As the JSON API answers: `{"status": .., "error": ..}`.
    pub fn json(self) -> Response {
        let body = Json(json!({"status": self.status.as_u16(), "error": self.message}));
        if self.status == StatusCode::UNAUTHORIZED {
            (
                self.status,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"slapos\"")],
                body,
            )
                .into_response()
        } else {
            (self.status, body).into_response()
        }
    }

    /// As the legacy protocol answers: plain text.
    pub fn text(self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.message,
        )
            .into_response()
    }
}

const NO_CREDENTIAL: &str = "authentication required: present a client certificate issued by \
     this master ('slapos master user|computer certificate issue') over HTTPS, or send \
     'Authorization: Bearer <token>' (a token is created with 'slapos master user add' \
     or 'slapos master token add')";

/// The identity of a request: its client certificate when it presented one
/// (over HTTPS), otherwise its bearer token.
pub async fn identify(parts: &Parts, state: &AppState) -> Result<Identity, AuthFailure> {
    if state.authentication == Authentication::Off {
        return Ok(Identity::Open);
    }
    let certificate = parts
        .extensions
        .get::<ConnectInfo<Peer>>()
        .and_then(|c| c.0.certificate.clone());
    if let Some(fingerprint) = certificate {
        let shown = fingerprint.clone();
        let row = state
            .store
            .read(move |db| Ok::<_, MasterError>(q::certificate_by_fingerprint(db, &fingerprint)?))
            .await
            .map_err(|e| AuthFailure {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!("cannot check the certificate: {e}"),
            })?;
        return match row {
            None => Err(AuthFailure::forbidden(format!(
                "certificate {shown} is unknown to this master"
            ))),
            Some(c) if c.revoked_at.is_some() => Err(AuthFailure::forbidden(format!(
                "certificate {shown} is revoked"
            ))),
            Some(c) if c.not_after < slapos_core::now_micros() => Err(AuthFailure::forbidden(
                format!("certificate {shown} has expired"),
            )),
            Some(c) => Ok(match c.owner {
                q::CertificateOwner::Computer { computer } => Identity::Computer(computer),
                q::CertificateOwner::User { user_id, .. } => Identity::User(user_id),
            }),
        };
    }
    let token = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AuthFailure::unauthorized(NO_CREDENTIAL))?;
    let user = state
        .store
        .read(move |db| user_of_token(db, &token))
        .await
        .map_err(|e| AuthFailure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("cannot check the token: {e}"),
        })?;
    match user {
        Some(id) => Ok(Identity::User(id)),
        None => Err(AuthFailure::unauthorized("invalid or revoked token")),
    }
}

impl Identity {
    /// A node's operation on `computer`: only that computer's certificate.
    pub fn require_computer(&self, computer: &str) -> Result<(), MasterError> {
        match self {
            Identity::Open => Ok(()),
            Identity::Computer(c) if c == computer => Ok(()),
            Identity::Computer(c) => Err(MasterError::Forbidden(format!(
                "this certificate is computer {c:?}'s: it cannot act on computer {computer:?}"
            ))),
            Identity::User(_) => Err(MasterError::Forbidden(format!(
                "only the node of computer {computer:?} (with its computer certificate) may do this"
            ))),
        }
    }

    /// The scope of a user's operation; a computer certificate cannot act
    /// as a user.
    pub fn user_scope(&self) -> Result<Scope, MasterError> {
        match self {
            Identity::Open => Ok(Scope::All),
            Identity::User(id) => Ok(Scope::User(*id)),
            Identity::Computer(c) => Err(MasterError::Forbidden(format!(
                "a computer certificate (computer {c:?}) cannot act as a user"
            ))),
        }
    }

    /// An operation on a partition: by the node of its computer, or by the
    /// user who owns the instance on it (anyone else's, a free partition and
    /// a missing one all answer the same 404).
    pub fn check_partition(
        &self,
        db: &mut dyn Db,
        computer: &str,
        partition: &str,
    ) -> Result<(), MasterError> {
        match self {
            Identity::Open | Identity::Computer(_) => self.require_computer(computer),
            Identity::User(user) => {
                let hidden = || {
                    MasterError::NotFound(format!(
                        "No instance on partition {partition:?} of computer {computer:?}"
                    ))
                };
                let c = crate::engine::computer(db, computer).map_err(|_| hidden())?;
                let p = crate::engine::partition(db, &c, partition).map_err(|_| hidden())?;
                match q::instance_on_partition(db, p.id)? {
                    Some(i) if i.user_id == Some(*user) => Ok(()),
                    _ => Err(hidden()),
                }
            }
        }
    }
}

/// The scope a JSON API call runs in: extracting it answers 401 when
/// authentication is on and the call carries no usable credential, 403 for
/// a refused certificate or a computer's (nodes use only their endpoints).
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Scope);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, Response> {
        let identity = identify(parts, state).await.map_err(AuthFailure::json)?;
        identity
            .user_scope()
            .map(Caller)
            .map_err(|e| AuthFailure::forbidden(e.to_string()).json())
    }
}

/// The caller of a JSON API endpoint that nodes use too (`watch`).
#[derive(Debug, Clone)]
pub struct ApiIdentity(pub Identity);

impl FromRequestParts<AppState> for ApiIdentity {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<ApiIdentity, Response> {
        identify(parts, state)
            .await
            .map(ApiIdentity)
            .map_err(AuthFailure::json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::MasterConfig;
    use slapos_store::StoreOptions;

    fn parts(certificate: Option<&str>, bearer: Option<&str>) -> Parts {
        let mut request = axum::http::Request::builder().uri("/");
        if let Some(token) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let mut request = request.body(()).unwrap();
        request.extensions_mut().insert(ConnectInfo(Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            certificate: certificate.map(str::to_string),
            tls: true,
        }));
        request.into_parts().0
    }

    #[tokio::test]
    async fn identities_from_certificates_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let store =
            slapos_store::Store::open(path.to_str().unwrap(), &StoreOptions::default()).unwrap();
        let config = MasterConfig {
            authentication: Authentication::Token,
            ..MasterConfig::default()
        };
        let state = AppState::new(store.clone(), &config);
        let (token, alice) = store
            .write(|db| {
                let token = add_user(db, "alice", "")?;
                let alice = q::user_by_name(db, "alice")?.map(|u| u.id).unwrap_or(0);
                let now = slapos_core::now_micros();
                let later = now + 3_600_000_000;
                let user = q::CertificateOwner::User {
                    user_id: alice,
                    user: "alice".into(),
                };
                let computer = q::CertificateOwner::Computer {
                    computer: "COMP-1".into(),
                };
                q::insert_certificate(db, "aa", &user, "01", later, now)?;
                q::insert_certificate(db, "cc", &computer, "02", later, now)?;
                q::insert_certificate(db, "rr", &computer, "03", later, now)?;
                q::insert_certificate(db, "ee", &computer, "04", now - 1, now)?;
                q::revoke_certificates(db, &q::CertificateSelector::Fingerprint("rr"), now)?;
                Ok::<_, MasterError>((token, alice))
            })
            .await
            .unwrap();
        let who = |c: Option<&str>, t: Option<&str>| {
            let (parts, state) = (parts(c, t), state.clone());
            async move { identify(&parts, &state).await }
        };
        assert_eq!(who(Some("aa"), None).await.unwrap(), Identity::User(alice));
        assert_eq!(
            who(Some("cc"), None).await.unwrap(),
            Identity::Computer("COMP-1".into())
        );
        // The certificate wins over a token.
        assert_eq!(
            who(Some("cc"), Some(&token)).await.unwrap(),
            Identity::Computer("COMP-1".into())
        );
        for (fingerprint, why) in [("rr", "revoked"), ("ee", "expired"), ("zz", "unknown")] {
            let refused = who(Some(fingerprint), Some(&token)).await.unwrap_err();
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{fingerprint}");
            assert!(refused.message.contains(why), "{}", refused.message);
        }
        assert_eq!(
            who(None, Some(&token)).await.unwrap(),
            Identity::User(alice)
        );
        let refused = who(None, Some("slapos_nope")).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        let refused = who(None, None).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);

        // Authorization of a computer's certificate.
        let node = Identity::Computer("COMP-1".into());
        assert!(node.require_computer("COMP-1").is_ok());
        assert_eq!(node.require_computer("COMP-2").unwrap_err().status(), 403);
        assert_eq!(node.user_scope().unwrap_err().status(), 403);
        assert_eq!(
            Identity::User(alice)
                .require_computer("COMP-1")
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(
            Identity::User(alice).user_scope().unwrap(),
            Scope::User(alice)
        );

        // Off: everyone is Open, whatever they present.
        let open = AppState::new(store, &MasterConfig::default());
        assert_eq!(
            identify(&parts(Some("zz"), None), &open).await.unwrap(),
            Identity::Open
        );
    }
}
