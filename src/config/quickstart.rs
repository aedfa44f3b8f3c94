//! TODO: the built-in quickstart config.
