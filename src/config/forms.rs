//! The YAML spellings some values accept besides their plain type.

use serde::Deserialize;

use super::ConfigError;

/// How inline PEM text starts, as opposed to a file path.
pub(super) const PEM_BEGIN: &str = "-----BEGIN";

/// `Option<Duration>` as an optional Go-style string.
pub(super) mod optional_go {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_str(&meshca_provider::format_duration(*d)),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            Some(text) if !text.is_empty() => meshca_provider::parse_duration(&text)
                .map(Some)
                .map_err(D::Error::custom),
            _ => Ok(None),
        }
    }
}

/// A file mode written in octal. YAML reads `0660` as a string, but `660` and `0o660` as
/// numbers, which would be ambiguous: a number is refused with the spelling to use.
pub(super) fn octal_mode<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
    use serde::de::Error as _;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Mode {
        Text(String),
        Number(u64),
    }
    match Option::<Mode>::deserialize(deserializer)? {
        None => Ok(String::new()),
        Some(Mode::Text(text)) => Ok(text),
        Some(Mode::Number(n)) => Err(D::Error::custom(format!(
            "the socket mode {n} is read as a decimal number: write the octal mode with a \
             leading zero, as a string if need be (\"0660\")"
        ))),
    }
}

/// A Unix socket's mode (`sds.unixSocketMode`, `workloadApi.socketMode`: `key`), if `text` is
/// not empty: the permission bits, written in octal (`0660`, `0o660`), at most `0777`.
pub(super) fn socket_mode(key: &'static str, text: &str) -> Result<Option<u32>, ConfigError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(Some(mode)),
        _ => Err(ConfigError::InvalidValue {
            key,
            reason: format!(
                "{text:?} is not a file mode: write permission bits in octal, e.g. 0660 (owner \
                 and group) or 0600 (meshca's user only)"
            ),
        }),
    }
}

/// A Unix socket's group (`sds.unixSocketGroup`, `workloadApi.socketGroup`: `key`), if `text`
/// is not empty, as a gid: a number, or a name looked up in /etc/group (an unknown name is an
/// error now, not when the socket is bound).
pub(super) fn socket_group(key: &'static str, text: &str) -> Result<Option<u32>, ConfigError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(Some(gid));
    }
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    groups
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse::<u32>().ok()?;
            (name == text).then_some(gid)
        })
        .next()
        .map(Some)
        .ok_or_else(|| ConfigError::InvalidValue {
            key,
            reason: format!(
                "no group {text:?} in /etc/group: give an existing group name or a numeric gid"
            ),
        })
}

/// A name or a number (`--set sds.unixSocketGroup=1337` is a YAML number), kept as text.
pub(super) fn string_or_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Text(String),
        Number(u64),
    }
    Ok(match Option::<Text>::deserialize(deserializer)? {
        None => String::new(),
        Some(Text::Text(text)) => text,
        Some(Text::Number(n)) => n.to_string(),
    })
}

/// Reads a list from a YAML sequence, or from one string: inline PEM as one entry, anything
/// else as comma-separated paths (how `--set` and `MESHCA_*` give a list).
pub(super) fn one_or_many<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<String>),
        One(String),
    }
    Ok(match Option::<OneOrMany>::deserialize(deserializer)? {
        None => Vec::new(),
        Some(OneOrMany::Many(entries)) => entries,
        Some(OneOrMany::One(text)) if text.trim_start().starts_with(PEM_BEGIN) => vec![text],
        Some(OneOrMany::One(text)) => text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}
