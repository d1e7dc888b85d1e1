//! The continue token of paginated lists: an opaque, URL-safe encoding of the last key returned.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Where the next page starts: after `(namespace, name)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinueToken {
    #[serde(rename = "v")]
    pub version: u8,
    #[serde(rename = "ns")]
    pub namespace: String,
    #[serde(rename = "n")]
    pub name: String,
}

impl ContinueToken {
    pub fn after(namespace: &str, name: &str) -> Self {
        ContinueToken { version: 1, namespace: namespace.to_string(), name: name.to_string() }
    }

    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    pub fn decode(s: &str) -> Result<Self, StoreError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).map_err(|_| {
            StoreError::InvalidContinueToken("not base64url; pass the token from the previous page unchanged".into())
        })?;
        let t: ContinueToken = serde_json::from_slice(&bytes).map_err(|_| {
            StoreError::InvalidContinueToken("malformed; pass the token from the previous page unchanged".into())
        })?;
        if t.version != 1 {
            return Err(StoreError::InvalidContinueToken(format!("unsupported token version {}", t.version)));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let t = ContinueToken::after("ns-a", "run-7");
        assert_eq!(ContinueToken::decode(&t.encode()).unwrap(), t);
        assert!(ContinueToken::decode("%%%").is_err());
        assert!(ContinueToken::decode("e30").is_err()); // "{}"
    }
}
