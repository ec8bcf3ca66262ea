//! The four client roles of the Vonage Video service, by their wire values.

use std::fmt;
use std::str::FromStr;

/// A Vonage Video client role. The wire values are fixed by the service:
/// `subscriber`, `publisher`, `publisheronly` (no hyphen) and `moderator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Subscriber,
    Publisher,
    PublisherOnly,
    Moderator,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Subscriber,
        Role::Publisher,
        Role::PublisherOnly,
        Role::Moderator,
    ];

    /// The value sent to the service in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Subscriber => "subscriber",
            Role::Publisher => "publisher",
            Role::PublisherOnly => "publisheronly",
            Role::Moderator => "moderator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The value was not one of the four wire values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid role {0:?}: expected one of subscriber, publisher, publisheronly, moderator")]
pub struct InvalidRole(pub String);

impl FromStr for Role {
    type Err = InvalidRole;

    /// Exact, case-sensitive wire values only: a near miss such as `Publisher` or
    /// `publisher-only` is refused rather than guessed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "subscriber" => Ok(Role::Subscriber),
            "publisher" => Ok(Role::Publisher),
            "publisheronly" => Ok(Role::PublisherOnly),
            "moderator" => Ok(Role::Moderator),
            other => Err(InvalidRole(other.chars().take(64).collect())),
        }
    }
}

impl serde::Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
    }

    #[test]
    fn near_misses_are_refused() {
        for bad in ["Publisher", "publisher-only", "admin", "", " moderator"] {
            assert!(bad.parse::<Role>().is_err(), "{bad:?} must be refused");
        }
    }
}
