use slapos_store::StoreError;

/// Why the master refused or failed an operation. Each variant maps to one
/// HTTP status (see `status()`), which the legacy clients turn into their
/// exceptions (404 → NotFoundError, 408 → ResourceNotReady, ...).
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// Unknown computer, partition or instance; no free partition; no host.
    #[error("{0}")]
    NotFound(String),
    /// Malformed or invalid input.
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not do this (a user asking for the provider's books,
    /// a computer certificate naming another computer, a user on a node's
    /// route...).
    #[error("{0}")]
    Forbidden(String),
    /// The operation contradicts the current state.
    #[error("{0}")]
    Conflict(String),
    #[error("storage failure: {0}")]
    Store(#[from] StoreError),
}

impl MasterError {
    pub fn status(&self) -> u16 {
        match self {
            MasterError::NotFound(_) => 404,
            MasterError::BadRequest(_) => 400,
            MasterError::Forbidden(_) => 403,
            MasterError::Conflict(_) => 409,
            MasterError::Store(StoreError::Closed) => 503,
            MasterError::Store(_) => 500,
        }
    }
}

impl From<slapos_core::InvalidInput> for MasterError {
    fn from(e: slapos_core::InvalidInput) -> Self {
        MasterError::BadRequest(e.to_string())
    }
}

impl From<slapos_core::StateError> for MasterError {
    fn from(e: slapos_core::StateError) -> Self {
        MasterError::BadRequest(e.to_string())
    }
}

impl From<slapos_proto::marshal::DecodeError> for MasterError {
    fn from(e: slapos_proto::marshal::DecodeError) -> Self {
        MasterError::BadRequest(format!("malformed XML payload: {e}"))
    }
}

pub type Result<T, E = MasterError> = std::result::Result<T, E>;
