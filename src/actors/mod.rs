//! The actors (TODO).
