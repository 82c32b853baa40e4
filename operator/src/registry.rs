//! Registry credentials for an image reference, from the
//! `kubernetes.io/dockerconfigjson` Secret a spec's `bytecode.image.pullSecret`
//! names: which registry a reference points at ([`registry_of`]), and the
//! one `auths` entry of the Secret for that registry ([`from_secret`]).
//! Only the entry for the reference's own registry is ever picked: the
//! agent is given nothing it could send elsewhere.
//!
//! Pure: reading the Secret is `pull_secret`'s job. Every error names the
//! field and the registry, never what the Secret holds: no user name, no
//! password, no `auth` value, not even the other registries' names (a JSON
//! or base64 error is reported by position only, because their messages
//! may quote the input).

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

/// The Secret type a pull secret must have.
pub const SECRET_TYPE: &str = "kubernetes.io/dockerconfigjson";
/// The key of that Secret type holding the Docker config JSON.
pub const SECRET_KEY: &str = ".dockerconfigjson";
/// Where a reference without a registry host points, and the name every
/// Docker Hub alias is normalised to.
pub const DOCKER_HUB: &str = "docker.io";
/// Names Docker Hub's config entries go by (after scheme and path are cut).
const DOCKER_HUB_ALIASES: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// HTTP basic credentials for one registry (its `Debug` prints neither
/// field); the same type the registry client takes.
pub use bpfleet_oci::Credentials;

/// Why a pull secret gives no credentials for a registry. The messages
/// name the Secret's type or key and the registry, never its content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error(
        "has type {found:?}; a pull secret must be of type {SECRET_TYPE} (kubectl create secret docker-registry)"
    )]
    WrongType { found: String },
    #[error("has no key {SECRET_KEY}")]
    NoKey,
    #[error("key {SECRET_KEY} is not JSON (line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    #[error("key {SECRET_KEY} has no \"auths\" object")]
    NoAuths,
    #[error(
        "key {SECRET_KEY}: its auths hold {entries} entr{}, none for registry {registry} (keys are matched by exact host[:port], scheme and path ignored)",
        if *entries == 1 { "y" } else { "ies" }
    )]
    NoEntry { registry: String, entries: usize },
    #[error("key {SECRET_KEY}: the auths entry for registry {registry} {why}")]
    BadEntry { registry: String, why: &'static str },
    #[error(
        "key {SECRET_KEY}: {count} auths entries for registry {registry} hold different credentials; keep one"
    )]
    Ambiguous { registry: String, count: usize },
}

/// The registry host (`host[:port]`, lower case) of an OCI reference, as a
/// container runtime reads it: the first path component when it has a dot
/// or a port or is `localhost`, else Docker Hub.
pub fn registry_of(reference: &str) -> String {
    let name = reference.split('@').next().unwrap_or(reference);
    match name.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            normalise_host(first)
        }
        _ => DOCKER_HUB.to_string(),
    }
}

/// A host as written in a reference or a config key, normalised for
/// comparison: lower case, Docker Hub's aliases made one.
fn normalise_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    if DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        DOCKER_HUB.to_string()
    } else {
        host
    }
}

/// The registry an `auths` key names: `host[:port]`, `https://host[:port]`
/// or `http://...`, with or without a path (`https://index.docker.io/v1/`).
pub fn registry_of_key(key: &str) -> String {
    let key = key.trim();
    let lower = key.to_ascii_lowercase();
    let rest = ["https://", "http://"]
        .iter()
        .find_map(|scheme| lower.strip_prefix(scheme))
        .unwrap_or(&lower);
    normalise_host(rest.split('/').next().unwrap_or(rest))
}

/// The credentials `secret` holds for the registry of `reference`.
pub fn from_secret(secret: &Secret, reference: &str) -> Result<Credentials, Problem> {
    let found = secret.type_.as_deref().unwrap_or("Opaque");
    if found != SECRET_TYPE {
        return Err(Problem::WrongType {
            found: found.to_string(),
        });
    }
    let json = secret
        .data
        .as_ref()
        .and_then(|d| d.get(SECRET_KEY))
        .map(|b| b.0.as_slice())
        .ok_or(Problem::NoKey)?;
    from_config(json, &registry_of(reference))
}

/// The credentials a Docker config JSON (`{"auths": {...}}`) holds for
/// `registry` (as [`registry_of`] gives it).
pub fn from_config(json: &[u8], registry: &str) -> Result<Credentials, Problem> {
    let config: Value = serde_json::from_slice(json).map_err(|e| Problem::NotJson {
        line: e.line(),
        column: e.column(),
    })?;
    let auths = config
        .get("auths")
        .and_then(Value::as_object)
        .ok_or(Problem::NoAuths)?;
    let bad = |why| Problem::BadEntry {
        registry: registry.to_string(),
        why,
    };
    // Sorted by key, so that which entry is read first does not depend on
    // the JSON's order.
    let matching: BTreeMap<&str, &Value> = auths
        .iter()
        .filter(|(k, _)| registry_of_key(k) == registry)
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let mut found: Option<Credentials> = None;
    for entry in matching.values() {
        let creds = entry_credentials(entry).map_err(bad)?;
        match &found {
            Some(f) if *f != creds => {
                return Err(Problem::Ambiguous {
                    registry: registry.to_string(),
                    count: matching.len(),
                });
            }
            Some(_) => {}
            None => found = Some(creds),
        }
    }
    found.ok_or_else(|| Problem::NoEntry {
        registry: registry.to_string(),
        entries: auths.len(),
    })
}

/// One `auths` entry: `auth` (base64 of `user:password`, which wins when
/// set, as in Docker and the kubelet) or `username` and `password`.
fn entry_credentials(entry: &Value) -> Result<Credentials, &'static str> {
    let entry = entry.as_object().ok_or("is not an object")?;
    let text = |field: &str| -> Result<Option<&str>, &'static str> {
        match entry.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err("has a field that is not a string (auth, username or password)"),
        }
    };
    if let Some(auth) = text("auth")? {
        let compact: String = auth.split_whitespace().collect();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|_| "has an auth field that is not base64")?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| "has an auth field that is not UTF-8")?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or("has an auth field that does not decode to user:password")?;
        if username.is_empty() {
            return Err("has an auth field with an empty user name");
        }
        return Ok(Credentials {
            username: username.to_string(),
            password: password.to_string(),
        });
    }
    match (text("username")?, text("password")?) {
        (Some(u), Some(p)) => Ok(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        }),
        (Some(_), None) => Err("has a username but no password"),
        (None, Some(_)) => Err("has a password but no username"),
        (None, None)
            if entry.contains_key("identitytoken") || entry.contains_key("registrytoken") =>
        {
            Err("holds a token only; the agent pulls with username and password (or auth)")
        }
        (None, None) => Err("has neither auth nor username and password"),
    }
}

#[cfg(test)]
mod tests;
