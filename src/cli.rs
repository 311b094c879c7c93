//! Commands that talk to a running gateway: `neuropia actors`.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::ActorsArgs;

/// Prints the live supervision tree of the gateway at `args.url`.
pub async fn actors(args: ActorsArgs) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let base = args.url.trim_end_matches('/').to_owned();
    let token = match (&args.token, &args.email, &args.password) {
        (Some(t), _, _) => t.expose().to_owned(),
        (None, Some(email), Some(password)) => {
            login(&client, &base, email, password.expose()).await?
        }
        _ => {
            return Err(
                "give --token (or NEUROPIA_TOKEN), or NEUROPIA_ADMIN_EMAIL and \
                 NEUROPIA_ADMIN_PASSWORD to sign in as a platform admin"
                    .into(),
            );
        }
    };
    loop {
        let response = client
            .get(actors_url(&base, &args)?)
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| format!("{base}: {e}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("{base}: not JSON: {e}"))?;
        if !status.is_success() {
            return Err(format!("{base}: {status}: {}", error_message(&body)));
        }
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&body).unwrap_or_default()
            );
        } else {
            if args.watch > 0 {
                // Clear the screen and go home, as `watch` does.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render(&body));
        }
        if args.watch == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(args.watch)).await;
    }
}

async fn login(
    client: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> Result<String, String> {
    let response = client
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .map_err(|e| format!("{base}: {e}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(format!("signing in: {status}: {}", error_message(&body)));
    }
    body["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "signing in: no token in the answer".into())
}

fn error_message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or("no error message")
        .to_owned()
}

/// The tree as text, one actor per line, like `pstree`.
pub fn render(root: &Value) -> String {
    let mut out = String::new();
    line(&mut out, root, "", "");
    children(&mut out, root, "");
    out
}

fn children(out: &mut String, node: &Value, prefix: &str) {
    let list = node["children"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let total = node["children_total"].as_u64().unwrap_or(list.len() as u64) as usize;
    let hidden = total.saturating_sub(list.len());
    for (i, child) in list.iter().enumerate() {
        let last = i + 1 == list.len() && hidden == 0;
        let (branch, next) = if last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        line(out, child, prefix, branch);
        children(out, child, &format!("{prefix}{next}"));
    }
    if hidden > 0 {
        let _ = writeln!(out, "{prefix}└─ … {hidden} more (use --offset/--limit)");
    }
}

fn line(out: &mut String, node: &Value, prefix: &str, branch: &str) {
    let mut facts = vec![node["status"].as_str().unwrap_or("?").to_owned()];
    if let Some(up) = node["uptime_secs"].as_f64() {
        facts.push(format!("up {up}s"));
    }
    if let Some(r) = node["restarts"].as_u64().filter(|r| *r > 0) {
        facts.push(format!("restarts {r}"));
    }
    if let Some(h) = node["messages_handled"].as_u64() {
        facts.push(format!("handled {h}"));
    }
    if let Some(b) = node["backlog"].as_u64() {
        facts.push(format!("backlog {b}"));
    }
    if let Some(f) = node["faults_injected"].as_u64().filter(|f| *f > 0) {
        facts.push(format!("faults {f}"));
    }
    let _ = write!(
        out,
        "{prefix}{branch}{} [{}]",
        node["name"].as_str().unwrap_or("?"),
        facts.join(", ")
    );
    if let Some(state) = node["state"].as_object().filter(|s| !s.is_empty()) {
        let parts: Vec<String> = state
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect();
        let _ = write!(out, " {}", parts.join(" "));
    }
    if let Some(f) = node["last_failure"].as_str() {
        let _ = write!(out, " last failure: {f}");
    }
    out.push('\n');
}

/// `/api/admin/actors` with the page and search asked for.
fn actors_url(base: &str, args: &ActorsArgs) -> Result<reqwest::Url, String> {
    let mut params = vec![
        ("limit", args.limit.to_string()),
        ("offset", args.offset.to_string()),
    ];
    if let Some(find) = &args.find {
        params.push(("find", find.clone()));
    }
    reqwest::Url::parse_with_params(&format!("{base}/api/admin/actors"), &params)
        .map_err(|e| format!("{base}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_the_tree_with_branches_and_hidden_children() {
        let tree = json!({
            "name": "neuropia", "status": "running", "uptime_secs": 3.0, "restarts": 0,
            "state": {"journal_depth": 0}, "children_total": 2,
            "children": [
                {"name": "config", "status": "running", "restarts": 1, "backlog": 0,
                 "messages_handled": 7, "state": {"version": 3}, "children_total": 0,
                 "children": [], "last_failure": "injected fault"},
                {"name": "keys", "status": "running", "restarts": 0, "backlog": 2,
                 "state": null, "children_total": 3, "children": [
                    {"name": "key:a", "status": "running", "restarts": 0, "state": {"rpm_left": 5},
                     "children_total": 0, "children": []}
                 ]}
            ]
        });
        let text = render(&tree);
        let expected = "\
neuropia [running, up 3s] journal_depth=0
├─ config [running, restarts 1, handled 7, backlog 0] version=3 last failure: injected fault
└─ keys [running, backlog 2]
   ├─ key:a [running] rpm_left=5
   └─ … 2 more (use --offset/--limit)
";
        assert_eq!(text, expected);
    }
}
