//! Fake provider (helper writes this).
