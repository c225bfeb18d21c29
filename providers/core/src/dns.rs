//! DNS names for certificates: [`DnsName`], a hostname checked once, where it enters meshca.
//!
//! Every DNS name meshca puts in a certificate — `meshca issue --dns`, a managed Secret's
//! annotation read back by the rotation cron, the names sent to Vault and cert-manager — is a
//! [`DnsName`]: [`LeafSpec`](crate::LeafSpec) holds nothing else, so a name that is not a valid
//! hostname cannot reach a provider.
//!
//! The rules (RFC 1035 §2.3.1 and RFC 1123 §2.1 "LDH" hostnames, RFC 5280 §4.2.1.6):
//! - labels of 1 to 63 letters, digits and hyphens, not starting or ending with a hyphen;
//! - at most 253 characters in all, no empty label, no trailing dot;
//! - ASCII only: an internationalised name is written in its `xn--` (punycode) form;
//! - not an IP address, and no all-numeric (or `0x…`) last label, which resolvers and browsers
//!   read as one (`1.2.3.4`, `0x7f000001`; RFC 3696 §2: top-level domains are not numeric);
//! - a wildcard only as the whole leftmost label (`*.example.com`), only where the caller
//!   allows it ([`DnsName::with_wildcard`]), and above at least two labels (`*.com` is refused).
//!
//! Names are stored in lowercase (DNS names compare case-insensitively, RFC 4343), so two
//! spellings of one name are equal and [`dedup`] drops the second.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

/// Longest DNS name in its text form without the trailing dot (RFC 1035's 255 octets on the
/// wire).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// A valid hostname for a certificate's DNS SAN, in lowercase. See the [module docs](self).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsName(Arc<str>);

/// A name that is not a valid hostname: the name as given (shown escaped) and the rule it
/// breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a valid DNS name: {problem}")]
pub struct DnsNameError {
    /// The name as given.
    pub name: String,
    /// The rule it breaks.
    pub problem: DnsNameProblem,
}

/// Which rule a refused DNS name breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsNameProblem {
    /// Nothing was given.
    #[error("it is empty")]
    Empty,
    /// A control character (C0, DEL or C1), which no hostname has.
    #[error("it contains the control character {character:?}")]
    ControlCharacter {
        /// The first one found.
        character: char,
    },
    /// A character outside ASCII.
    #[error(
        "it contains {character:?}, which is not ASCII: write an internationalised name in its \
         xn-- (punycode) form"
    )]
    NotAscii {
        /// The first one found.
        character: char,
    },
    /// The fully qualified form with its final dot.
    #[error("it ends with a dot: write it without the final dot")]
    TrailingDot,
    /// More than [`MAX_NAME_LEN`] characters.
    #[error("it is {len} characters long; a DNS name has at most 253")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// An IP address, or a name whose last label is numeric and so reads as one.
    #[error(
        "it is (or reads as) an IP address, not a DNS name; a numeric last label is never a \
         hostname"
    )]
    IpAddress,
    /// Two dots in a row, or a leading dot.
    #[error("it has an empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    /// A label over [`MAX_LABEL_LEN`] characters.
    #[error("its label {label:?} is {len} characters long; a label has at most 63")]
    LabelTooLong {
        /// The label.
        label: String,
        /// Its length.
        len: usize,
    },
    /// A character other than a letter, a digit or a hyphen in a label.
    #[error("it contains {character:?}: labels hold only letters, digits and '-'")]
    NotLdh {
        /// The first one found.
        character: char,
    },
    /// A label that starts or ends with a hyphen.
    #[error("its label {label:?} starts or ends with '-'")]
    HyphenAtEdge {
        /// The label.
        label: String,
    },
    /// A wildcard where none is allowed.
    #[error("wildcard names are not allowed here")]
    WildcardNotAllowed,
    /// A `*` that is not the whole leftmost label.
    #[error("a wildcard must be the whole leftmost label, as in *.example.com")]
    WildcardMisplaced,
    /// `*.com`: a wildcard over fewer than two labels.
    #[error("a wildcard needs at least two labels after it, as in *.example.com")]
    WildcardTooBroad,
}

impl DnsName {
    /// Checks `name` as a hostname without wildcard. The same as `name.parse()`.
    pub fn new(name: &str) -> Result<Self, DnsNameError> {
        Self::check(name, false)
    }

