//! Why the authority could not make or sign a certificate ([`AuthorityError`]), and what is
//! wrong with CA material offered to meshca ([`CaProblem`]).

use meshca_provider::KeyError;

/// Why the authority could not make or sign a certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// A name that cannot go into a certificate.
    #[error("cannot put {name:?} in a certificate: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A validity period that cannot be encoded.
    #[error("invalid validity period: {reason}")]
    InvalidValidity {
        /// What is wrong with it.
        reason: String,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A key could not be generated or used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The signing library refused to sign.
    #[error("could not sign the certificate: {reason}")]
    Sign {
        /// The library's reason.
        reason: String,
    },
    /// The CA certificate (or one above it) has expired: nothing it signs would verify.
    #[error(
        "the CA certificate chain of {subject} expired on {not_after}: import a renewed CA or \
         rotate to a new root"
    )]
    CaExpired {
        /// The signing CA's subject.
        subject: String,
        /// When the chain stopped being valid.
        not_after: String,
    },
    /// The leaf asked for would outlive the CA chain that vouches for it.
    #[error(
        "a certificate of {lifetime} asked for now would end at {ends}, after its CA {subject} \
         expires ({not_after}): ask for a lifetime of at most {at_most}, or rotate the CA"
    )]
    OutlivesCa {
        /// The lifetime asked for, as written in configuration (`24h`).
        lifetime: String,
        /// When the leaf would end.
        ends: String,
        /// The signing CA's subject.
        subject: String,
        /// The earliest NotAfter along the CA chain.
        not_after: String,
        /// The longest lifetime that would still fit, as written in configuration.
        at_most: String,
    },
    /// The CA's path length constraint forbids signing another CA.
    #[error(
        "{subject} may only sign leaf certificates (path length 0): sign per-cluster \
         intermediates with the root"
    )]
    PathLength {
        /// The signing CA's subject.
        subject: String,
    },
}

/// What is wrong with CA material (a certificate chain and its key) offered to meshca.
///
/// Messages say which certificate is affected and what to do; where the material came from
/// (a file path, a Secret key) is added by the caller — see [`StoredCa::authority`](crate::StoredCa::authority).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CaProblem {
    /// The certificate text is not valid PEM.
    #[error("not valid PEM: {reason}")]
    Unreadable {
        /// The parser's reason.
        reason: String,
    },
    /// No `CERTIFICATE` block at all.
    #[error("no CERTIFICATE PEM block found")]
    NoCertificate,
    /// A `CERTIFICATE` block that does not hold an X.509 certificate.
    #[error("certificate #{position} is not a valid X.509 certificate: {reason}")]
    MalformedCertificate {
        /// 1-based position in the file.
        position: usize,
        /// The parser's reason.
        reason: String,
    },
    /// A certificate without `basicConstraints CA:TRUE`.
    #[error(
        "{subject} is not a CA certificate (no basicConstraints CA:TRUE): meshca needs a root \
         or intermediate CA certificate here, not a leaf"
    )]
    NotCa {
        /// The certificate's subject.
        subject: String,
    },
    /// A CA whose key usage is missing or does not include keyCertSign.
    #[error(
        "{subject} is a CA but its keyUsage extension is missing or lacks keyCertSign (RFC 5280 \
         requires it, and strict verifiers reject the chain): reissue it with `keyUsage = \
         critical, keyCertSign, cRLSign`"
    )]
    CannotSign {
        /// The certificate's subject.
        subject: String,
    },
    /// The signing CA has no subjectKeyIdentifier, so issued certificates could not carry a
    /// matching authorityKeyIdentifier.
    #[error(
        "{subject} has no subjectKeyIdentifier extension (RFC 5280 requires one on CA \
         certificates): reissue the CA with `subjectKeyIdentifier = hash`"
    )]
    MissingSubjectKeyId {
        /// The certificate's subject.
        subject: String,
    },
    /// A certificate past its NotAfter.
    #[error(
        "{subject} expired on {not_after}: meshca will not replace it by itself; import a \
         renewed CA, or move the old material away to create a new root (every workload must \
         then trust the new root)"
    )]
    Expired {
        /// The certificate's subject.
        subject: String,
        /// Its NotAfter.
        not_after: String,
    },
    /// A certificate before its NotBefore.
    #[error("{subject} is not valid before {not_before}: check this machine's clock")]
    NotYetValid {
        /// The certificate's subject.
        subject: String,
        /// Its NotBefore.
        not_before: String,
    },
    /// A certificate not issued by the one after it.
    #[error(
        "{subject} is not signed by the next certificate in the chain ({issuer}): {reason}; \
         list the CA certificate first, then each issuer up to the root"
    )]
    ChainBroken {
        /// The certificate whose issuer is wrong.
        subject: String,
        /// The certificate that should have signed it.
        issuer: String,
        /// What failed.
        reason: String,
    },
    /// The last certificate is not a self-signed root.
    #[error(
        "the chain ends with {subject}, which is not a self-signed root: append the \
         certificates above it, up to and including the root"
    )]
    NotRooted {
        /// The last certificate's subject.
        subject: String,
    },
    /// The private key cannot be read.
    #[error(
        "the private key cannot be used: {reason}. meshca reads unencrypted PKCS#8 keys \
         (-----BEGIN PRIVATE KEY-----); convert one with `openssl pkcs8 -topk8 -nocrypt -in \
         KEY -out KEY.pkcs8`"
    )]
    UnreadableKey {
        /// Why the key was refused (never key material).
        reason: String,
    },
    /// The private key is not the CA certificate's key.
    #[error("the private key does not belong to {subject}: store the key that signed this CA")]
    KeyMismatch {
        /// The CA certificate's subject.
        subject: String,
    },
    /// A CA whose SPIFFE ID names a trust domain other than the one meshca serves.
    #[error(
        "{subject} is a CA for trust domain {found} (its SPIFFE ID is spiffe://{found}), but \
         this meshca serves trust domain {configured}: set trustDomain (--trust-domain) to \
         {found} to serve that trust domain, or use an intermediate made for {configured} \
         (meshca ca intermediate --for-trust-domain {configured})"
    )]
    ForeignTrustDomain {
        /// The CA certificate's subject.
        subject: String,
        /// The trust domain its SPIFFE ID names.
        found: String,
        /// The trust domain meshca is configured with.
        configured: String,
    },
    /// A subject name meshca cannot reproduce exactly as the issuer of what it signs.
    #[error("cannot issue under {subject}: {reason}")]
    UnsupportedSubject {
        /// The CA certificate's subject.
        subject: String,
        /// What is unsupported.
        reason: String,
    },
}

impl CaProblem {
    /// Whether the problem lies in the private key rather than the certificates.
    pub fn concerns_key(&self) -> bool {
        matches!(
            self,
            CaProblem::UnreadableKey { .. } | CaProblem::KeyMismatch { .. }
        )
    }
}
