//! Prices (TODO).
