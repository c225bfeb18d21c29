//! SDS resource names: the forms Envoy configurations written for Istio, SPIRE and OSM use.
//!
//! A name is parsed once into a [`ResourceName`]; [`ResourceName::resolve`] then says, for a
//! given caller, which certificate or bundle it stands for, or that the caller may not have it.

use std::fmt;

use meshca_provider::{SpiffeId, TrustDomain};

use super::source::Purpose;

/// The accepted forms, for error messages.
pub const ACCEPTED_FORMS: &str = "default, ROOTCA, service-cert:<ns>/<sa>, \
     service-cert-inbound:<ns>/<sa>, service-cert-outbound:<ns>/<sa>, \
     root-cert-for-mtls-inbound[:<ns>/<sa>], root-cert-for-mtls-outbound:<ns>/<sa>, \
     spiffe://<trust-domain>/ns/<ns>/sa/<sa>";

/// Names longer than this are refused without being parsed (and are cut in messages).
const MAX_NAME_LEN: usize = 512;

/// A parsed SDS resource name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResourceName {
    /// `default`: the caller's own certificate.
    Default,
    /// `ROOTCA`: the trust bundle.
    RootCa,
    /// `service-cert:<ns>/<sa>` (purpose default), `service-cert-inbound:…`,
    /// `service-cert-outbound:…`: a certificate of that identity, which must be the caller's.
    ServiceCert {
        /// The identity named.
        identity: SpiffeId,
        /// Which of its certificates.
        purpose: Purpose,
    },
    /// `root-cert-for-mtls-inbound[:<ns>/<sa>]`: the trust bundle (the suffix names the local
    /// service and changes nothing).
    InboundRoot {
        /// The identity in the suffix, if any.
        local: Option<SpiffeId>,
    },
    /// `root-cert-for-mtls-outbound:<ns>/<sa>`: the trust bundle plus an exact URI-SAN matcher
    /// for the peer the proxy calls.
    OutboundRoot {
        /// The peer the proxy expects to talk to.
        peer: SpiffeId,
    },
    /// `spiffe://<td>/ns/<ns>/sa/<sa>`: that identity's certificate, which must be the caller's.
    Spiffe(SpiffeId),
}

/// What a resource name stands for once the caller is known.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resolved {
    /// A certificate and its key.
    Certificate {
        /// Whose certificate (always the caller).
        identity: SpiffeId,
        /// Which one.
        purpose: Purpose,
    },
    /// The trust bundle, with an exact URI-SAN matcher when `peer` is set.
    Bundle {
        /// The only peer identity the validation context accepts.
        peer: Option<SpiffeId>,
    },
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name matches none of the accepted forms, or its identity part is invalid.
    #[error("invalid SDS resource name {name:?}: {reason}; accepted forms: {ACCEPTED_FORMS}")]
    Malformed {
        /// The name as given (cut to 512 characters).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The name asks for another identity's certificate.
    #[error(
        "{caller} may not have the certificate named {name:?}: a proxy only gets its own certificates"
    )]
    NotYours {
        /// The name as given.
        name: String,
        /// Who asked.
        caller: SpiffeId,
    },
}

impl ResourceName {
    /// Parses a name; `<ns>/<sa>` parts are identities in `trust_domain`.
    pub fn parse(name: &str, trust_domain: &TrustDomain) -> Result<Self, NameError> {
        let malformed = |reason: String| NameError::Malformed {
            name: cut(name),
            reason,
        };
        if name.len() > MAX_NAME_LEN {
            return Err(malformed(format!(
                "it is longer than {MAX_NAME_LEN} characters"
            )));
        }
        let short = |rest: &str| {
            SpiffeId::from_short(rest, trust_domain).map_err(|e| malformed(e.to_string()))
        };
        match name {
            "default" => return Ok(Self::Default),
            "ROOTCA" => return Ok(Self::RootCa),
            "root-cert-for-mtls-inbound" => return Ok(Self::InboundRoot { local: None }),
            _ => {}
        }
        if name.starts_with("spiffe://") {
            return name
                .parse()
                .map(Self::Spiffe)
                .map_err(|e: meshca_provider::IdentityError| malformed(e.to_string()));
        }
        let Some((prefix, rest)) = name.split_once(':') else {
            return Err(malformed("unknown name".to_owned()));
        };
        match prefix {
            "service-cert" => Ok(Self::ServiceCert {
                identity: short(rest)?,
                purpose: Purpose::Default,
            }),
            "service-cert-inbound" => Ok(Self::ServiceCert {
                identity: short(rest)?,
                purpose: Purpose::Inbound,
            }),
            "service-cert-outbound" => Ok(Self::ServiceCert {
                identity: short(rest)?,
                purpose: Purpose::Outbound,
            }),
            "root-cert-for-mtls-inbound" => Ok(Self::InboundRoot {
                local: Some(short(rest)?),
            }),
            "root-cert-for-mtls-outbound" => Ok(Self::OutboundRoot { peer: short(rest)? }),
            _ => Err(malformed(format!("unknown prefix {prefix:?}"))),
        }
    }

