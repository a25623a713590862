//! A small validator for request bodies against an OpenAPI 2 (swagger) spec, for the
//! Firecracker contract test.
//!
//! It checks `$ref`, `type`, `required`, `properties`, `enum`, `minimum`/`maximum`,
//! `items` and `additionalProperties`. Objects are **closed** unless the schema says
//! otherwise, because Firecracker's API server rejects unknown fields
//! (`serde(deny_unknown_fields)`) even though the YAML does not say
//! `additionalProperties: false`.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where the official Firecracker spec lives: `<repo>/../shared/firecracker/firecracker-api.yaml`.
pub fn firecracker_spec_path() -> PathBuf {
    crate::repo_root()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
        .join("shared/firecracker/firecracker-api.yaml")
}

pub struct OpenApi {
    doc: Value,
}

impl OpenApi {
    pub fn load(path: &Path) -> Result<OpenApi, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let doc: Value =
            serde_yaml::from_str(&text).map_err(|e| format!("parse {}: {e}", path.display()))?;
        if doc.get("paths").is_none() {
            return Err(format!("{} has no `paths`", path.display()));
        }
        Ok(OpenApi { doc })
    }

    /// The body schema of `method path`, matching templated paths like `/drives/{drive_id}`.
    pub fn body_schema(&self, method: &str, path: &str) -> Result<&Value, String> {
        let paths = self.doc["paths"]
            .as_object()
            .ok_or("`paths` is not a map")?;
        let op = paths
            .iter()
            .find(|(template, _)| path_matches(template, path))
            .map(|(_, item)| item)
            .ok_or_else(|| format!("no path in the spec matches {path}"))?
            .get(method.to_ascii_lowercase())
            .ok_or_else(|| format!("{path} has no {method} operation in the spec"))?;
        let params = op["parameters"]
            .as_array()
            .ok_or_else(|| format!("{method} {path} has no parameters"))?;
        params
            .iter()
            .find(|p| p["in"] == "body")
            .and_then(|p| p.get("schema"))
            .ok_or_else(|| format!("{method} {path} takes no body"))
    }

    /// Validates `body` for `method path`; all problems are returned.
    pub fn validate(&self, method: &str, path: &str, body: &Value) -> Result<(), Vec<String>> {
        let schema = self.body_schema(method, path).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        self.check(schema, body, "body", &mut errors);
        // Path parameters that name the object must agree with the body (Firecracker checks).
        for (segment, field) in [
            ("/drives/", "drive_id"),
            ("/network-interfaces/", "iface_id"),
        ] {
            if let Some(id) = path.strip_prefix(segment)
                && body.get(field).and_then(Value::as_str) != Some(id)
            {
                errors.push(format!("body.{field} must equal the path id {id:?}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> Result<&'a Value, String> {
        let mut s = schema;
        for _ in 0..32 {
            match s.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    let pointer = r
                        .strip_prefix('#')
                        .ok_or_else(|| format!("external $ref {r} unsupported"))?;
                    s = self
                        .doc
                        .pointer(pointer)
                        .ok_or_else(|| format!("dangling $ref {r}"))?;
                }
                None => return Ok(s),
            }
        }
        Err("$ref chain too deep".into())
    }

    fn check(&self, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = match self.resolve(schema) {
            Ok(s) => s,
            Err(e) => return errors.push(format!("{at}: {e}")),
        };
        if let Some(t) = schema.get("type").and_then(Value::as_str) {
            let ok = match t {
                "object" => v.is_object(),
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                "array" => v.is_array(),
                _ => true,
            };
            if !ok {
                return errors.push(format!("{at}: expected {t}, got {v}"));
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            // YAML enums like `2M` parse as strings; compare textually for scalars.
            let text = |x: &Value| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            };
            if !allowed.iter().any(|a| text(a) == text(v)) {
                errors.push(format!("{at}: {v} is not one of {allowed:?}"));
            }
        }
        if let Some(n) = v.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && n < min
            {
                errors.push(format!("{at}: {n} is below the minimum {min}"));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && n > max
            {
                errors.push(format!("{at}: {n} is above the maximum {max}"));
            }
        }
        if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
            for (i, x) in arr.iter().enumerate() {
                self.check(items, x, &format!("{at}[{i}]"), errors);
            }
        }
        if let Some(obj) = v.as_object() {
            let props = schema.get("properties").and_then(Value::as_object);
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(name) = req.as_str()
                    && !obj.contains_key(name)
                {
                    errors.push(format!("{at}: missing required field `{name}`"));
                }
            }
            for (k, x) in obj {
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => self.check(ps, x, &format!("{at}.{k}"), errors),
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(true)) => {}
                        Some(extra @ Value::Object(_)) => {
                            self.check(extra, x, &format!("{at}.{k}"), errors)
                        }
                        _ => errors.push(format!(
                            "{at}: unknown field `{k}` (Firecracker rejects unknown fields)"
                        )),
                    },
                }
            }
        }
    }
}

fn path_matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(a, b)| (a.starts_with('{') && a.ends_with('}') && !b.is_empty()) || a == b)
}
