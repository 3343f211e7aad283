use crate::AriError;

impl AriError {
    /// The WIT case name: `not-found`, `denied`, `conflict`, `invalid`, `unavailable`,
    /// `timeout` or `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            AriError::NotFound(_) => "not-found",
            AriError::Denied(_) => "denied",
            AriError::Conflict(_) => "conflict",
            AriError::Invalid(_) => "invalid",
            AriError::Unavailable(_) => "unavailable",
            AriError::Timeout(_) => "timeout",
            AriError::Failed(_) => "failed",
        }
    }

    /// The human-readable message every case carries.
    pub fn message(&self) -> &str {
        match self {
            AriError::NotFound(m)
            | AriError::Denied(m)
            | AriError::Conflict(m)
            | AriError::Invalid(m)
            | AriError::Unavailable(m)
            | AriError::Timeout(m)
            | AriError::Failed(m) => m,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_and_message() {
        let e = AriError::NotFound("no such channel".into());
        assert_eq!(e.kind(), "not-found");
        assert_eq!(e.message(), "no such channel");
        assert_eq!(AriError::Unavailable(String::new()).kind(), "unavailable");
    }
}
