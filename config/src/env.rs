//! Environment overrides: `PROVBOX_<SECTION>_<FIELD>=value` sets `field` in `[section]`
//! (`PROVBOX_DHCP_SERVER_IP=192.0.2.1`, `PROVBOX_HTTP_BIND=0.0.0.0:8080`), so a
//! container can be configured without a file and every field works without a table
//! written by hand.
//!
//! A value is read as a TOML literal when it is one (`true`, `42`, `["192.0.2.1"]`,
//! `{ "450HD" = "3m" }`), else as a string, else (when it has commas) as a list of
//! strings; the first reading the field's own type accepts wins, so the types and
//! checks are exactly those of the file. An empty value removes the key (back to the
//! default). Overrides are merged into the file's TOML document before it is
//! deserialised and validated as a whole; errors caused by an override name the
//! variable, errors in the file keep their file and line.
//!
//! Variables that do not start with `PROVBOX_<SECTION>_` (the CLI's `PROVBOX_CONFIG`,
//! `PROVBOX_LOG_LEVEL`, …) are not config and are left alone.

use std::path::Path;

use toml_edit::{DocumentMut, Item, Value};

use crate::{Config, ConfigError, validate};

/// The config sections, longest first so that `HTTPS_` is not read as `HTTP_` + `S_…`.
const SECTIONS: [&str; 10] = [
    "tracker", "access", "store", "state", "https", "dhcp", "tftp", "http", "ftp", "api",
];

/// Variables the CLI reads itself; never config.
const CLI_VARS: [&str; 3] = ["PROVBOX_CONFIG", "PROVBOX_LOG_FORMAT", "PROVBOX_LOG_LEVEL"];

/// One accepted override.
struct Override {
    var: String,
    section: &'static str,
    field: String,
    /// `None`: remove the key.
    value: Option<Value>,
}

impl Override {
    fn key(&self) -> String {
        format!("{}.{}", self.section, self.field)
    }
}

/// `[section]`/`field` for a variable name, if it is a config variable.
fn target(var: &str) -> Option<(&'static str, String)> {
    if CLI_VARS.contains(&var) {
        return None;
    }
    let rest = var.strip_prefix("PROVBOX_")?.to_ascii_lowercase();
    SECTIONS.iter().find_map(|s| {
        rest.strip_prefix(s)
            .and_then(|r| r.strip_prefix('_'))
            .filter(|f| !f.is_empty())
            .map(|f| (*s, f.to_string()))
    })
}

fn env_err(var: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Env {
        var: var.to_string(),
        message: message.into(),
    }
}

/// Checks one value against its field's type by deserialising `[section] field = v` alone.
fn check(section: &str, field: &str, v: &Value) -> Result<(), String> {
    let mut doc = DocumentMut::new();
    let mut t = toml_edit::Table::new();
    t.insert(field, Item::Value(v.clone()));
    doc.insert(section, Item::Table(t));
    toml::from_str::<Config>(&doc.to_string())
        .map(|_| ())
        .map_err(|e| e.message().trim().to_string())
}

