//! The Unix-socket server that traced processes send their spans to (issue: tracer and intake).
