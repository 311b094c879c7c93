//! The API's documentation: the OpenAPI document made valid (every response described)
//! and `GET /docs`, a page rendered from it on the server (no script, nothing fetched
//! from elsewhere) for an API user to browse.

use std::fmt::Write;

use utoipa::openapi::path::Operation;
use utoipa::openapi::{OpenApi, RefOr};

/// What a response of `status` means when its handler says nothing more.
fn meaning(status: &str) -> String {
    let said = match status {
        "200" => "Success",
        "201" => "Created",
        "400" => "The request is malformed or invalid; the error says why",
        "401" => "No, an invalid or an expired credential",
        "402" => "The account may not spend now, or the call's worst case does not fit",
        "403" => "The credential may not do this",
        "404" => "No such resource, or one the caller may not see",
        "405" => "Method not allowed",
        "408" => "The request body did not arrive in time",
        "409" => "Conflicts with what exists",
        "410" => "Expired",
        "413" => "The request body is too large",
        "429" => "Too many requests; see Retry-After",
        "502" => "The upstream failed",
        "503" => "A part of the gateway is unavailable; retry shortly",
        "504" => "The upstream did not answer in time",
        _ => "",
    };
    if !said.is_empty() {
        return said.to_owned();
    }
    status
        .parse::<u16>()
        .ok()
        .and_then(|s| axum::http::StatusCode::from_u16(s).ok())
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Response")
        .to_owned()
}

fn operations(doc: &mut OpenApi) -> impl Iterator<Item = &mut Operation> {
    doc.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
    })
}

/// Makes the document valid for client generators and viewers: every response gets a
/// description (its status's meaning, when the handler gives none), and every operation a
/// unique id (handlers of different modules share names such as `list`: those become
/// `<tag>_<name>`).
pub fn describe_responses(doc: &mut OpenApi) {
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    for op in operations(doc) {
        if let Some(id) = &op.operation_id {
            *seen.entry(id.clone()).or_default() += 1;
        }
    }
    for op in operations(doc) {
        if let Some(id) = op.operation_id.as_mut()
            && seen.get(id.as_str()).is_some_and(|n| *n > 1)
        {
            let tag = op.tags.as_ref().and_then(|t| t.first()).cloned();
            *id = format!("{}_{id}", tag.unwrap_or_else(|| "api".into()));
        }
    }
    for op in operations(doc) {
        for (status, response) in op.responses.responses.iter_mut() {
            if let RefOr::T(r) = response
                && r.description.trim().is_empty()
            {
                r.description = meaning(status);
            }
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The HTML of `GET /docs`: every operation grouped by tag, with its parameters, body and
/// responses, then every schema.
pub fn page(doc: &serde_json::Value) -> String {
    use serde_json::Value;
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Neuropia API</title>\
         <style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;\
         padding:0 1rem}code,pre{background:#f4f4f4;padding:.1rem .3rem}pre{padding:.5rem;\
         overflow:auto}.op{border-left:3px solid #888;padding-left:.8rem;margin:1.2rem 0}\
         .m{font-weight:bold;text-transform:uppercase}</style></head><body>",
    );
    let info = &doc["info"];
    let _ = write!(
        out,
        "<h1>{}</h1><p>{}</p><p>The machine-readable document: \
         <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI {}).</p>",
        escape(info["title"].as_str().unwrap_or("API")),
        escape(info["description"].as_str().unwrap_or("")),
        escape(doc["openapi"].as_str().unwrap_or(""))
    );
    let mut by_tag: std::collections::BTreeMap<String, Vec<(String, String, &Value)>> =
        Default::default();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
                if let Some(op) = item.get(method) {
                    let tag = op["tags"][0].as_str().unwrap_or("other").to_owned();
                    by_tag
                        .entry(tag)
                        .or_default()
                        .push((method.to_owned(), path.clone(), op));
                }
            }
        }
    }
    let tags: Vec<(String, String)> = doc["tags"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| {
                    let name = t["name"].as_str().unwrap_or("").to_owned();
                    let about = t["description"].as_str().unwrap_or("").to_owned();
                    (name, about)
                })
                .collect()
        })
        .unwrap_or_default();
    for (tag, ops) in &by_tag {
        let about = tags.iter().find(|(n, _)| n == tag).map_or("", |(_, a)| a);
        let _ = write!(out, "<h2>{}</h2><p>{}</p>", escape(tag), escape(about));
        for (method, path, op) in ops {
            let _ = write!(
                out,
                "<div class=\"op\"><p><span class=\"m\">{method}</span> <code>{}</code></p><p>{}</p>",
                escape(path),
                escape(
                    op["description"]
                        .as_str()
                        .or(op["summary"].as_str())
                        .unwrap_or("")
                )
            );
            if let Some(params) = op["parameters"].as_array() {
                out.push_str("<p>Parameters:</p><ul>");
                for p in params {
                    let _ = write!(
                        out,
                        "<li><code>{}</code> ({}{}) {}</li>",
                        escape(p["name"].as_str().unwrap_or("")),
                        escape(p["in"].as_str().unwrap_or("")),
                        if p["required"] == true {
                            ", required"
                        } else {
                            ""
                        },
                        escape(p["description"].as_str().unwrap_or(""))
                    );
                }
                out.push_str("</ul>");
            }
            if let Some(body) = op.get("requestBody") {
                let _ = write!(
                    out,
                    "<p>Body: {} {}</p>",
                    schema_of(&body["content"]),
                    escape(body["description"].as_str().unwrap_or(""))
                );
            }
            if let Some(responses) = op["responses"].as_object() {
                out.push_str("<p>Responses:</p><ul>");
                for (status, r) in responses {
                    let _ = write!(
                        out,
                        "<li><b>{}</b> {} {}</li>",
                        escape(status),
                        escape(r["description"].as_str().unwrap_or("")),
                        schema_of(&r["content"])
                    );
                }
                out.push_str("</ul>");
            }
            out.push_str("</div>");
        }
    }
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        out.push_str("<h2>Schemas</h2>");
        for (name, schema) in schemas {
            let pretty = serde_json::to_string_pretty(schema).unwrap_or_default();
            let _ = write!(
                out,
                "<h3 id=\"{n}\">{n}</h3><pre>{}</pre>",
                escape(&pretty),
                n = escape(name)
            );
        }
    }
    out.push_str("</body></html>");
    out
}

