//! The documentation keeps up with the code: every setting of `config/default.toml` is in
//! `docs/configuration.md` under its section, with its default.

use std::path::Path;

/// `(section, key, default as TOML)` for every leaf setting; tables of tables recurse.
fn settings(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String, String)>) {
    for (key, value) in table {
        match value {
            toml::Value::Table(inner)
                if !inner.is_empty() && inner.values().any(|v| !v.is_table()) || prefix.is_empty() =>
            {
                let section = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                settings(&section, inner, out);
            }
            toml::Value::Table(inner) if inner.is_empty() => {}
            other => out.push((prefix.to_string(), key.clone(), other.to_string())),
        }
    }
}

#[test]
fn configuration_md_documents_every_setting_with_its_default() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let defaults: toml::Table = std::fs::read_to_string(root.join("config/default.toml")).unwrap().parse().unwrap();
    let docs = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let mut all = Vec::new();
    settings("", &defaults, &mut all);
    assert!(all.len() > 60, "{} settings", all.len());
    let mut missing = Vec::new();
    for (section, key, default) in &all {
        // The section's part of the document: from its heading to the next heading.
        let heading = format!("`[{section}]`");
        let Some(start) = docs.lines().position(|line| line.starts_with('#') && line.contains(&heading)) else {
            missing.push(format!("[{section}]: no heading"));
            continue;
        };
        let body: Vec<&str> = docs.lines().skip(start + 1).take_while(|line| !line.starts_with('#')).collect();
        // A row names the key first (`key`, `key` / `key_file`, or `other`, `key`).
        let named = |line: &&&str| {
            line.starts_with('|') && line.split('|').nth(1).is_some_and(|cell| cell.contains(&format!("`{key}`")))
        };
        let row = body.iter().find(named);
        match row {
            None => missing.push(format!("{section}.{key}: no row")),
            Some(row) => {
                let shown = default.trim_matches('"');
                if !row.contains(shown) {
                    missing.push(format!("{section}.{key}: default {default} not in {row:?}"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "{} of {} settings not documented:\n{}", missing.len(), all.len(), missing.join("\n"));
}
