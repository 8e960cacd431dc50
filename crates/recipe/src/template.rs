//! `{name}` placeholders in recipe fields.

use std::collections::BTreeMap;

/// The names a template refers to, in order; `Err` on an unclosed or empty placeholder.
pub fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in {template:?}"))?;
        let name = &after[..close];
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!(
                "{{{name}}} in {template:?} is not a value name (lowercase letters, digits, '_')"
            ));
        }
        names.push(name);
        rest = &after[close + 1..];
    }
    Ok(names)
}

/// Whether `template` uses a value that is empty in `values`: what such a template names
/// (an optional path, a health URL) is not configured for the instance.
pub fn uses_empty(template: &str, values: &BTreeMap<String, String>) -> bool {
    placeholders(template).is_ok_and(|used| {
        used.iter()
            .any(|u| values.get(*u).is_some_and(String::is_empty))
    })
}

/// Replaces each `{name}` with its value. Names were checked when the recipe was loaded,
/// so a missing one is a bug in the caller; it is reported rather than left in place.
pub fn expand(template: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in {template:?}"))?;
        let name = &after[..close];
        let value = values
            .get(name)
            .ok_or_else(|| format!("{{{name}}} has no value"))?;
        out.push_str(value);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_and_lists_placeholders() {
        let values = BTreeMap::from([("domain".to_owned(), "a.test".to_owned())]);
        assert_eq!(
            expand("/etc/wordpress/config-{domain}.php", &values).unwrap(),
            "/etc/wordpress/config-a.test.php"
        );
        assert_eq!(placeholders("{a}/{b_2}").unwrap(), ["a", "b_2"]);
        assert!(placeholders("{Bad}").is_err());
        assert!(placeholders("{open").is_err());
        assert!(expand("{missing}", &values).is_err());
    }
}
