//! Token buckets (TODO).