    /// What this name stands for when `caller` asks; another identity's certificate is refused.
    /// Trust bundles are public.
    pub fn resolve(&self, name: &str, caller: &SpiffeId) -> Result<Resolved, NameError> {
        let own = |identity: &SpiffeId, purpose| {
            if identity == caller {
                Ok(Resolved::Certificate {
                    identity: identity.clone(),
                    purpose,
                })
            } else {
                Err(NameError::NotYours {
                    name: cut(name),
                    caller: caller.clone(),
                })
            }
        };
        match self {
            Self::Default => own(caller, Purpose::Default),
            Self::ServiceCert { identity, purpose } => own(identity, *purpose),
            Self::Spiffe(identity) => own(identity, Purpose::Default),
            Self::RootCa | Self::InboundRoot { .. } => Ok(Resolved::Bundle { peer: None }),
            Self::OutboundRoot { peer } => Ok(Resolved::Bundle {
                peer: Some(peer.clone()),
            }),
        }
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::RootCa => f.write_str("ROOTCA"),
            Self::ServiceCert { identity, purpose } => {
                let prefix = match purpose {
                    Purpose::Default => "service-cert",
                    Purpose::Inbound => "service-cert-inbound",
                    Purpose::Outbound => "service-cert-outbound",
                };
                write!(f, "{prefix}:{}", identity.short())
            }
            Self::InboundRoot { local: None } => f.write_str("root-cert-for-mtls-inbound"),
            Self::InboundRoot { local: Some(id) } => {
                write!(f, "root-cert-for-mtls-inbound:{}", id.short())
            }
            Self::OutboundRoot { peer } => {
                write!(f, "root-cert-for-mtls-outbound:{}", peer.short())
            }
            Self::Spiffe(id) => write!(f, "{id}"),
        }
    }
}

