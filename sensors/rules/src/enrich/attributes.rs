//! The attribute keys enrichment reads (OpenTelemetry semantic conventions, plus the older names
//! that tracers still emit), gathered from a span in one pass.

use super::span::Value;

/// Attribute keys, by name.
pub(crate) mod key {
    pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
    pub const HTTP_METHOD: &str = "http.method";
    pub const URL_PATH: &str = "url.path";
    pub const HTTP_TARGET: &str = "http.target";
    pub const URL_QUERY: &str = "url.query";
    pub const URL_FULL: &str = "url.full";
    pub const HTTP_URL: &str = "http.url";
    pub const HTTP_ROUTE: &str = "http.route";
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    pub const HTTP_STATUS_CODE: &str = "http.status_code";
    pub const ERROR_TYPE: &str = "error.type";
    pub const DB_SYSTEM: &str = "db.system";
    pub const DB_SYSTEM_NAME: &str = "db.system.name";
    pub const DB_QUERY_TEXT: &str = "db.query.text";
    pub const DB_STATEMENT: &str = "db.statement";
    pub const DB_CONNECTION_STRING: &str = "db.connection_string";
}

/// Request and response headers whose values are credentials (semconv header attributes are
/// string arrays named after the lower-case header).
pub(crate) const SECRET_HEADERS: &[&str] = &[
    "http.request.header.authorization",
    "http.request.header.proxy-authorization",
    "http.request.header.cookie",
    "http.request.header.x-api-key",
    "http.request.header.x-auth-token",
    "http.request.header.x-csrf-token",
    "http.response.header.set-cookie",
];

/// Every attribute key enrichment reads: the host passes only these into the sandbox.
pub const ATTRIBUTE_KEYS: &[&str] = &[
    key::HTTP_REQUEST_METHOD,
    key::HTTP_METHOD,
    key::URL_PATH,
    key::HTTP_TARGET,
    key::URL_QUERY,
    key::URL_FULL,
    key::HTTP_URL,
    key::HTTP_ROUTE,
    key::HTTP_RESPONSE_STATUS_CODE,
    key::HTTP_STATUS_CODE,
    key::ERROR_TYPE,
    key::DB_SYSTEM,
    key::DB_SYSTEM_NAME,
    key::DB_QUERY_TEXT,
    key::DB_STATEMENT,
    key::DB_CONNECTION_STRING,
    SECRET_HEADERS[0],
    SECRET_HEADERS[1],
    SECRET_HEADERS[2],
    SECRET_HEADERS[3],
    SECRET_HEADERS[4],
    SECRET_HEADERS[5],
    SECRET_HEADERS[6],
];

/// The values of the keys in [`ATTRIBUTE_KEYS`] present on one span, by position.
pub(crate) struct Known<'a> {
    values: [Option<Value<'a>>; ATTRIBUTE_KEYS.len()],
}

impl<'a> Known<'a> {
    pub fn collect(attributes: impl IntoIterator<Item = (&'a str, Value<'a>)>) -> Self {
        let mut values = [None; ATTRIBUTE_KEYS.len()];
        for (k, v) in attributes {
            // Every known key starts with one of these: most other attributes are skipped here.
            if !matches!(k.as_bytes().first(), Some(b'h' | b'u' | b'd' | b'e')) {
                continue;
            }
            if let Some(slot) = ATTRIBUTE_KEYS.iter().position(|known| *known == k) {
                values[slot] = Some(v);
            }
        }
        Known { values }
    }

    /// The value under `key` (which must be one of [`ATTRIBUTE_KEYS`]) together with that key as
    /// a `'static` string, for patches.
    pub fn get(&self, key: &str) -> Option<(&'static str, Value<'a>)> {
        let slot = ATTRIBUTE_KEYS.iter().position(|known| *known == key)?;
        self.values[slot].map(|v| (ATTRIBUTE_KEYS[slot], v))
    }

    pub fn str(&self, key: &str) -> Option<&'a str> {
        self.get(key).and_then(|(_, v)| v.as_str())
    }

    /// The first of `keys` that is present as a string (new semconv name first, then old ones).
    pub fn first_str(&self, keys: &[&'static str]) -> Option<(&'static str, &'a str)> {
        keys.iter().find_map(|k| self.str(k).map(|v| (*k, v)))
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}
