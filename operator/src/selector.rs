//! Label selectors (`metav1.LabelSelector`) evaluated against a label map,
//! the way the apiserver evaluates them: `matchLabels` and every
//! `matchExpressions` entry must hold; an empty selector matches everything.
//! Pure; used for `spec.nodeSelector` and a policy's `programSelector`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::{Error, Result};

/// Whether `labels` satisfy `selector`. An unknown operator, or `In` /
/// `NotIn` without values, is an error naming the entry (the apiserver
/// would have refused such a selector on a built-in type; a CRD only checks
/// the shape).
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> Result<bool> {
    if let Some(ml) = &selector.match_labels {
        for (k, v) in ml {
            if labels.get(k) != Some(v) {
                return Ok(false);
            }
        }
    }
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(Error::InvalidSelector(format!(
                    "matchExpressions[{i}] ({} {}) needs at least one value",
                    e.key, e.operator
                )));
            }
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => !have.is_some_and(|v| values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            other => {
                return Err(Error::InvalidSelector(format!(
                    "matchExpressions[{i}].operator {other:?} is not one of In, NotIn, Exists, DoesNotExist"
                )));
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(matches(&LabelSelector::default(), &labels(&[])).unwrap());
        assert!(matches(&LabelSelector::default(), &labels(&[("a", "b")])).unwrap());
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let s = LabelSelector {
            match_labels: Some(labels(&[("role", "web"), ("zone", "a")])),
            ..Default::default()
        };
        assert!(matches(&s, &labels(&[("role", "web"), ("zone", "a"), ("x", "y")])).unwrap());
        assert!(!matches(&s, &labels(&[("role", "web")])).unwrap());
        assert!(!matches(&s, &labels(&[("role", "web"), ("zone", "b")])).unwrap());
    }

    #[test]
    fn expressions_follow_the_apiserver() {
        let sel = |e| LabelSelector {
            match_expressions: Some(vec![e]),
            ..Default::default()
        };
        let web = labels(&[("role", "web")]);
        let none = labels(&[]);
        assert!(matches(&sel(expr("role", "In", &["web", "db"])), &web).unwrap());
        assert!(!matches(&sel(expr("role", "In", &["db"])), &web).unwrap());
        assert!(!matches(&sel(expr("role", "In", &["web"])), &none).unwrap());
        assert!(matches(&sel(expr("role", "NotIn", &["db"])), &web).unwrap());
        assert!(matches(&sel(expr("role", "NotIn", &["db"])), &none).unwrap());
        assert!(!matches(&sel(expr("role", "NotIn", &["web"])), &web).unwrap());
        assert!(matches(&sel(expr("role", "Exists", &[])), &web).unwrap());
        assert!(!matches(&sel(expr("role", "Exists", &[])), &none).unwrap());
        assert!(matches(&sel(expr("role", "DoesNotExist", &[])), &none).unwrap());
        assert!(!matches(&sel(expr("role", "DoesNotExist", &[])), &web).unwrap());
    }

    #[test]
    fn malformed_expressions_are_errors_naming_the_entry() {
        let s = LabelSelector {
            match_expressions: Some(vec![expr("a", "Exists", &[]), expr("role", "Like", &["x"])]),
            ..Default::default()
        };
        let e = matches(&s, &labels(&[("a", "1")])).unwrap_err().to_string();
        assert!(
            e.contains("matchExpressions[1]") && e.contains("Like"),
            "{e}"
        );
        let s = LabelSelector {
            match_expressions: Some(vec![expr("role", "In", &[])]),
            ..Default::default()
        };
        let e = matches(&s, &labels(&[])).unwrap_err().to_string();
        assert!(e.contains("needs at least one value"), "{e}");
    }
}
