//! Unit tests of reference parsing and pull-secret reading. Every secret
//! value here contains `SECRET`, and every error is checked not to.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::ByteString;
use serde_json::json;

use super::*;

const DIGEST: &str = "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const SECRET: &str = "pa55-SECRET";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn creds(user: &str) -> Credentials {
    Credentials {
        username: user.into(),
        password: SECRET.into(),
    }
}

/// The credentials `config` gives for `registry`, the error checked to
/// hold nothing of the secret.
fn pick(config: &serde_json::Value, registry: &str) -> Result<Credentials, Problem> {
    let got = from_config(config.to_string().as_bytes(), registry);
    if let Err(e) = &got {
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(!shown.contains("ci-bot"), "{shown}");
    }
    got
}

#[test]
fn the_registry_of_a_reference_is_read_as_runtimes_read_it() {
    for (reference, registry) in [
        (
            "registry.example.com/bpf/http-tracer",
            "registry.example.com",
        ),
        (
            "registry.example.com:5000/bpf/x:v1",
            "registry.example.com:5000",
        ),
        ("Registry.Example.com/x", "registry.example.com"),
        ("localhost/x", "localhost"),
        ("localhost:5000/team/x:1.0", "localhost:5000"),
        ("127.0.0.1:5000/x", "127.0.0.1:5000"),
        ("ghcr.io/org/x", "ghcr.io"),
        ("docker.io/library/alpine", DOCKER_HUB),
        ("index.docker.io/library/alpine", DOCKER_HUB),
        ("alpine", DOCKER_HUB),
        ("alpine:3", DOCKER_HUB),
        ("someone/tracer:v2", DOCKER_HUB),
    ] {
        assert_eq!(
            registry_of(&format!("{reference}{DIGEST}")),
            registry,
            "{reference}"
        );
    }
}

#[test]
fn config_keys_are_normalised_to_host_and_port() {
    for (key, registry) in [
        ("r.example", "r.example"),
        ("R.Example:5000", "r.example:5000"),
        ("https://r.example", "r.example"),
        ("https://r.example:5000/v2/", "r.example:5000"),
        ("http://r.example:5000", "r.example:5000"),
        ("r.example/some/path", "r.example"),
        (" r.example ", "r.example"),
        ("https://index.docker.io/v1/", DOCKER_HUB),
        ("index.docker.io", DOCKER_HUB),
        ("docker.io", DOCKER_HUB),
        ("registry-1.docker.io", DOCKER_HUB),
    ] {
        assert_eq!(registry_of_key(key), registry, "{key}");
    }
}

#[test]
fn the_entry_of_the_references_registry_only_is_picked() {
    let config = json!({"auths": {
        "r.example": {"username": "on-default-port", "password": SECRET},
        "https://r.example:5000/v2/": {"auth": b64(&format!("on-5000:{SECRET}"))},
        "other.example": {"username": "other", "password": SECRET},
        "https://index.docker.io/v1/": {"username": "hub", "password": SECRET},
    }});
    assert_eq!(pick(&config, "r.example:5000"), Ok(creds("on-5000")));
    assert_eq!(pick(&config, "r.example"), Ok(creds("on-default-port")));
    assert_eq!(pick(&config, DOCKER_HUB), Ok(creds("hub")));
    // The same host on another port is another registry.
    let e = pick(&config, "r.example:443").unwrap_err();
    assert_eq!(
        e,
        Problem::NoEntry {
            registry: "r.example:443".into(),
            entries: 4
        }
    );
    let text = e.to_string();
    assert!(
        text.contains(".dockerconfigjson") && text.contains("r.example:443"),
        "{text}"
    );
    // The other registries' names are not listed either.
    assert!(!text.contains("other.example"), "{text}");
}

#[test]
fn auth_wins_over_username_and_password_and_may_hold_colons() {
    let config = json!({"auths": {"r.example": {
        "username": "ignored", "password": "ignored",
        "auth": b64(&format!("ci-bot:{SECRET}:with:colons")),
        "email": "x@example.com",
    }}});
    assert_eq!(
        pick(&config, "r.example"),
        Ok(Credentials {
            username: "ci-bot".into(),
            password: format!("{SECRET}:with:colons"),
        })
    );
}

