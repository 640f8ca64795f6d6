//! Host-side bindings, one module per contract version (wit/v0.1, wit/v0.2), as Zed's
//! `extension_host` keeps one `since_vX` module per extension API version. A component is bound
//! with the module of the contract it imports ([`contract_of`]); each module has its own import
//! check. 0.2 reuses 0.1's types and host interface unchanged (`with`), so conversions are shared.

/// Contract 0.1 (frozen): match, instrumentation modules, enrich.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1",
        world: "sensor",
    });

    /// Imports a 0.1 sensor may have from the contract.
    pub fn import_allowed(name: &str) -> bool {
        name.strip_prefix("zerostep:sensor/")
            .is_some_and(|rest| rest.starts_with("host@0.1.") || rest.starts_with("types@0.1."))
    }
}

/// Contract 0.2: injection policy, instrumentation bundles, declarative rules.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2",
        world: "sensor",
        with: {
            "zerostep:sensor/types@0.1.0": super::v0_1::zerostep::sensor::types,
            "zerostep:sensor/host@0.1.0": super::v0_1::zerostep::sensor::host,
        },
    });

    /// Imports a 0.2 sensor may have from the contract: 0.1's types and host, 0.2's types.
    pub fn import_allowed(name: &str) -> bool {
        super::v0_1::import_allowed(name)
            || name
                .strip_prefix("zerostep:sensor/")
                .is_some_and(|rest| rest.starts_with("types@0.2."))
    }
}

pub use self::v0_1::zerostep::sensor::types as wit;
pub use self::v0_2::zerostep::sensor0_2_0::types as wit2;

/// The newest contract version this host implements (wit/v0.2's `package` line).
pub const CONTRACT_VERSION: &str = "0.2.0";

/// Every contract version this host loads, oldest first.
pub const CONTRACT_VERSIONS: &[&str] = &["0.1.0", "0.2.0"];

/// A contract version the host has bindings for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Contract {
    V0_1,
    V0_2,
}

impl Contract {
    pub fn as_str(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1",
            Contract::V0_2 => "0.2",
        }
    }

    /// Whether `version` (what `describe` says) belongs to this contract line: for 0.x the same
    /// minor, any patch level.
    pub fn accepts(self, version: &str) -> bool {
        let mut it = version.trim().split('.');
        let (Some(major), Some(minor), Some(patch), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return false;
        };
        if patch.parse::<u64>().is_err() || major != "0" {
            return false;
        }
        matches!((self, minor), (Contract::V0_1, "1") | (Contract::V0_2, "2"))
    }

    pub fn import_allowed(self, name: &str) -> bool {
        match self {
            Contract::V0_1 => v0_1::import_allowed(name),
            Contract::V0_2 => v0_2::import_allowed(name),
        }
    }
}

/// The contract a component was built for, from the contract interfaces it imports: the highest
/// `zerostep:sensor/...@0.N` among them. None: it imports none this host knows (built for a
/// later contract, or not a sensor).
pub fn contract_of<'a>(imports: impl IntoIterator<Item = &'a str>) -> Result<Contract, String> {
    let mut found = None;
    for name in imports {
        let Some(rest) = name.strip_prefix("zerostep:sensor/") else {
            continue;
        };
        let Some((_, version)) = rest.split_once('@') else {
            return Err(format!("imports `{name}` without a contract version"));
        };
        let c = if version.starts_with("0.1.") {
            Contract::V0_1
        } else if version.starts_with("0.2.") {
            Contract::V0_2
        } else {
            return Err(format!(
                "imports `{name}`: contract {version}, this agent implements {}",
                CONTRACT_VERSIONS.join(", ")
            ));
        };
        found = found.max(Some(c));
    }
    found.ok_or_else(|| "imports no zerostep:sensor interface".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_is_the_highest_version_imported() {
        let v1 = [
            "wasi:io/error@0.2.0",
            "zerostep:sensor/types@0.1.0",
            "zerostep:sensor/host@0.1.0",
        ];
        assert_eq!(contract_of(v1), Ok(Contract::V0_1));
        let v2 = ["zerostep:sensor/types@0.1.0", "zerostep:sensor/types@0.2.0"];
        assert_eq!(contract_of(v2), Ok(Contract::V0_2));
        assert!(contract_of(["zerostep:sensor/types@0.3.0"]).is_err());
        assert!(contract_of(["wasi:io/error@0.2.0"]).is_err());
    }

    #[test]
    fn each_contract_accepts_its_own_line_and_imports() {
        assert!(Contract::V0_1.accepts("0.1.0") && Contract::V0_1.accepts("0.1.7"));
        assert!(!Contract::V0_1.accepts("0.2.0") && !Contract::V0_2.accepts("0.1.0"));
        assert!(Contract::V0_2.accepts("0.2.1") && !Contract::V0_2.accepts("1.2.0"));
        assert!(!Contract::V0_2.accepts("0.2") && !Contract::V0_2.accepts("0.2.x"));
        assert!(!Contract::V0_1.import_allowed("zerostep:sensor/types@0.2.0"));
        assert!(Contract::V0_2.import_allowed("zerostep:sensor/types@0.2.0"));
        assert!(Contract::V0_2.import_allowed("zerostep:sensor/host@0.1.0"));
    }
}
