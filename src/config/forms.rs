//! The YAML spellings some values accept besides their plain type.

use serde::Deserialize;

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
            "sds.unixSocketMode {n} is read as a decimal number: write the octal mode with a \
             leading zero, as a string if need be (\"0660\")"
        ))),
    }
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