/// A name cut to a loggable length, on a character boundary.
fn cut(name: &str) -> String {
    match name.char_indices().nth(MAX_NAME_LEN) {
        Some((at, _)) => format!("{}…", &name[..at]),
        None => name.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::default()
    }

    fn id(short: &str) -> SpiffeId {
        SpiffeId::from_short(short, &td()).unwrap()
    }

    #[test]
    fn every_form_parses_and_round_trips() {
        let cases = [
            ("default", ResourceName::Default),
            ("ROOTCA", ResourceName::RootCa),
            (
                "service-cert:bookstore/bookstore-v2",
                ResourceName::ServiceCert {
                    identity: id("bookstore/bookstore-v2"),
                    purpose: Purpose::Default,
                },
            ),
            (
                "service-cert-inbound:ns/server",
                ResourceName::ServiceCert {
                    identity: id("ns/server"),
                    purpose: Purpose::Inbound,
                },
            ),
            (
                "service-cert-outbound:ns/client",
                ResourceName::ServiceCert {
                    identity: id("ns/client"),
                    purpose: Purpose::Outbound,
                },
            ),
            (
                "root-cert-for-mtls-inbound",
                ResourceName::InboundRoot { local: None },
            ),
            (
                "root-cert-for-mtls-inbound:ns/server",
                ResourceName::InboundRoot {
                    local: Some(id("ns/server")),
                },
            ),
            (
                "root-cert-for-mtls-outbound:ns/server",
                ResourceName::OutboundRoot {
                    peer: id("ns/server"),
                },
            ),
            (
                "spiffe://cluster.local/ns/ns/sa/client",
                ResourceName::Spiffe(id("ns/client")),
            ),
        ];
        for (text, expected) in cases {
            let parsed = ResourceName::parse(text, &td()).unwrap();
            assert_eq!(parsed, expected, "{text}");
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn short_forms_use_the_configured_trust_domain() {
        let other = TrustDomain::new("example.org").unwrap();
        let parsed = ResourceName::parse("root-cert-for-mtls-outbound:a/b", &other).unwrap();
        let ResourceName::OutboundRoot { peer } = parsed else {
            panic!("wrong variant");
        };
        assert_eq!(peer.to_string(), "spiffe://example.org/ns/a/sa/b");
    }

    #[test]
    fn malformed_names_name_themselves_and_the_accepted_forms() {
        for bad in [
            "",
            "Default",
            "rootca",
            "*",
            "service-cert",
            "service-cert:",
            "service-cert:ns",
            "service-cert:ns/sa/extra",
            "service-cert:NS/sa",
            "service-cert-sideways:ns/sa",
            "root-cert-for-mtls-outbound",
            "root-cert-for-mtls-outbound:",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/c",
        ] {
            let err = ResourceName::parse(bad, &td()).expect_err(bad);
            assert!(matches!(err, NameError::Malformed { .. }), "{bad}: {err:?}");
            let message = err.to_string();
            assert!(message.contains(&format!("{bad:?}")), "{message}");
            assert!(
                message.contains("service-cert-inbound:<ns>/<sa>"),
                "{message}"
            );
        }
    }

    #[test]
    fn overlong_names_are_cut_in_messages() {
        let long = format!("service-cert:{}", "a".repeat(5000));
        let message = ResourceName::parse(&long, &td()).unwrap_err().to_string();
        assert!(message.len() < 1500, "{} bytes", message.len());
    }

    #[test]
    fn callers_get_only_their_own_certificates() {
        let caller = id("ns/client");
        let mine = [
            "default",
            "service-cert:ns/client",
            "service-cert-inbound:ns/client",
            "service-cert-outbound:ns/client",
            "spiffe://cluster.local/ns/ns/sa/client",
        ];
        for name in mine {
            let resolved = ResourceName::parse(name, &td())
                .unwrap()
                .resolve(name, &caller)
                .unwrap();
            assert!(
                matches!(&resolved, Resolved::Certificate { identity, .. } if *identity == caller),
                "{name}: {resolved:?}"
            );
        }
        let theirs = [
            "service-cert:ns/server",
            "service-cert-inbound:other/client",
            "service-cert-outbound:ns/server",
            "spiffe://cluster.local/ns/ns/sa/server",
            "spiffe://example.org/ns/ns/sa/client",
        ];
        for name in theirs {
            let err = ResourceName::parse(name, &td())
                .unwrap()
                .resolve(name, &caller)
                .unwrap_err();
            assert!(matches!(err, NameError::NotYours { .. }), "{name}: {err:?}");
        }
    }

    #[test]
    fn bundles_are_public_and_outbound_carries_the_peer() {
        let caller = id("ns/client");
        for name in [
            "ROOTCA",
            "root-cert-for-mtls-inbound",
            "root-cert-for-mtls-inbound:other/thing",
        ] {
            let resolved = ResourceName::parse(name, &td())
                .unwrap()
                .resolve(name, &caller)
                .unwrap();
            assert_eq!(resolved, Resolved::Bundle { peer: None }, "{name}");
        }
        let name = "root-cert-for-mtls-outbound:ns/server";
        let resolved = ResourceName::parse(name, &td())
            .unwrap()
            .resolve(name, &caller)
            .unwrap();
        assert_eq!(
            resolved,
            Resolved::Bundle {
                peer: Some(id("ns/server"))
            }
        );
    }

    #[test]
    fn purposes_map_to_distinct_keys() {
        let caller = id("ns/client");
        let purposes: Vec<Purpose> = [
            "service-cert:ns/client",
            "service-cert-inbound:ns/client",
            "service-cert-outbound:ns/client",
        ]
        .iter()
        .map(|name| {
            match ResourceName::parse(name, &td())
                .unwrap()
                .resolve(name, &caller)
                .unwrap()
            {
                Resolved::Certificate { purpose, .. } => purpose,
                other => panic!("{other:?}"),
            }
        })
        .collect();
        assert_eq!(
            purposes,
            [Purpose::Default, Purpose::Inbound, Purpose::Outbound]
        );
    }
}
