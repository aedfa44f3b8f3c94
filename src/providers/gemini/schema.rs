//! JSON Schema (what OpenAI's `tools[].function.parameters` and `response_format.json_schema`
//! hold) → Gemini's `Schema`, an OpenAPI 3.0 subset that refuses keywords it does not know.
//!
//! What changes, as LiteLLM does it (`_build_vertex_schema`) and a little more:
//! - `$ref` to `#/$defs/…` or `#/definitions/…` is inlined, and `$defs`/`definitions` go;
//! - `anyOf`/`oneOf` with a `{"type":"null"}` branch, and `"type": [T, "null"]`, become the
//!   other branch with `nullable: true`; `oneOf` becomes `anyOf`; a one-branch `allOf` is
//!   merged; `const: "x"` becomes `enum: ["x"]`;
//! - every keyword outside Gemini's `Schema` is dropped: `additionalProperties`, `$schema`,
//!   `$id`, `title`, `strict`, `examples`, `exclusiveMinimum`, `patternProperties`, ….

use serde_json::{Map, Value, json};

/// The keywords of Gemini's `Schema` that are kept (`title` is dropped as LiteLLM does).
const KEPT: &[&str] = &[
    "type",
    "format",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

/// How deep `$ref`s are followed: deeper (or recursive) references become `{}`.
const MAX_DEPTH: usize = 32;

/// Converts a JSON Schema into Gemini's `Schema`.
pub fn to_gemini(schema: &Value) -> Value {
    let mut defs = Map::new();
    for key in ["$defs", "definitions"] {
        if let Some(Value::Object(found)) = schema.get(key) {
            defs.extend(found.clone());
        }
    }
    convert(schema, &defs, 0)
}

fn convert(node: &Value, defs: &Map<String, Value>, depth: usize) -> Value {
    let Value::Object(map) = node else {
        return node.clone();
    };
    if depth > MAX_DEPTH {
        return json!({});
    }
    if let Some(target) = map.get("$ref").and_then(Value::as_str) {
        let name = target
            .strip_prefix("#/$defs/")
            .or_else(|| target.strip_prefix("#/definitions/"));
        let mut resolved = match name.and_then(|n| defs.get(n)) {
            Some(def) => convert(def, defs, depth + 1),
            None => json!({}),
        };
        if let (Some(description), Value::Object(out)) = (map.get("description"), &mut resolved) {
            out.insert("description".into(), description.clone());
        }
        return resolved;
    }

    let mut out = Map::new();
    for (key, value) in map {
        match key.as_str() {
            "anyOf" | "oneOf" => merge_alternatives(&mut out, value, defs, depth),
            "allOf" => {
                if let Some([only]) = value.as_array().map(Vec::as_slice) {
                    merge_into(&mut out, convert(only, defs, depth + 1));
                }
            }
            "type" => set_type(&mut out, value),
            "const" => {
                out.insert("enum".into(), json!([value]));
            }
            "properties" => {
                if let Value::Object(props) = value {
                    let props: Map<String, Value> = props
                        .iter()
                        .map(|(k, v)| (k.clone(), convert(v, defs, depth + 1)))
                        .collect();
                    out.insert(key.clone(), Value::Object(props));
                }
            }
            "items" => {
                let items = match value {
                    Value::Array(list) => list.first().cloned().unwrap_or_else(|| json!({})),
                    other => other.clone(),
                };
                out.insert(key.clone(), convert(&items, defs, depth + 1));
            }
            k if KEPT.contains(&k) => {
                out.entry(key.clone()).or_insert_with(|| value.clone());
            }
            _ => {}
        }
    }
    Value::Object(out)
}

/// `"type": "string"` as is; `"type": ["string", "null"]` → `string` + `nullable`; several
/// non-null types → `anyOf` of them.
fn set_type(out: &mut Map<String, Value>, value: &Value) {
    let Value::Array(types) = value else {
        out.insert("type".into(), value.clone());
        return;
    };
    let non_null: Vec<&Value> = types
        .iter()
        .filter(|t| t.as_str() != Some("null"))
        .collect();
    if non_null.len() < types.len() {
        out.insert("nullable".into(), Value::Bool(true));
    }
    match non_null.as_slice() {
        [] => {}
        [one] => {
            out.insert("type".into(), (*one).clone());
        }
        many => {
            let branches: Vec<Value> = many.iter().map(|t| json!({"type": t})).collect();
            out.insert("anyOf".into(), Value::Array(branches));
        }
    }
}

/// `anyOf`/`oneOf`: null branches become `nullable`; a single remaining branch is merged into
/// the node, several stay an `anyOf`.
fn merge_alternatives(
    out: &mut Map<String, Value>,
    value: &Value,
    defs: &Map<String, Value>,
    depth: usize,
) {
    let Some(branches) = value.as_array() else {
        return;
    };
    let is_null = |b: &Value| b.get("type").and_then(Value::as_str) == Some("null");
    let rest: Vec<Value> = branches
        .iter()
        .filter(|b| !is_null(b))
        .map(|b| convert(b, defs, depth + 1))
        .collect();
    if rest.len() < branches.len() {
        out.insert("nullable".into(), Value::Bool(true));
    }
    match rest.len() {
        0 => {}
        1 => merge_into(out, rest.into_iter().next().unwrap_or_default()),
        _ => {
            out.insert("anyOf".into(), Value::Array(rest));
        }
    }
}

/// Copies `from`'s keywords into `out` where `out` has none of its own.
fn merge_into(out: &mut Map<String, Value>, from: Value) {
    if let Value::Object(from) = from {
        for (k, v) in from {
            out.entry(k).or_insert(v);
        }
    }
}

/// True for an object schema without properties: Gemini refuses such `parameters`
/// ("should be non-empty for OBJECT type"), so a function without parameters sends none.
pub fn is_empty_object(schema: &Value) -> bool {
    let is_object = schema
        .get("type")
        .and_then(Value::as_str)
        .is_none_or(|t| t.eq_ignore_ascii_case("object"));
    let no_props = schema
        .get("properties")
        .and_then(Value::as_object)
        .is_none_or(Map::is_empty);
    is_object && no_props && schema.get("anyOf").is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_keywords_are_dropped_recursively() {
        let schema = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "title": "Weather",
            "additionalProperties": false,
            "properties": {
                "city": {"type": "string", "title": "City", "description": "name"},
                "days": {"type": "array", "items": {"type": "integer", "exclusiveMinimum": 0}}
            },
            "required": ["city"]
        });
        assert_eq!(
            to_gemini(&schema),
            json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "name"},
                    "days": {"type": "array", "items": {"type": "integer"}}
                },
                "required": ["city"]
            })
        );
    }

    #[test]
    fn refs_nullables_and_consts() {
        let schema = json!({
            "type": "object",
            "$defs": {"Unit": {"type": "string", "enum": ["c", "f"]}},
            "properties": {
                "unit": {"$ref": "#/$defs/Unit"},
                "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "count": {"type": ["integer", "null"]},
                "kind": {"const": "weather"},
                "loop": {"$ref": "#/$defs/Missing"}
            }
        });
        assert_eq!(
            to_gemini(&schema),
            json!({
                "type": "object",
                "properties": {
                    "unit": {"type": "string", "enum": ["c", "f"]},
                    "note": {"type": "string", "nullable": true},
                    "count": {"type": "integer", "nullable": true},
                    "kind": {"enum": ["weather"]},
                    "loop": {}
                }
            })
        );
    }

    #[test]
    fn recursive_refs_stop() {
        let schema = json!({
            "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
            "$ref": "#/$defs/Node"
        });
        let out = to_gemini(&schema);
        assert_eq!(out["type"], "object");
    }

    #[test]
    fn empty_objects_are_detected() {
        assert!(is_empty_object(
            &json!({"type": "object", "properties": {}})
        ));
        assert!(is_empty_object(&json!({})));
        assert!(!is_empty_object(
            &json!({"type": "object", "properties": {"a": {"type": "string"}}})
        ));
    }
}
