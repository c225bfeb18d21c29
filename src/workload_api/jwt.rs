//! The JWT-SVID methods: `FetchJWTSVID` (a token for every identity of the caller, or the one
//! it names, for the audiences it asks), `FetchJWTBundles` (the trust domain's JWT keys as a
//! JWKS, again on every key change) and `ValidateJWTSVID` (a token checked against an
//! audience: its SPIFFE ID and claims). Callers are admitted as for the X.509 methods; with
//! `jwtSvid.enabled` off the three answer UNIMPLEMENTED saying so.

use std::sync::Arc;
use std::time::SystemTime;

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::admission::{JwtSvids, Shared, StreamSlot, Streamed};
use super::attest::RegistrationEntry;
use super::metrics::{Refusal, WorkloadApiMetrics};
use super::proto::{JwtBundlesResponse, Jwtsvid, JwtsvidResponse, ValidateJwtsvidResponse};
use crate::jwt_svid::{Claims, KeyUse, TokenError, jwks};

/// What the JWT methods answer while `jwtSvid.enabled` is off.
const JWT_OFF: &str = "JWT-SVIDs are not enabled on this meshca (jwtSvid.enabled is false); \
                       X.509-SVIDs are served: FetchX509SVID, FetchX509Bundles";

impl Shared {
    /// The JWT-SVID settings, or UNIMPLEMENTED (counted) when they are off.
    pub(crate) fn jwt(&self) -> Result<&JwtSvids, Status> {
        self.jwt.as_ref().ok_or_else(|| {
            self.refuse(Refusal::Unimplemented, None, Status::unimplemented(JWT_OFF))
        })
    }
}

/// One token per identity of the caller (or for the one it asked for, which must be one of
/// them), for `audience`.
pub(crate) fn svids(
    shared: &Shared,
    jwt: &JwtSvids,
    entries: &[RegistrationEntry],
    audience: Vec<String>,
    spiffe_id: &str,
) -> Result<JwtsvidResponse, Status> {
    let identities: Vec<&RegistrationEntry> = match spiffe_id {
        "" => entries.iter().collect(),
        asked => {
            let Some(entry) = entries.iter().find(|e| e.spiffe_id.as_uri() == asked) else {
                return Err(Status::permission_denied(format!(
                    "the caller is not entitled to {}: its identities are {}",
                    quote(asked),
                    entries
                        .iter()
                        .map(|e| e.spiffe_id.as_uri())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            vec![entry]
        }
    };
    let now = SystemTime::now();
    let mut svids = Vec::with_capacity(identities.len());
    for entry in identities {
        let token = jwt
            .authority
            .sign(
                &entry.spiffe_id,
                &audience,
                jwt.ttl,
                jwt.issuer.as_deref(),
                now,
            )
            .map_err(|e| match e {
                TokenError::Audience(reason) => Status::invalid_argument(reason),
                TokenError::NoKey => Status::unavailable(e.to_string()),
                other => Status::internal(other.to_string()),
            })?;
        svids.push(Jwtsvid {
            spiffe_id: entry.spiffe_id.to_string(),
            svid: token,
            hint: entry.hint.clone(),
        });
    }
    WorkloadApiMetrics::bump(&shared.metrics.jwt_svids_sent, svids.len() as u64);
    Ok(JwtsvidResponse { svids })
}

/// Checks `token` for `audience`: the SPIFFE ID and the claims, or INVALID_ARGUMENT saying
/// why not.
pub(crate) fn validate(
    shared: &Shared,
    jwt: &JwtSvids,
    audience: &str,
    token: &str,
) -> Result<ValidateJwtsvidResponse, Status> {
    if audience.is_empty() {
        return Err(Status::invalid_argument("audience must be specified"));
    }
    if token.is_empty() {
        return Err(Status::invalid_argument("svid must be specified"));
    }
    match jwt
        .authority
        .validate(token, audience, &shared.trust_domain, SystemTime::now())
    {
        Ok((id, claims)) => {
            WorkloadApiMetrics::bump(&shared.metrics.jwt_validated, 1);
            Ok(ValidateJwtsvidResponse {
                spiffe_id: id.to_string(),
                claims: Some(claims_struct(&claims)),
            })
        }
        Err(error) => {
            WorkloadApiMetrics::bump(&shared.metrics.jwt_rejected, 1);
            Err(Status::invalid_argument(error.to_string()))
        }
    }
}

/// Streams the JWT keys as a JWKS keyed by the trust domain's SPIFFE ID, again whenever the
/// published keys change.
pub(crate) fn bundles(
    shared: Arc<Shared>,
    slot: StreamSlot,
) -> Result<Streamed<JwtBundlesResponse>, Status> {
    let mut keys = shared.jwt()?.authority.subscribe();
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let _slot: StreamSlot = slot;
        let key = format!("spiffe://{}", shared.trust_domain);
        loop {
            let set = keys.borrow_and_update().clone();
            let document = jwks(&set, KeyUse::JwtSvid).to_string().into_bytes();
            let response = JwtBundlesResponse {
                bundles: [(key.clone(), document)].into(),
            };
            if tx.send(Ok(response)).await.is_err() {
                return;
            }
            WorkloadApiMetrics::bump(&shared.metrics.jwt_bundle_messages, 1);
            tokio::select! {
                () = shared.drain.cancelled() => {
                    let _ = tx.send(Err(Status::unavailable("meshca is shutting down: reconnect"))).await;
                    return;
                }
                () = tx.closed() => return,
                changed = keys.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

fn claims_struct(claims: &Claims) -> Struct {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let number = |n: u64| Value {
        kind: Some(Kind::NumberValue(n as f64)),
    };
    let mut fields = std::collections::BTreeMap::from([
        ("sub".to_owned(), string(&claims.sub)),
        (
            "aud".to_owned(),
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: claims.aud.iter().map(|a| string(a)).collect(),
                })),
            },
        ),
        ("exp".to_owned(), number(claims.exp)),
        ("iat".to_owned(), number(claims.iat)),
    ]);
    if let Some(iss) = &claims.iss {
        fields.insert("iss".to_owned(), string(iss));
    }
    Struct { fields }
}

/// At most 128 bytes of caller-supplied text, control characters escaped.
fn quote(text: &str) -> String {
    let mut end = text.len().min(128);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}", &text[..end])
}
