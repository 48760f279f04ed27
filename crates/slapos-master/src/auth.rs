//! Accounts on `slapos master`: API tokens and the caller's [`Scope`].
//!
//! With `[slapmaster] authentication = token`, every JSON API call names its
//! user with `Authorization: Bearer <token>`; the token is looked up by its
//! SHA-256 (only hashes are stored) and the call runs in that user's scope.
//! Without it (the default, and always for `slapos proxy`), calls run in
//! [`Scope::All`] as before.

use axum::extract::FromRequestParts;
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

/// The scope a JSON API call runs in: extracting it answers 401 when
/// authentication is on and the call carries no live token.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Scope);

/// A 401 with a JSON body saying why.
pub struct Unauthorized(&'static str);

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"slapos\"")],
            Json(json!({"status": 401, "error": self.0})),
        )
            .into_response()
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, Response> {
        if state.authentication == Authentication::Off {
            return Ok(Caller(Scope::All));
        }
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Unauthorized(
                    "authentication required: send 'Authorization: Bearer <token>' \
                     (a token is created with 'slapos master user add' or 'slapos master token add')",
                )
                .into_response()
            })?;
        let user = state
            .store
            .read(move |db| user_of_token(db, &token))
            .await
            .map_err(|e| crate::api::ApiError::from(e).into_response())?;
        match user {
            Some(id) => Ok(Caller(Scope::User(id))),
            None => Err(Unauthorized("invalid or revoked token").into_response()),
        }
    }
}