    /// Checks `name` as a hostname, accepting a wildcard leftmost label (`*.example.com`).
    pub fn with_wildcard(name: &str) -> Result<Self, DnsNameError> {
        Self::check(name, true)
    }

    fn check(name: &str, wildcard_allowed: bool) -> Result<Self, DnsNameError> {
        problem(name, wildcard_allowed)
            .map(|problem| {
                Err(DnsNameError {
                    name: name.to_owned(),
                    problem,
                })
            })
            .unwrap_or_else(|| Ok(Self(name.to_ascii_lowercase().into())))
    }

    /// The name, in lowercase.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the leftmost label is the wildcard `*`.
    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }
}

/// The names in order, each once (names are lowercase, so this is case-insensitive).
pub fn dedup(names: impl IntoIterator<Item = DnsName>) -> Vec<DnsName> {
    let mut out: Vec<DnsName> = Vec::new();
    for name in names {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// The first rule `name` breaks, if any.
fn problem(name: &str, wildcard_allowed: bool) -> Option<DnsNameProblem> {
    if name.is_empty() {
        return Some(DnsNameProblem::Empty);
    }
    if let Some(character) = name.chars().find(|c| c.is_control()) {
        return Some(DnsNameProblem::ControlCharacter { character });
    }
    if let Some(character) = name.chars().find(|c| !c.is_ascii()) {
        return Some(DnsNameProblem::NotAscii { character });
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Some(DnsNameProblem::IpAddress);
    }
    if name.ends_with('.') && name.len() > 1 && !name.ends_with("..") {
        return Some(DnsNameProblem::TrailingDot);
    }
    if name.len() > MAX_NAME_LEN {
        return Some(DnsNameProblem::TooLong { len: name.len() });
    }
    let labels: Vec<&str> = name.split('.').collect();
    for (index, label) in labels.iter().enumerate() {
        if label.is_empty() {
            return Some(DnsNameProblem::EmptyLabel);
        }
        if label.contains('*') {
            if index != 0 || *label != "*" {
                return Some(DnsNameProblem::WildcardMisplaced);
            }
            if !wildcard_allowed {
                return Some(DnsNameProblem::WildcardNotAllowed);
            }
            if labels.len() < 3 {
                return Some(DnsNameProblem::WildcardTooBroad);
            }
            continue;
        }
        if label.len() > MAX_LABEL_LEN {
            return Some(DnsNameProblem::LabelTooLong {
                label: (*label).to_owned(),
                len: label.len(),
            });
        }
        if let Some(character) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Some(DnsNameProblem::NotLdh { character });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(DnsNameProblem::HyphenAtEdge {
                label: (*label).to_owned(),
            });
        }
    }
    let last = labels.last().copied().unwrap_or_default();
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|digits| digits.chars().all(|c| c.is_ascii_hexdigit()));
    if hex || last.chars().all(|c| c.is_ascii_digit()) {
        return Some(DnsNameProblem::IpAddress);
    }
    None
}

impl FromStr for DnsName {
    type Err = DnsNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DnsName({})", self.0)
    }
}

impl Deref for DnsName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for DnsName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for DnsName {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for DnsName {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for DnsName {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_round_trip_in_lowercase() {
        for (text, shown) in [
            ("example.com", "example.com"),
            ("webhook", "webhook"),
            (
                "meshca-webhook.meshca-system.svc",
                "meshca-webhook.meshca-system.svc",
            ),
            ("Web.Example.COM", "web.example.com"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("a1.b2.c3", "a1.b2.c3"),
            ("1a.example", "1a.example"),
            ("123.example.com", "123.example.com"),
        ] {
            let name: DnsName = text.parse().unwrap();
            assert_eq!(name.to_string(), shown);
            assert_eq!(name.to_string().parse::<DnsName>().unwrap(), name);
            assert!(!name.is_wildcard());
        }
        let longest_label = format!("{}.example", "a".repeat(63));
        assert!(DnsName::new(&longest_label).is_ok());
        let longest = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
        assert_eq!(longest.len(), 253);
        assert!(DnsName::new(&longest).is_ok());
        let too_long = format!("{longest}b");
        assert_eq!(
            DnsName::new(&too_long).unwrap_err().problem,
            DnsNameProblem::TooLong { len: 254 }
        );
    }

