//! Host-side bindings generated from the sensor contract (wit/sensor.wit).
wasmtime::component::bindgen!({
    path: "../wit",
    world: "sensor",
});

pub use self::zerostep::sensor::types as wit;

/// The contract version this host implements (the `package` line of wit/sensor.wit).
pub const CONTRACT_VERSION: &str = "0.1.0";
