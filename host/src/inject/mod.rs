//! Running code inside a live CPython process (issue: native injector).
