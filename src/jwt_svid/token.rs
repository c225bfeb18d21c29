//! JWT-SVIDs (the SPIFFE JWT-SVID specification): ES256 tokens whose `sub` is a SPIFFE ID,
//! with the audiences the workload asked for, `exp`, `iat`, and the signing key's `kid` in the
//! header.
//!
//! Checked with jsonwebtoken (over ring). Signed here, with the key ring parsed once:
//! jsonwebtoken's `encode` parses the PKCS#8 key again for every token, which doubled the cost
//! of a signature; a compact JWS is two base64url JSON objects and a base64url signature
//! (RFC 7515 §7.1), and the tests check every token with jsonwebtoken's decoder.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use meshca_provider::{SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};

use super::keys::{KeyPolicy, KeySet, unix_seconds};

/// The most audiences one token may carry, and the longest audience accepted.
pub const MAX_AUDIENCES: usize = 16;
/// The longest audience string accepted.
pub const MAX_AUDIENCE_BYTES: usize = 256;
/// The longest token [`validate`] reads: a JWT-SVID is a few hundred bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The claims of a JWT-SVID meshca signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The SPIFFE ID.
    pub sub: String,
    /// The audiences.
    pub aud: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// The issuer (`jwtSvid.issuer`), when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

/// Why a token could not be made or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The request names no audience, or too many, or one too long.
    #[error("{0}")]
    Audience(String),
    /// No signing key yet.
    #[error("meshca has no JWT signing key yet: retry shortly")]
    NoKey,
    /// The token is not a JWT-SVID meshca signed and still valid; the reason says why.
    #[error("the JWT-SVID is not valid: {0}")]
    Invalid(String),
}

/// Signs a JWT-SVID for `subject` and `audiences`, valid for `ttl` from `now`, with the set's
/// current signing key.
pub fn sign(
    keys: &KeySet,
    policy: &KeyPolicy,
    subject: &SpiffeId,
    audiences: &[String],
    ttl: Duration,
    issuer: Option<&str>,
    now: SystemTime,
) -> Result<String, TokenError> {
    check_audiences(audiences)?;
    let key = keys.signing_key(now, policy).ok_or(TokenError::NoKey)?;
    let iat = unix_seconds(now);
    let claims = Claims {
        sub: subject.as_uri().to_owned(),
        aud: audiences.to_vec(),
        exp: iat + ttl.as_secs().max(1),
        iat,
        iss: issuer.map(str::to_owned),
    };
    let header = serde_json::json!({"alg": "ES256", "kid": key.kid(), "typ": "JWT"});
    let claims =
        serde_json::to_vec(&claims).map_err(|e| TokenError::Invalid(format!("claims: {e}")))?;
    let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims, &mut token);
    let signature = key
        .sign(token.as_bytes())
        .map_err(|e| TokenError::Invalid(format!("signing failed: {e}")))?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    Ok(token)
}

/// Checks `token` as a verifier of JWT-SVIDs for `audience` must: an ES256 signature by a key
/// of the set (named by `kid`), not expired at `now`, `audience` among its audiences, a SPIFFE
/// ID in `trust_domain` as subject. Returns the claims.
pub fn validate(
    keys: &KeySet,
    token: &str,
    audience: &str,
    trust_domain: &TrustDomain,
    now: SystemTime,
) -> Result<(SpiffeId, Claims), TokenError> {
    let invalid = |reason: String| TokenError::Invalid(reason);
    if token.len() > MAX_TOKEN_BYTES {
        return Err(invalid(format!(
            "it is {} bytes, more than the {MAX_TOKEN_BYTES} a JWT-SVID can be",
            token.len()
        )));
    }
    if audience.is_empty() {
        return Err(TokenError::Audience(
            "name the audience the token must be for".into(),
        ));
    }
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| invalid(format!("unreadable: {e}")))?;
    if header.alg != Algorithm::ES256 {
        return Err(invalid(format!(
            "signed with {:?}; meshca's JWT-SVIDs are ES256",
            header.alg
        )));
    }
    let kid = header
        .kid
        .ok_or_else(|| invalid("its header names no signing key (kid)".into()))?;
    let key = keys.find(&kid).ok_or_else(|| {
        invalid("signed by a key that is not in meshca's key set (unknown kid)".into())
    })?;
    let (x, y) = key.coordinates();
    let decoding =
        DecodingKey::from_ec_components(&x, &y).map_err(|e| invalid(format!("key {kid}: {e}")))?;
    let mut validation = Validation::new(Algorithm::ES256);
    // Expiry is checked below against meshca's clock; the audience by jsonwebtoken.
    validation.validate_exp = false;
    validation.required_spec_claims = ["sub", "aud", "exp"].map(str::to_owned).into();
    validation.set_audience(&[audience]);
    let claims = jsonwebtoken::decode::<Claims>(token, &decoding, &validation)
        .map_err(|e| invalid(reason(&e)))?
        .claims;
    let now_seconds = unix_seconds(now);
    if claims.exp <= now_seconds {
        return Err(invalid(format!(
            "it expired at {} ({}s ago)",
            crate::cli::inspect::rfc3339(UNIX_EPOCH + Duration::from_secs(claims.exp)),
            now_seconds - claims.exp
        )));
    }
    let id: SpiffeId = claims
        .sub
        .parse()
        .map_err(|_| invalid("its subject is not a SPIFFE ID".into()))?;
    if id.trust_domain() != trust_domain {
        return Err(invalid(format!(
            "its subject is in trust domain {}, not {trust_domain}",
            id.trust_domain()
        )));
    }
    Ok((id, claims))
}