/// Reads one variable's value in the first form its field accepts.
fn read(
    var: &str,
    section: &'static str,
    field: String,
    raw: &str,
) -> Result<Override, ConfigError> {
    let key = format!("{section}.{field}");
    if raw.trim().is_empty() {
        // Unknown fields must still be refused, or a typo would pass silently.
        check(section, &field, &Value::from(false))
            .err()
            .filter(|m| m.contains("unknown field"))
            .map_or(Ok(()), |m| Err(env_err(var, format!("`{key}`: {m}"))))?;
        return Ok(Override {
            var: var.to_string(),
            section,
            field,
            value: None,
        });
    }
    let literal = raw.trim().parse::<Value>().ok();
    let mut candidates: Vec<Value> = Vec::new();
    candidates.extend(literal.clone());
    candidates.push(Value::from(raw));
    // A list, also of one item (`PROVBOX_ACCESS_ALLOW=10.20.0.0/16`).
    if literal.is_none() {
        let items = raw.split(',').map(str::trim).filter(|s| !s.is_empty());
        candidates.push(Value::Array(items.collect()));
    }
    let mut first_err = None;
    for v in candidates {
        match check(section, &field, &v) {
            Ok(()) => {
                return Ok(Override {
                    var: var.to_string(),
                    section,
                    field,
                    value: Some(v.decorated(" ", "")),
                });
            }
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
    }
    let message = first_err.unwrap_or_default();
    Err(env_err(var, format!("`{key}`: {message}")))
}

/// The config overrides among `vars`, checked one by one.
fn overrides(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Override>, ConfigError> {
    let mut out: Vec<Override> = Vec::new();
    let mut vars: Vec<(String, String)> = vars.into_iter().collect();
    vars.sort();
    for (var, raw) in vars {
        let Some((section, field)) = target(&var) else {
            continue;
        };
        let o = read(&var, section, field, &raw)?;
        if let Some(prev) = out.iter().find(|p| p.key() == o.key()) {
            return Err(env_err(
                &var,
                format!("`{}` is also set by {}; keep one", o.key(), prev.var),
            ));
        }
        out.push(o);
    }
    Ok(out)
}

/// The override responsible for a validation error on `field`, if any.
fn culprit<'a>(overrides: &'a [Override], field: &str) -> Option<&'a Override> {
    overrides.iter().find(|o| {
        let k = o.key();
        field == k || field.starts_with(&format!("{k}.")) || field.starts_with(&format!("{k}["))
    })
}

/// Parses `text` (from `file`), applies the overrides among `vars`, and validates the result.
pub(crate) fn parse_with_env(
    text: &str,
    file: &str,
    base: &Path,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let overrides = overrides(vars)?;
    if overrides.is_empty() {
        return Config::parse(text, file, base);
    }
    // The file's own mistakes are reported against the file, with its line numbers.
    Config::deserialize_text(text, file)?;
    let mut doc: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| ConfigError::Syntax {
                file: file.to_string(),
                line: 1,
                message: e.message().trim().to_string(),
            })?;
    for o in &overrides {
        let root = doc.as_table_mut();
        let section = root
            .entry(o.section)
            .or_insert_with(|| Item::Table(toml_edit::Table::new()));
        let Some(table) = section.as_table_like_mut() else {
            return Err(env_err(
                &o.var,
                format!(
                    "`{}` in {file} is not a table, so `{}` cannot be set in it",
                    o.section, o.field
                ),
            ));
        };
        match &o.value {
            Some(v) => {
                table.insert(&o.field, Item::Value(v.clone()));
            }
            None => {
                table.remove(&o.field);
            }
        }
    }
    let merged = doc.to_string();
    let names = || {
        overrides
            .iter()
            .map(|o| o.var.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config: Config = toml::from_str(&merged).map_err(|e| ConfigError::Env {
        var: names(),
        message: e.message().trim().to_string(),
    })?;
    // Lines are looked up in the original text: the merge moved keys around.
    match validate::validate(&config, text, file, base) {
        Ok(()) => Ok(config),
        Err(ConfigError::Invalid {
            file,
            line,
            field,
            message,
        }) => match culprit(&overrides, &field) {
            Some(o) => Err(env_err(&o.var, format!("`{field}`: {message}"))),
            None => Err(ConfigError::Invalid {
                file,
                line,
                field,
                message: format!("{message} (environment overrides in effect: {})", names()),
            }),
        },
        Err(e) => Err(e),
    }
}

/// The process's `PROVBOX_*` variables; a non-UTF-8 value is an error naming the variable.
pub(crate) fn process_vars() -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (k, v) in std::env::vars_os() {
        let Some(k) = k.to_str().filter(|k| k.starts_with("PROVBOX_")) else {
            continue;
        };
        match v.into_string() {
            Ok(v) => out.push((k.to_string(), v)),
            Err(_) if target(k).is_some() => {
                return Err(env_err(k, "the value is not valid UTF-8"));
            }
            Err(_) => {}
        }
    }
    Ok(out)
}
