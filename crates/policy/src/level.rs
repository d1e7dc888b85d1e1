//! Takeover levels (DESIGN §6) and the effective-level arithmetic.

use std::fmt;

use agentplane_api::EnvironmentClass;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::PolicyError;

/// How much autonomy a run has: L1 observe · L2 suggest · L3 semi-auto · L4 auto · L5 autonomous.
///
/// Serialised as the integer 1–5, as in the resources (`AgentRun.spec.takeoverLevel`,
/// `Environment.spec.maxTakeoverLevel`). `Ord` follows autonomy: `L1 < L5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TakeoverLevel {
    /// Observe: nothing executes but reads.
    L1 = 1,
    /// Suggest: the agent suggests, humans execute.
    L2 = 2,
    /// Semi-automatic: non-critical operations execute, critical ones need approval.
    L3 = 3,
    /// Automatic: everything executes; critical operations are flagged for review.
    L4 = 4,
    /// Autonomous: everything executes.
    L5 = 5,
}

impl TakeoverLevel {
    /// Every level, lowest first.
    pub const ALL: [TakeoverLevel; 5] =
        [TakeoverLevel::L1, TakeoverLevel::L2, TakeoverLevel::L3, TakeoverLevel::L4, TakeoverLevel::L5];

    /// The level's number, 1–5.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The level for a number 1–5.
    pub fn from_u8(value: u8) -> Result<Self, PolicyError> {
        match value {
            1 => Ok(TakeoverLevel::L1),
            2 => Ok(TakeoverLevel::L2),
            3 => Ok(TakeoverLevel::L3),
            4 => Ok(TakeoverLevel::L4),
            5 => Ok(TakeoverLevel::L5),
            _ => Err(PolicyError::InvalidLevel { value: u64::from(value) }),
        }
    }

    /// `(maxTakeoverLevel, defaultTakeoverLevel)` of an environment class (DESIGN §6), taken from
    /// [`EnvironmentClass::default_levels`] so the two crates cannot disagree.
    pub fn class_defaults(class: EnvironmentClass) -> (TakeoverLevel, TakeoverLevel) {
        let (max, default) = class.default_levels();
        // The api crate's table only holds 1–5; fall back to the strictest level if it ever does not.
        (
            TakeoverLevel::from_u8(max).unwrap_or(TakeoverLevel::L1),
            TakeoverLevel::from_u8(default).unwrap_or(TakeoverLevel::L1),
        )
    }
}

impl fmt::Display for TakeoverLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.as_u8())
    }
}

impl TryFrom<u8> for TakeoverLevel {
    type Error = PolicyError;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        TakeoverLevel::from_u8(value)
    }
}

impl From<TakeoverLevel> for u8 {
    fn from(level: TakeoverLevel) -> u8 {
        level.as_u8()
    }
}

impl Serialize for TakeoverLevel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(self.as_u8())
    }
}

impl<'de> Deserialize<'de> for TakeoverLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(deserializer)?;
        u8::try_from(n)
            .ok()
            .and_then(|n| TakeoverLevel::from_u8(n).ok())
            .ok_or_else(|| serde::de::Error::custom(format!("takeover level {n} is not in 1..=5")))
    }
}

/// The environment's cap on the level, raised by an active emergency elevation.
///
/// Without an elevation the cap is `env_max`. An elevation to `level` raises it to
/// `max(env_max, min(level, emergency_max))`; when the environment allows no emergencies
/// (`emergency_max` is `None`) the elevation is ignored. An elevation never lowers the cap.
pub fn environment_cap(
    env_max: TakeoverLevel,
    emergency: Option<TakeoverLevel>,
    emergency_max: Option<TakeoverLevel>,
) -> TakeoverLevel {
    match (emergency, emergency_max) {
        (Some(elevated), Some(ceiling)) => env_max.max(elevated.min(ceiling)),
        _ => env_max,
    }
}

/// A run's effective level: `min(requested, environment cap, earned)` (DESIGN §6), where the
/// environment cap is `env_max` raised by an active emergency elevation to `emergency` (the
/// elevation's level, already bounded by the environment's emergency ceiling by whoever granted it).
///
/// An elevation raises only the environment's cap: the agent's earned level still bounds the run.
///
/// ```
/// use agentplane_policy::{TakeoverLevel::*, effective_level};
/// // production (max L2), the run asks for L4, the agent has earned L3
/// assert_eq!(effective_level(L4, L2, L3, None), L2);
/// // the same during an emergency elevation to L3
/// assert_eq!(effective_level(L4, L2, L3, Some(L3)), L3);
/// ```
pub fn effective_level(
    requested: TakeoverLevel,
    env_max: TakeoverLevel,
    earned: TakeoverLevel,
    emergency: Option<TakeoverLevel>,
) -> TakeoverLevel {
    let cap = environment_cap(env_max, emergency, emergency);
    requested.min(cap).min(earned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn level() -> impl Strategy<Value = TakeoverLevel> {
        proptest::sample::select(TakeoverLevel::ALL.to_vec())
    }

    #[test]
    fn serde_is_the_integer() {
        for l in TakeoverLevel::ALL {
            let json = serde_json::to_string(&l).unwrap();
            assert_eq!(json, l.as_u8().to_string());
            assert_eq!(serde_json::from_str::<TakeoverLevel>(&json).unwrap(), l);
        }
        for bad in ["0", "6", "-1", "\"L3\"", "3.5", "256"] {
            assert!(serde_json::from_str::<TakeoverLevel>(bad).is_err(), "{bad} must not parse");
        }
    }

    #[test]
    fn class_defaults_follow_design_section_6() {
        use TakeoverLevel::*;
        assert_eq!(TakeoverLevel::class_defaults(EnvironmentClass::Development), (L5, L3));
        assert_eq!(TakeoverLevel::class_defaults(EnvironmentClass::Test), (L4, L2));
        assert_eq!(TakeoverLevel::class_defaults(EnvironmentClass::PreProduction), (L3, L2));
        assert_eq!(TakeoverLevel::class_defaults(EnvironmentClass::Production), (L2, L1));
    }

    proptest! {
        #[test]
        fn effective_level_is_bounded_by_each_input(r in level(), m in level(), e in level(), em in proptest::option::of(level())) {
            let got = effective_level(r, m, e, em);
            prop_assert!(got <= r);
            prop_assert!(got <= e);
            prop_assert!(got <= m.max(em.unwrap_or(m)));
            // and it is the largest level with those bounds
            prop_assert_eq!(got, r.min(e).min(m.max(em.unwrap_or(m))));
        }

        #[test]
        fn an_elevation_never_lowers_the_cap(m in level(), em in proptest::option::of(level()), ceiling in proptest::option::of(level())) {
            prop_assert!(environment_cap(m, em, ceiling) >= m);
            if ceiling.is_none() || em.is_none() {
                prop_assert_eq!(environment_cap(m, em, ceiling), m);
            }
        }
    }
}
