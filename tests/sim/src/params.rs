//! ARI request parameters: query string first, then a JSON body (ARI accepts both; `variables`
//! for originate usually comes in the body as `{"variables": {...}}`).

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub(crate) struct Params {
    pairs: Vec<(String, String)>,
    pub variables: BTreeMap<String, String>,
}

impl Params {
    pub(crate) fn parse(query: Option<&str>, body: &[u8]) -> Self {
        let mut p = Params::default();
        if let Some(q) = query {
            p.pairs = serde_urlencoded::from_str(q).unwrap_or_default();
        }
        if !body.is_empty()
            && let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body)
        {
            for (k, v) in map {
                match v {
                    serde_json::Value::String(s) => p.pairs.push((k, s)),
                    serde_json::Value::Object(vars) if k == "variables" => {
                        for (vk, vv) in vars {
                            let s = match vv {
                                serde_json::Value::String(s) => s,
                                other => other.to_string(),
                            };
                            p.variables.insert(vk, s);
                        }
                    }
                    serde_json::Value::Null => {}
                    other => p.pairs.push((k, other.to_string())),
                }
            }
        }
        p
    }

    /// Puts `pairs` before the parameters already parsed (they win: first occurrence).
    pub(crate) fn prepend(&mut self, mut pairs: Vec<(String, String)>) {
        pairs.append(&mut self.pairs);
        self.pairs = pairs;
    }

    /// First value of `name` (empty values count as missing, like Asterisk).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn get_u64(&self, name: &str) -> Option<u64> {
        self.get(name).and_then(|v| v.parse().ok())
    }

    pub(crate) fn has_true(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true") | Some("1") | Some("yes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_body() {
        let p = Params::parse(
            Some("endpoint=Local%2F8000%40default&app=conf&timeout="),
            br#"{"variables":{"X":"1","N":2},"callerId":"Bob"}"#,
        );
        assert_eq!(p.get("endpoint"), Some("Local/8000@default"));
        assert_eq!(p.get("timeout"), None);
        assert_eq!(p.get("callerId"), Some("Bob"));
        assert_eq!(p.variables.get("N").map(String::as_str), Some("2"));
    }
}