/// The schema a content map names: a link to a component, or its type.
fn schema_of(content: &serde_json::Value) -> String {
    let Some((mime, media)) = content.as_object().and_then(|c| c.iter().next()) else {
        return String::new();
    };
    let schema = &media["schema"];
    let name = schema["$ref"]
        .as_str()
        .and_then(|r| r.rsplit('/').next())
        .map(|n| format!("<a href=\"#{0}\">{0}</a>", escape(n)))
        .unwrap_or_else(|| escape(schema["type"].as_str().unwrap_or("")));
    format!("<code>{}</code> {name}", escape(mime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_response_is_described_every_id_unique_and_the_page_names_every_path() {
        let (_, mut doc) = crate::http::api();
        describe_responses(&mut doc);
        let json = serde_json::to_value(&doc).unwrap_or_default();
        let mut seen = 0;
        let mut ids = std::collections::HashSet::new();
        for item in json["paths"]
            .as_object()
            .into_iter()
            .flat_map(|p| p.values())
        {
            for op in item.as_object().into_iter().flat_map(|o| o.values()) {
                let id = op["operationId"].as_str().unwrap_or("").to_owned();
                assert!(ids.insert(id.clone()), "operationId {id} twice");
                for (status, r) in op["responses"].as_object().into_iter().flatten() {
                    assert!(
                        r["description"].as_str().is_some_and(|d| !d.is_empty()),
                        "{status}"
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen > 100, "{seen} responses");
        let html = page(&json);
        for path in json["paths"].as_object().into_iter().flat_map(|p| p.keys()) {
            assert!(html.contains(&escape(path)), "{path}");
        }
        assert_eq!(escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
