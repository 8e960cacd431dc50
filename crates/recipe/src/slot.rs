//! Where a config file sets a value, in a form baluchon can both read and write back: the
//! import gives an app its new database name, user and password there, and an unencrypted
//! export leaves secrets out there. Pure functions over text, like the extractors.

use std::fmt;

use crate::extract::{self, PhpSlot};

/// One setting in one config file's syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// `define('NAME', '…')` in PHP.
    PhpDefine(String),
    /// `$name = '…';` in PHP.
    PhpVariable(String),
    /// `$array['key'] = '…';` in PHP, given as `array.key`.
    PhpArray(String),
    /// A dotted key of a TOML document whose value is a string.
    Toml(String),
    /// A `KEY=value` line, as in a dotenv file, a systemd `EnvironmentFile=` or a shell
    /// script (`export KEY=value`); the last one wins, as when a shell sources it.
    Env(String),
}

impl Slot {
    /// The value the file's text gives to this slot.
    pub fn get(&self, text: &str) -> Option<String> {
        match self {
            Self::PhpDefine(_) | Self::PhpVariable(_) | Self::PhpArray(_) => {
                extract::php_value(text, self.php()?)
            }
            Self::Toml(key) => extract::toml_key(text, key).ok().flatten(),
            Self::Env(key) => env_assignments(text, key).last().map(|a| a.value.clone()),
        }
    }

    /// `text` with this slot's value replaced by `value`, the rest of the file as it was;
    /// `None` if the file does not set the slot (to a literal string, in PHP and TOML).
    pub fn set(&self, text: &str, value: &str) -> Option<String> {
        match self {
            Self::PhpDefine(_) | Self::PhpVariable(_) | Self::PhpArray(_) => {
                extract::set_php_value(text, self.php()?, value)
            }
            Self::Toml(key) => set_toml(text, key, value),
            Self::Env(key) => {
                let last = env_assignments(text, key).pop()?;
                Some(format!(
                    "{}{}{}",
                    &text[..last.span.0],
                    env_literal(value, last.quote),
                    &text[last.span.1..]
                ))
            }
        }
    }

    fn php(&self) -> Option<PhpSlot<'_>> {
        match self {
            Self::PhpDefine(name) => Some(PhpSlot::Define(name)),
            Self::PhpVariable(name) => Some(PhpSlot::Variable(name)),
            Self::PhpArray(spec) => Some(PhpSlot::Array(spec)),
            Self::Toml(_) | Self::Env(_) => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PhpDefine(name) => write!(f, "define('{name}')"),
            Self::PhpVariable(name) => write!(f, "${name}"),
            Self::PhpArray(spec) => match spec.split_once('.') {
                Some((array, key)) => write!(f, "${array}['{key}']"),
                None => write!(f, "${spec}"),
            },
            Self::Toml(key) => write!(f, "TOML key {key}"),
            Self::Env(key) => write!(f, "{key}="),
        }
    }
}

/// `key`'s string under its dotted path replaced, its comments and layout kept.
fn set_toml(text: &str, key: &str, value: &str) -> Option<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().ok()?;
    let mut parts = key.split('.');
    let mut item = doc.as_item_mut().get_mut(parts.next()?)?;
    for part in parts {
        item = item.get_mut(part)?;
    }
    let current = item.as_value_mut()?;
    if !current.is_str() {
        return None;
    }
    let decor = current.decor().clone();
    *current = toml_edit::Value::from(value);
    *current.decor_mut() = decor;
    Some(doc.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    Bare,
    Single,
    Double,
}

/// One `KEY=value` line: the value as the shell would read it, and where its literal is.
struct EnvAssignment {
    value: String,
    /// Byte range of the literal (quotes included) in the file's text.
    span: (usize, usize),
    quote: Quote,
}

/// Every line that assigns `key`, in order. Lines that are comments, or whose value the
/// shell would expand (`$VAR`, a command), are not assignments of a literal: skipped.
fn env_assignments(text: &str, key: &str) -> Vec<EnvAssignment> {
    let mut found = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let body = line.trim_end_matches(['\n', '\r']);
        let trimmed = body.trim_start();
        let lead = body.len() - trimmed.len();
        let rest = trimmed
            .strip_prefix("export")
            .filter(|r| r.starts_with([' ', '\t']))
            .map_or(trimmed, str::trim_start);
        let Some(after) = rest
            .strip_prefix(key)
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix('='))
        else {
            continue;
        };
        let spaces = after.len() - after.trim_start().len();
        let literal = after.trim_start();
        let at = start + lead + (trimmed.len() - rest.len()) + (rest.len() - after.len()) + spaces;
        let Some(parsed) = env_literal_at(literal) else {
            continue;
        };
        // `"a"b` is one word to a shell: only a literal alone (or before a comment) counts.
        let tail = literal[parsed.1..].trim_start();
        if tail.is_empty() || tail.starts_with('#') {
            found.push(EnvAssignment {
                value: parsed.0,
                span: (at, at + parsed.1),
                quote: parsed.2,
            });
        }
    }
    found
}

