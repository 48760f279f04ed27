//! The web dashboard: server-rendered pages over the same engine as the
//! legacy and JSON interfaces. Little JavaScript (revealing secrets, the live
//! "Last Event" feed); every action is a plain form post protected against
//! cross-site forgery, and every user string goes through the templates'
//! HTML escaping.

mod accounting;
mod charts;
mod csrf;
mod pages;
mod session;
mod view;

use std::sync::LazyLock;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use minijinja::Environment;

use crate::error::MasterError;
use crate::server::AppState;

pub use csrf::CsrfToken;
pub use session::Viewer;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::instances))
        .route("/instances", get(pages::instances))
        .route("/instances/{id}", get(pages::instance))
        .route("/instances/{id}/state", post(pages::change_state))
        .route("/instances/{id}/destroy", get(pages::confirm_destroy))
        .route(
            "/request",
            get(pages::request_form).post(pages::submit_request),
        )
        .route("/computers", get(pages::computers))
        .route("/computers/{reference}", get(pages::computer))
        .route("/computers/{reference}/software", post(pages::supply))
        .route("/software", get(pages::software))
        .route("/events/stream", get(pages::event_stream))
        .route("/usage", get(accounting::usage))
        .route("/invoices", get(accounting::invoices))
        .route("/invoices/{number}", get(accounting::invoice))
        .route("/invoices/{number}/csv", get(accounting::invoice_csv))
        .route("/revenue", get(accounting::revenue))
        .route("/login", get(session::login_form).post(session::login))
        .route("/logout", post(session::logout))
        .route("/static/{file}", get(static_file))
}

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // Names end in .html: minijinja escapes every interpolation for HTML.
    for (name, source) in [
        ("base.html", include_str!("templates/base.html")),
        ("macros.html", include_str!("templates/macros.html")),
        ("instances.html", include_str!("templates/instances.html")),
        ("instance.html", include_str!("templates/instance.html")),
        ("destroy.html", include_str!("templates/destroy.html")),
        ("request.html", include_str!("templates/request.html")),
        ("computers.html", include_str!("templates/computers.html")),
        ("computer.html", include_str!("templates/computer.html")),
        ("software.html", include_str!("templates/software.html")),
        ("error.html", include_str!("templates/error.html")),
        ("login.html", include_str!("templates/login.html")),
        ("usage.html", include_str!("templates/usage.html")),
        ("invoices.html", include_str!("templates/invoices.html")),
        ("invoice.html", include_str!("templates/invoice.html")),
        ("revenue.html", include_str!("templates/revenue.html")),
    ] {
        env.add_template(name, source)
            .unwrap_or_else(|e| panic!("template {name} does not compile: {e}"));
    }
    env
});

/// A rendered page with the headers every page carries.
pub struct Page {
    status: StatusCode,
    html: String,
    cookie: Option<HeaderValue>,
}

impl Page {
    fn render(
        template: &str,
        csrf: &CsrfToken,
        viewer: &Viewer,
        ctx: minijinja::Value,
    ) -> Result<Page, WebError> {
        // Every page's header names the logged-in user and shows the
        // provider's links only to the provider.
        let ctx = minijinja::context! {
            csrf => csrf.token,
            user => viewer.user,
            provider => viewer.is_provider(),
            ..ctx
        };
        let html = TEMPLATES
            .get_template(template)
            .and_then(|t| t.render(ctx))
            .map_err(|e| WebError::internal(format!("page {template} failed to render: {e:#}")))?;
        Ok(Page {
            status: StatusCode::OK,
            html,
            cookie: csrf.set_cookie(),
        })
    }

    fn with_status(mut self, status: StatusCode) -> Page {
        self.status = status;
        self
    }
}

/// Pages may not be framed, may only run this site's scripts and styles,
/// and do not leak their URL to other sites.
fn secure_headers(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            self.html,
        )
            .into_response();
        secure_headers(&mut response);
        if let Some(cookie) = self.cookie {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        response
    }
}

/// A page-level failure, shown as an error page with its status.
#[derive(Debug)]
pub struct WebError {
    status: StatusCode,
    message: String,
}

impl WebError {
    fn internal(message: String) -> WebError {
        tracing::error!(%message, "dashboard page failed");
        WebError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message,
        }
    }

    fn forbidden(message: &str) -> WebError {
        WebError {
            status: StatusCode::FORBIDDEN,
            message: message.to_string(),
        }
    }
}

impl From<MasterError> for WebError {
    fn from(e: MasterError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            return WebError::internal(e.to_string());
        }
        WebError {
            status,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let ctx = minijinja::context! {
            title => self.status.canonical_reason().unwrap_or("Error"),
            status => self.status.as_u16(),
            message => self.message,
            csrf => "",
        };
        let html = TEMPLATES
            .get_template("error.html")
            .and_then(|t| t.render(ctx))
            .unwrap_or_else(|_| "error".to_string());
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response();
        secure_headers(&mut response);
        response
    }
}

async fn static_file(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "app.css" => (include_str!("static/app.css"), "text/css; charset=utf-8"),
        "app.js" => (
            include_str!("static/app.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return (StatusCode::NOT_FOUND, "no such file").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}
