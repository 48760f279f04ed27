//! Who is looking at the dashboard. Without accounts everybody sees
//! everything ([`Scope::All`]), as before. With `[slapmaster] authentication
//! = token`, a user logs in by pasting an API token; the dashboard then
//! keeps a random session id in an `HttpOnly`, `SameSite=Strict` cookie
//! (only its SHA-256 is stored, next to the token's hash so that revoking
//! the token ends the session), and every page runs in that user's scope.

use axum::extract::{FromRequestParts, State};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use minijinja::context;
use rand::distr::{Alphanumeric, SampleString};
use serde::Deserialize;
use slapos_store::queries::{self as q, Scope};

use super::{csrf, CsrfToken, Page, WebError};
use crate::auth::{token_hash, user_of_token, Authentication};
use crate::server::AppState;

const COOKIE_NAME: &str = "slapos_session";
const SESSION_ID_LEN: usize = 43;
/// A session lasts a working day; then the token is asked for again.
const SESSION_SECONDS: i64 = 12 * 3600;

/// The scope a dashboard page runs in, and the logged-in user's name (none
/// without accounts). Extracting it redirects to the login page when
/// accounts are on and the browser has no live session.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub scope: Scope,
    pub user: Option<String>,
}

impl Viewer {
    /// Whether this viewer is the provider (sees every user's rows).
    pub fn is_provider(&self) -> bool {
        self.scope == Scope::All
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_string())
        .filter(|t| t.len() == SESSION_ID_LEN && t.chars().all(|c| c.is_ascii_alphanumeric()))
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Viewer, Response> {
        if state.authentication == Authentication::Off {
            return Ok(Viewer {
                scope: Scope::All,
                user: None,
            });
        }
        let to_login = || Redirect::to("/login").into_response();
        let Some(session) = session_cookie(&parts.headers) else {
            return Err(to_login());
        };
        let hash = token_hash(&session);
        let now = slapos_core::now_micros();
        let user = state
            .store
            .read(move |db| q::web_session_user(db, &hash, now))
            .await
            .map_err(|e| WebError::from(crate::error::MasterError::from(e)).into_response())?;
        match user {
            Some((id, name)) => Ok(Viewer {
                scope: Scope::User(id),
                user: Some(name),
            }),
            None => Err(to_login()),
        }
    }
}

pub async fn login_form(State(state): State<AppState>, csrf: CsrfToken) -> Response {
    if state.authentication == Authentication::Off {
        return Redirect::to("/instances").into_response();
    }
    render_login(&csrf, None).into_response()
}

fn render_login(csrf: &CsrfToken, error: Option<&str>) -> Result<Page, WebError> {
    let page = Page::render(
        "login.html",
        csrf,
        &Viewer {
            scope: Scope::All,
            user: None,
        },
        context! { title => "Log in", nav => "login", error },
    )?;
    Ok(match error {
        Some(_) => page.with_status(StatusCode::UNAUTHORIZED),
        None => page,
    })
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
}

/// Checks the pasted token and opens a session for its user.
pub async fn login(
    State(state): State<AppState>,
    csrf_token: CsrfToken,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<crate::tls::Peer>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, WebError> {
    csrf::verify(&headers, &form.csrf).map_err(WebError::forbidden)?;
    if state.authentication == Authentication::Off {
        return Ok(Redirect::to("/instances").into_response());
    }
    let token = form.token.trim().to_string();
    let session = Alphanumeric.sample_string(&mut rand::rng(), SESSION_ID_LEN);
    let session_hash = token_hash(&session);
    let opened = state
        .store
        .write(move |db| {
            let Some(user) = user_of_token(db, &token)? else {
                return Ok::<_, crate::error::MasterError>(false);
            };
            let now = slapos_core::now_micros();
            q::insert_web_session(
                db,
                &session_hash,
                user,
                &token_hash(&token),
                now,
                now + SESSION_SECONDS * 1_000_000,
            )?;
            Ok(true)
        })
        .await?;
    if !opened {
        tracing::info!("dashboard login refused: unknown or revoked token");
        return Ok(render_login(
            &csrf_token,
            Some("This token is unknown or revoked: paste a live API token."),
        )
        .into_response());
    }
    let mut response = Redirect::to("/instances").into_response();
    // Over HTTPS (ours, or a TLS frontend's) the cookie is never sent in
    // clear text.
    let secure = peer.tls
        || headers
            .get("x-forwarded-proto")
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE_NAME}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}{}",
        if secure { "; Secure" } else { "" }
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(SET_COOKIE, value);
    }
    Ok(response)
}

#[derive(Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// Ends the session, in the database and in the browser.
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Result<Response, WebError> {
    csrf::verify(&headers, &form.csrf).map_err(WebError::forbidden)?;
    if let Some(session) = session_cookie(&headers) {
        let hash = token_hash(&session);
        state
            .store
            .write(move |db| q::delete_web_session(db, &hash))
            .await
            .map_err(crate::error::MasterError::from)?;
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(
        SET_COOKIE,
        HeaderValue::from_static("slapos_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(response)
}