/// The value of the literal that starts `s`, its length in bytes and its quoting; `None`
/// for what is not a plain literal.
fn env_literal_at(s: &str) -> Option<(String, usize, Quote)> {
    match s.chars().next() {
        Some('\'') => {
            let end = s[1..].find('\'')? + 1;
            Some((s[1..end].to_owned(), end + 1, Quote::Single))
        }
        Some('"') => {
            let mut value = String::new();
            let mut chars = s.char_indices().skip(1);
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => return Some((value, i + 1, Quote::Double)),
                    '\\' => {
                        let (_, n) = chars.next()?;
                        if !matches!(n, '"' | '\\' | '$' | '`') {
                            value.push('\\');
                        }
                        value.push(n);
                    }
                    '$' | '`' => return None,
                    c => value.push(c),
                }
            }
            None
        }
        _ => {
            // A bare word ends at whitespace; a comment may follow.
            let end = s.find([' ', '\t']).unwrap_or(s.len());
            let word = &s[..end];
            if word.contains(['$', '`', '\\', '\'', '"', ';', '&', '|', '<', '>', '(', ')']) {
                return None;
            }
            Some((word.to_owned(), end, Quote::Bare))
        }
    }
}

/// `value` written for an env file, in the quoting the old value had when that can hold it.
fn env_literal(value: &str, quote: Quote) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-.,:/@%+=".contains(c);
    match quote {
        Quote::Bare if !value.is_empty() && value.chars().all(plain) => value.to_owned(),
        Quote::Single if !value.contains('\'') && !value.contains('\n') => format!("'{value}'"),
        _ => {
            let mut out = String::with_capacity(value.len() + 2);
            out.push('"');
            for c in value.chars() {
                if matches!(c, '"' | '\\' | '$' | '`') {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_read_as_a_shell_would() {
        let text = "# PGPASSWORD=commented\nPGHOST=127.0.0.1\nexport PGUSER='notes'\n\
                    PGDATABASE = \"n\\\"otes\" # the name\nPGPASSWORD=old\nPGPASSWORD=\"new\"\n\
                    PGOPTIONS=$HOME\nPGAPPNAME=\"a\"b\nPGPASSFILE\n";
        let env = |k: &str| Slot::Env(k.to_owned()).get(text);
        assert_eq!(env("PGHOST").as_deref(), Some("127.0.0.1"));
        assert_eq!(env("PGUSER").as_deref(), Some("notes"));
        assert_eq!(env("PGDATABASE").as_deref(), Some("n\"otes"));
        assert_eq!(
            env("PGPASSWORD").as_deref(),
            Some("new"),
            "the last one wins"
        );
        assert_eq!(env("PGOPTIONS"), None, "an expansion is not a literal");
        assert_eq!(env("PGAPPNAME"), None, "nor is a word of two parts");
        assert_eq!(env("PGPASSFILE"), None);
        assert_eq!(env("PG"), None, "a prefix of a key is not the key");
    }

    #[test]
    fn env_values_written_in_their_quoting() {
        let text = "A=old # kept\nexport B='old'\nC=\"old\"\nC=\"older\"\nD=x\n";
        let set = |k: &str, v: &str| Slot::Env(k.to_owned()).set(text, v).unwrap();
        assert_eq!(set("A", "new"), text.replacen("A=old", "A=new", 1));
        assert_eq!(set("A", "a b$"), text.replacen("A=old", "A=\"a b\\$\"", 1));
        assert_eq!(set("B", "it's"), text.replacen("'old'", "\"it's\"", 1));
        assert_eq!(
            set("C", "new"),
            text.replacen("\"older\"", "\"new\"", 1),
            "the live (last) assignment"
        );
        assert_eq!(Slot::Env("E".to_owned()).set(text, "v"), None);
        for value in ["p\"w'd", "a\\b", "$(x)`y`", ""] {
            for key in ["A", "B", "C", "D"] {
                let written = Slot::Env(key.to_owned()).set(text, value).unwrap();
                assert_eq!(
                    Slot::Env(key.to_owned()).get(&written).as_deref(),
                    Some(value)
                );
            }
        }
    }

    #[test]
    fn toml_values_written_back_in_place() {
        let text = "# spec\ndomain = \"a.test\"\n[postgresql]\nname = 'notes'  # db\nport = 5432\n\
                    [mariadb]\npassword = \"x\"\n";
        let slot = Slot::Toml("postgresql.name".to_owned());
        let written = slot.set(text, "it's \"new\"").unwrap();
        assert_eq!(slot.get(&written).as_deref(), Some("it's \"new\""));
        let (old_lines, new_lines): (Vec<_>, Vec<_>) =
            (text.lines().collect(), written.lines().collect());
        assert_eq!(old_lines.len(), new_lines.len(), "{written}");
        for (old, new) in old_lines.iter().zip(&new_lines) {
            if old.starts_with("name = ") {
                assert!(
                    new.starts_with("name = ") && new.ends_with("  # db"),
                    "{new}"
                );
            } else {
                assert_eq!(old, new, "only the value changes");
            }
        }
        assert_eq!(
            Slot::Toml("postgresql.port".to_owned()).set(text, "1"),
            None
        );
        assert_eq!(
            Slot::Toml("postgresql.user".to_owned()).set(text, "1"),
            None
        );
        assert_eq!(Slot::Toml("nope.name".to_owned()).set(text, "1"), None);
    }

    #[test]
    fn php_slots_read_and_write_through_the_extractors() {
        let text = "<?php\ndefine('DB_NAME', 'a');\n$conf['title'] = \"t\";\n";
        let define = Slot::PhpDefine("DB_NAME".to_owned());
        assert_eq!(
            define.get(&define.set(text, "b'c").unwrap()).as_deref(),
            Some("b'c")
        );
        let array = Slot::PhpArray("conf.title".to_owned());
        assert_eq!(array.get(text).as_deref(), Some("t"));
        assert_eq!(array.to_string(), "$conf['title']");
    }
}
