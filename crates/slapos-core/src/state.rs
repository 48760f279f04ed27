use std::fmt;
use std::str::FromStr;

/// A state name that is not one of the allowed values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} state {value:?}: expected one of {expected}")]
pub struct StateError {
    pub kind: &'static str,
    pub value: String,
    pub expected: &'static str,
}

macro_rules! state_enum {
    ($(#[$doc:meta])* $name:ident, $kind:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// The wire and storage spelling.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = StateError;
            fn from_str(s: &str) -> Result<Self, StateError> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(StateError {
                        kind: $kind,
                        value: s.chars().take(64).collect(),
                        expected: concat!($($text, " "),+),
                    }),
                }
            }
        }
    };
}

state_enum!(
    /// State an instance's requester asks for.
    InstanceState, "instance", { Started => "started", Stopped => "stopped", Destroyed => "destroyed" }
);
state_enum!(
    /// State a user asks for a software release on a computer.
    SoftwareState, "software", { Available => "available", Destroyed => "destroyed" }
);
state_enum!(
    /// What a node last said about an instance or a software installation.
    ReportedState, "reported", {
        Building => "building", Available => "available", Started => "started",
        Stopped => "stopped", Destroyed => "destroyed", Error => "error"
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_reject_unknown() {
        for s in ["started", "stopped", "destroyed"] {
            assert_eq!(s.parse::<InstanceState>().unwrap().as_str(), s);
        }
        let err = "running".parse::<InstanceState>().unwrap_err();
        assert!(
            err.to_string().contains("started stopped destroyed"),
            "{err}"
        );
        assert!("started".parse::<SoftwareState>().is_err());
    }
}