fn reason(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidAudience => "it is not for this audience".into(),
        ErrorKind::InvalidSignature => "its signature does not verify".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("it has no `{claim}` claim"),
        _ => format!("unreadable: {error}"),
    }
}

fn check_audiences(audiences: &[String]) -> Result<(), TokenError> {
    if audiences.is_empty() {
        return Err(TokenError::Audience(
            "a JWT-SVID needs at least one audience: name who the token is for".into(),
        ));
    }
    if audiences.len() > MAX_AUDIENCES {
        return Err(TokenError::Audience(format!(
            "{} audiences asked for; at most {MAX_AUDIENCES}",
            audiences.len()
        )));
    }
    if let Some(long) = audiences.iter().find(|a| a.len() > MAX_AUDIENCE_BYTES) {
        return Err(TokenError::Audience(format!(
            "an audience is {} bytes; at most {MAX_AUDIENCE_BYTES}",
            long.len()
        )));
    }
    if audiences.iter().any(String::is_empty) {
        return Err(TokenError::Audience("an audience is empty".into()));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn policy() -> KeyPolicy {
        KeyPolicy {
            rotation_interval: 24 * 60 * MINUTE,
            activation_delay: 10 * MINUTE,
            retention: 10 * MINUTE,
        }
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn td() -> TrustDomain {
        "cluster.local".parse().unwrap()
    }

    fn keys() -> KeySet {
        KeySet::default().plan(now(), &policy()).unwrap().unwrap()
    }

    fn id() -> SpiffeId {
        SpiffeId::from_short("ns1/sa1", &td()).unwrap()
    }

    fn token(keys: &KeySet, audiences: &[&str], ttl: Duration) -> String {
        let audiences: Vec<String> = audiences.iter().map(|a| (*a).to_owned()).collect();
        sign(keys, &policy(), &id(), &audiences, ttl, None, now()).unwrap()
    }

    #[test]
    fn a_token_validates_for_its_audience_only() {
        let keys = keys();
        let jwt = token(&keys, &["vault", "db"], 5 * MINUTE);
        let (subject, claims) = validate(&keys, &jwt, "db", &td(), now()).unwrap();
        assert_eq!(subject, id());
        assert_eq!(claims.exp - claims.iat, 300);
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.kid.as_deref(), Some(keys.keys()[0].kid()));
        assert_eq!(header.alg, Algorithm::ES256);

        let error = validate(&keys, &jwt, "someone-else", &td(), now()).unwrap_err();
        assert!(
            error.to_string().contains("not for this audience"),
            "{error}"
        );
    }

    #[test]
    fn expired_unknown_key_and_tampered_tokens_are_refused() {
        let keys = keys();
        let jwt = token(&keys, &["vault"], 5 * MINUTE);
        let later = now() + 6 * MINUTE;
        let error = validate(&keys, &jwt, "vault", &td(), later).unwrap_err();
        assert!(error.to_string().contains("expired"), "{error}");

        let other = KeySet::default().plan(now(), &policy()).unwrap().unwrap();
        let error = validate(&other, &jwt, "vault", &td(), now()).unwrap_err();
        assert!(error.to_string().contains("unknown kid"), "{error}");

        // Another subject pasted into the signed claims.
        let parts: Vec<&str> = jwt.split('.').collect();
        let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let forged = URL_SAFE_NO_PAD.encode(claims.replace("sa1", "sa2"));
        let forged = format!("{}.{forged}.{}", parts[0], parts[2]);
        let error = validate(&keys, &forged, "vault", &td(), now()).unwrap_err();
        assert!(error.to_string().contains("signature"), "{error}");

        // alg "none" and HS256 are refused before any key is used.
        let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"x"}"#);
        let error = validate(
            &keys,
            &format!("{none}.{}.", parts[1]),
            "vault",
            &td(),
            now(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("not valid"), "{error}");
        let hs = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"x"}"#);
        let error = validate(
            &keys,
            &format!("{hs}.{}.{}", parts[1], parts[2]),
            "vault",
            &td(),
            now(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("ES256"), "{error}");
    }

    #[test]
    fn audiences_are_required_and_bounded() {
        let keys = keys();
        let sign_for = |audiences: Vec<String>| {
            sign(&keys, &policy(), &id(), &audiences, MINUTE, None, now()).unwrap_err()
        };
        assert!(matches!(sign_for(vec![]), TokenError::Audience(_)));
        assert!(matches!(
            sign_for(vec!["a".into(); MAX_AUDIENCES + 1]),
            TokenError::Audience(_)
        ));
        assert!(matches!(
            sign_for(vec!["a".repeat(MAX_AUDIENCE_BYTES + 1)]),
            TokenError::Audience(_)
        ));
        assert!(matches!(
            sign_for(vec![String::new()]),
            TokenError::Audience(_)
        ));
    }

    #[test]
    fn another_trust_domain_is_refused() {
        let keys = keys();
        let jwt = token(&keys, &["vault"], MINUTE);
        let other: TrustDomain = "other.example".parse().unwrap();
        let error = validate(&keys, &jwt, "vault", &other, now()).unwrap_err();
        assert!(error.to_string().contains("trust domain"), "{error}");
    }
}
