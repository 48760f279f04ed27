//! Cross-site request forgery protection for the dashboard's forms: a
//! random token in a `SameSite=Strict` cookie that every form posts back
//! (double submit), and a refusal of posts another origin sends.

use axum::extract::FromRequestParts;
use axum::http::header::{COOKIE, HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use rand::distr::{Alphanumeric, SampleString};

const COOKIE_NAME: &str = "slapos_csrf";
const TOKEN_LEN: usize = 32;

/// The visitor's token: read from the cookie, or new (then set with the page).
pub struct CsrfToken {
    pub token: String,
    fresh: bool,
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_string())
        .filter(|t| t.len() == TOKEN_LEN && t.chars().all(|c| c.is_ascii_alphanumeric()))
}

impl<S: Send + Sync> FromRequestParts<S> for CsrfToken {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(match cookie_token(&parts.headers) {
            Some(token) => CsrfToken {
                token,
                fresh: false,
            },
            None => CsrfToken {
                token: Alphanumeric.sample_string(&mut rand::rng(), TOKEN_LEN),
                fresh: true,
            },
        })
    }
}

impl CsrfToken {
    /// The `Set-Cookie` value when the token is new.
    pub fn set_cookie(&self) -> Option<HeaderValue> {
        if !self.fresh {
            return None;
        }
        HeaderValue::from_str(&format!(
            "{COOKIE_NAME}={}; Path=/; HttpOnly; SameSite=Strict",
            self.token
        ))
        .ok()
    }
}

/// Why a post was refused, in words for the error page.
pub fn verify(headers: &HeaderMap, posted: &str) -> Result<(), &'static str> {
    if let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) {
        let origin_host = origin
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(origin);
        let host = headers.get(HOST).and_then(|v| v.to_str().ok());
        if origin != "null" && Some(origin_host) != host {
            return Err("this form was posted from another site");
        }
    }
    let Some(expected) = cookie_token(headers) else {
        return Err("the form's security cookie is missing: reload the page and try again");
    };
    // Constant time: the comparison does not tell how much of a guess matched.
    let same = expected.len() == posted.len()
        && expected
            .bytes()
            .zip(posted.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err("the form's security token is stale: reload the page and try again")
    }
}