#[test]
fn keys_naming_one_registry_twice_must_agree() {
    let same = json!({"auths": {
        "r.example": {"username": "u", "password": SECRET},
        "https://r.example/v1/": {"auth": b64(&format!("u:{SECRET}"))},
    }});
    assert_eq!(pick(&same, "r.example"), Ok(creds("u")));
    let differ = json!({"auths": {
        "r.example": {"username": "u", "password": SECRET},
        "https://r.example/v1/": {"username": "v", "password": SECRET},
    }});
    assert_eq!(
        pick(&differ, "r.example"),
        Err(Problem::Ambiguous {
            registry: "r.example".into(),
            count: 2
        })
    );
}

#[test]
fn bad_entries_are_named_without_their_content() {
    let cases = [
        (json!({"auth": format!("{SECRET}!!")}), "not base64"),
        (
            json!({"auth": b64(&format!("ci-bot{SECRET}"))}),
            "user:password",
        ),
        (
            json!({"auth": b64(&format!(":{SECRET}"))}),
            "empty user name",
        ),
        (json!({"username": "ci-bot"}), "no password"),
        (json!({"password": SECRET}), "no username"),
        (json!({"username": 7, "password": SECRET}), "not a string"),
        (json!({"identitytoken": SECRET}), "token"),
        (json!({}), "neither"),
        (json!(SECRET), "not an object"),
    ];
    for (entry, why) in cases {
        let config = json!({"auths": {"r.example": entry}});
        let e = pick(&config, "r.example").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(why) && text.contains("r.example"),
            "{entry}: {text}"
        );
    }
    // An unusable entry of another registry does not matter.
    let config = json!({"auths": {
        "elsewhere.example": {"auth": "***"},
        "r.example": {"username": "u", "password": SECRET},
    }});
    assert_eq!(pick(&config, "r.example"), Ok(creds("u")));
}

#[test]
fn unreadable_json_is_reported_by_position_only() {
    let text = format!("{{\"auths\": {{\"r.example\": {{\"auth\": \"{SECRET}\" ");
    let e = from_config(text.as_bytes(), "r.example").unwrap_err();
    assert!(matches!(e, Problem::NotJson { line: 1, .. }), "{e:?}");
    assert!(!e.to_string().contains("SECRET"), "{e}");
    // Valid JSON of the wrong shape: serde would quote the value.
    for config in [json!({"auths": SECRET}), json!([SECRET]), json!({})] {
        assert_eq!(
            pick(&config, "r.example"),
            Err(Problem::NoAuths),
            "{config}"
        );
    }
}

fn secret(type_: Option<&str>, data: &[(&str, &str)]) -> Secret {
    Secret {
        type_: type_.map(str::to_string),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

#[test]
fn only_a_dockerconfigjson_secret_is_read() {
    let config =
        json!({"auths": {"r.example:5000": {"username": "u", "password": SECRET}}}).to_string();
    let reference = format!("r.example:5000/bpf/tracer:v1{DIGEST}");
    let good = secret(Some(SECRET_TYPE), &[(SECRET_KEY, &config)]);
    assert_eq!(from_secret(&good, &reference), Ok(creds("u")));

    let opaque = secret(Some("Opaque"), &[(SECRET_KEY, &config)]);
    let e = from_secret(&opaque, &reference).unwrap_err();
    assert_eq!(
        e,
        Problem::WrongType {
            found: "Opaque".into()
        }
    );
    assert!(e.to_string().contains(SECRET_TYPE), "{e}");
    // No type at all is Opaque to the apiserver.
    let untyped = secret(None, &[(SECRET_KEY, &config)]);
    assert!(matches!(
        from_secret(&untyped, &reference),
        Err(Problem::WrongType { found }) if found == "Opaque"
    ));
    let no_key = secret(Some(SECRET_TYPE), &[("config.json", &config)]);
    assert_eq!(from_secret(&no_key, &reference), Err(Problem::NoKey));
    let mut no_data = good.clone();
    no_data.data = None;
    assert_eq!(from_secret(&no_data, &reference), Err(Problem::NoKey));
    // A reference on Docker Hub does not get r.example's credentials.
    let hub = format!("someone/tracer{DIGEST}");
    assert!(matches!(
        from_secret(&good, &hub),
        Err(Problem::NoEntry { registry, .. }) if registry == DOCKER_HUB
    ));
}

#[test]
fn credentials_debug_prints_nothing_of_them() {
    let shown = format!("{:?} {:#?}", creds("ci-bot"), creds("ci-bot"));
    assert!(
        !shown.contains("SECRET") && !shown.contains("ci-bot"),
        "{shown}"
    );
}
