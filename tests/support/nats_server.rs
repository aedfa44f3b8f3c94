//! Private nats-server (lead writes this).
