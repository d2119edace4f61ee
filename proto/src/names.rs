//! The volume-name rule, owned by one type: `VolumeName`. storaged's API and frontends and the
//! CSI driver's name mapping all parse names through it, so they agree on what a name is.

use std::fmt;

/// Longest name, in bytes (a Kubernetes object name's limit).
pub const MAX_NAME_LEN: usize = 253;

/// A name storaged accepts for a volume (and a snapshot, a node, a copy target): 1 to
/// [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `-`, `_` and `.`, and neither `.` nor `..`
/// (names become path components on the nodes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeName(String);

/// The part of the rule a name breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong { len: usize },
    BadCharacter { name: String },
    DotPath { name: String },
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "is required"),
            NameError::TooLong { len } => {
                write!(f, "is {len} bytes, longer than {MAX_NAME_LEN}")
            }
            NameError::BadCharacter { name } => write!(
                f,
                "`{name}` may contain only letters, digits, '-', '_' and '.'"
            ),
            NameError::DotPath { name } => write!(f, "`{name}` is a path component, not a name"),
        }
    }
}

impl std::error::Error for NameError {}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

impl VolumeName {
    /// Checks `s` against the rule; the error says which part it breaks.
    pub fn parse(s: &str) -> Result<VolumeName, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong { len: s.len() });
        }
        if !s.chars().all(allowed) {
            return Err(NameError::BadCharacter { name: s.into() });
        }
        if s == "." || s == ".." {
            return Err(NameError::DotPath { name: s.into() });
        }
        Ok(VolumeName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for VolumeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for VolumeName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VolumeName::parse(s)
    }
}

impl From<VolumeName> for String {
    fn from(n: VolumeName) -> String {
        n.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_part_of_the_rule_is_named() {
        assert_eq!(VolumeName::parse(""), Err(NameError::Empty));
        assert_eq!(
            VolumeName::parse(&"a".repeat(254)),
            Err(NameError::TooLong { len: 254 })
        );
        assert!(matches!(
            VolumeName::parse("a/b"),
            Err(NameError::BadCharacter { .. })
        ));
        assert!(matches!(
            VolumeName::parse(".."),
            Err(NameError::DotPath { .. })
        ));
        let e = VolumeName::parse("pv 1").unwrap_err().to_string();
        assert!(e.contains("`pv 1`") && e.contains("letters, digits"), "{e}");
    }

    #[test]
    fn accepted_names_keep_their_text() {
        for s in ["pvc-0b7e1c2a-9d", "a.b_c-D9", "...", ".a", &"z".repeat(253)] {
            let n = VolumeName::parse(s).unwrap();
            assert_eq!((n.as_str(), n.to_string().as_str(), n.as_ref()), (s, s, s));
        }
    }

    /// The rule written out plainly, the way the property below checks `parse` against it.
    fn by_the_rule(s: &str) -> bool {
        (1..=MAX_NAME_LEN).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s != "."
            && s != ".."
    }

    proptest! {
        #[test]
        fn parse_accepts_exactly_the_rule(s in "[a-zA-Z0-9._/ é-]{0,260}|\\.{1,3}|[a-z.]{250,256}") {
            prop_assert_eq!(VolumeName::parse(&s).is_ok(), by_the_rule(&s));
        }

        #[test]
        fn parse_accepts_exactly_the_rule_on_any_text(s in any::<String>()) {
            prop_assert_eq!(VolumeName::parse(&s).is_ok(), by_the_rule(&s));
        }
    }
}
