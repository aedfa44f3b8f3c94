//! Telemetry (TODO).