    #[test]
    fn each_rule_has_its_error() {
        use DnsNameProblem as P;
        let label64 = format!("{}.example", "a".repeat(64));
        let long = ["abcdefghij"; 26].join(".");
        type Check = fn(&DnsNameProblem) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |p| *p == P::Empty),
            ("a..b", |p| *p == P::EmptyLabel),
            (".a.b", |p| *p == P::EmptyLabel),
            ("foo.", |p| *p == P::TrailingDot),
            (".", |p| *p == P::EmptyLabel),
            (
                "-x.com",
                |p| matches!(p, P::HyphenAtEdge { label } if label == "-x"),
            ),
            ("x-.com", |p| matches!(p, P::HyphenAtEdge { .. })),
            ("1.2.3.4", |p| *p == P::IpAddress),
            ("::1", |p| *p == P::IpAddress),
            ("fe80::1", |p| *p == P::IpAddress),
            ("10.0.0", |p| *p == P::IpAddress),
            ("0x7f000001", |p| *p == P::IpAddress),
            ("host.0X1F", |p| *p == P::IpAddress),
            ("8080", |p| *p == P::IpAddress),
            (&label64, |p| matches!(p, P::LabelTooLong { len: 64, .. })),
            (&long, |p| matches!(p, P::TooLong { len: 285 })),
            ("a_b.example", |p| *p == P::NotLdh { character: '_' }),
            ("a b.example", |p| *p == P::NotLdh { character: ' ' }),
            ("a/b", |p| *p == P::NotLdh { character: '/' }),
            ("host:443", |p| *p == P::NotLdh { character: ':' }),
            ("bücher.example", |p| *p == P::NotAscii { character: 'ü' }),
            ("evil\u{1b}[2J.example", |p| {
                *p == P::ControlCharacter {
                    character: '\u{1b}',
                }
            }),
            ("a\nb", |p| *p == P::ControlCharacter { character: '\n' }),
            ("a\u{7f}b", |p| {
                *p == P::ControlCharacter {
                    character: '\u{7f}',
                }
            }),
            ("a\u{9b}b", |p| {
                *p == P::ControlCharacter {
                    character: '\u{9b}',
                }
            }),
            ("*.example.com", |p| *p == P::WildcardNotAllowed),
            ("a.*.example.com", |p| *p == P::WildcardMisplaced),
            ("f*o.example.com", |p| *p == P::WildcardMisplaced),
        ];
        for (text, is_expected) in cases {
            let error = DnsName::new(text).expect_err(text);
            assert_eq!(error.name, *text);
            assert!(is_expected(&error.problem), "{text:?} gave {error:?}");
        }
    }

    #[test]
    fn wildcards_only_where_allowed() {
        let name = DnsName::with_wildcard("*.Example.com").unwrap();
        assert!(name.is_wildcard());
        assert_eq!(name, "*.example.com");
        assert_eq!(
            DnsName::with_wildcard("*.com").unwrap_err().problem,
            DnsNameProblem::WildcardTooBroad
        );
        assert_eq!(
            DnsName::with_wildcard("*.*.example.com")
                .unwrap_err()
                .problem,
            DnsNameProblem::WildcardMisplaced
        );
        assert!(DnsName::with_wildcard("plain.example.com").is_ok());
    }

    #[test]
    fn messages_name_the_name_escaped_and_the_rule() {
        let error = DnsName::new("a..b").unwrap_err();
        assert_eq!(
            error.to_string(),
            "\"a..b\" is not a valid DNS name: it has an empty label (two dots in a row, or a \
             leading dot)"
        );
        let error = DnsName::new("x\u{1b}]0;pwned\u{7}.example").unwrap_err();
        let text = error.to_string();
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.contains("\\u{1b}"), "{text}");
    }

    #[test]
    fn duplicates_are_dropped_case_insensitively_in_order() {
        let names = [
            "b.example",
            "A.example",
            "a.example",
            "B.EXAMPLE",
            "c.example",
        ]
        .map(|n| n.parse::<DnsName>().unwrap());
        assert_eq!(
            dedup(names),
            ["b.example", "a.example", "c.example"].map(|n| n.parse::<DnsName>().unwrap())
        );
    }
}
