//! YAML 1.1 integers: `20_000` and `1_000_000` as LiteLLM configs write them.
//!
//! serde_yaml_ng follows YAML 1.2, where `20_000` is a string. The integer fields of the config
//! use these functions through `#[serde(deserialize_with = ...)]`, so both forms load and the
//! error for a wrong value keeps its key path and line.

use std::{fmt, marker::PhantomData};

use serde::de::{self, Deserializer, Visitor};

/// A required integer field.
pub(crate) fn int<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    d.deserialize_any(IntVisitor(PhantomData))
}

/// An optional integer field: `null` or `~` means unset.
pub(crate) fn opt_int<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    d.deserialize_option(OptIntVisitor(PhantomData))
}

/// Parses `20_000`, `+5` or `1_000_000` (YAML 1.1); `None` for anything else.
pub(crate) fn parse_yaml11(text: &str) -> Option<u64> {
    let digits = text.strip_prefix('+').unwrap_or(text);
    let starts_with_digit = digits.chars().next().is_some_and(|c| c.is_ascii_digit());
    if !starts_with_digit || !digits.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return None;
    }
    digits.replace('_', "").parse().ok()
}

struct IntVisitor<T>(PhantomData<T>);

impl<T: TryFrom<u64>> IntVisitor<T> {
    fn convert<E: de::Error>(&self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), self))
    }
}

impl<T: TryFrom<u64>> Visitor<'_> for IntVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a whole number that fits the field (`20_000` style is fine)")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.convert(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        match u64::try_from(v) {
            Ok(v) => self.convert(v),
            Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        // `30.0` is a whole number; `2.5` is not.
        if v.fract() == 0.0 && v >= 0.0 && v <= u64::MAX as f64 {
            self.convert(v as u64)
        } else {
            Err(E::invalid_value(de::Unexpected::Float(v), &self))
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        match parse_yaml11(v.trim()) {
            Some(n) => self.convert(n),
            None => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
        }
    }
}

struct OptIntVisitor<T>(PhantomData<T>);

impl<'de, T: TryFrom<u64>> Visitor<'de> for OptIntVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        IntVisitor::<T>(PhantomData).expecting(f)
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        int(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml11_integers() {
        assert_eq!(parse_yaml11("20_000"), Some(20_000));
        assert_eq!(parse_yaml11("1_000_000"), Some(1_000_000));
        assert_eq!(parse_yaml11("+7"), Some(7));
        assert_eq!(parse_yaml11("42"), Some(42));
        assert_eq!(parse_yaml11("_1"), None);
        assert_eq!(parse_yaml11("-5"), None);
        assert_eq!(parse_yaml11("1e3"), None);
        assert_eq!(parse_yaml11(""), None);
        assert_eq!(parse_yaml11("99999999999999999999999"), None);
    }
}
