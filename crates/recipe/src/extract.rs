//! Reading one value out of a config file's text. Pure functions over text: nothing from
//! the host is ever evaluated, only matched.

use regex::Regex;

/// A PHP single- or double-quoted string literal; the content is in group `s` or `d`.
const PHP_STRING: &str = r#"(?:'(?P<s>(?:[^'\\]|\\.)*)'|"(?P<d>(?:[^"\\]|\\.)*)")"#;

/// Which PHP assignment holds a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhpSlot<'a> {
    /// `define('NAME', '…')`; the first definition wins, as in PHP.
    Define(&'a str),
    /// `$name = '…';`; the last assignment wins.
    Variable(&'a str),
    /// `$array['key'] = '…';` given as `array.key`; the last one wins.
    Array(&'a str),
}

impl PhpSlot<'_> {
    fn regex(self) -> Option<Regex> {
        let pattern = match self {
            Self::Define(name) => format!(
                r#"define\s*\(\s*['"]{}['"]\s*,\s*{PHP_STRING}\s*\)"#,
                regex::escape(name)
            ),
            Self::Variable(name) => format!(r"\${}\s*=\s*{PHP_STRING}\s*;", regex::escape(name)),
            Self::Array(spec) => {
                let (array, key) = spec.split_once('.')?;
                format!(
                    r#"\${}\s*\[\s*['"]{}['"]\s*\]\s*=\s*{PHP_STRING}\s*;"#,
                    regex::escape(array),
                    regex::escape(key)
                )
            }
        };
        Regex::new(&pattern).ok()
    }

    fn first_wins(self) -> bool {
        matches!(self, Self::Define(_))
    }
}

/// The value a PHP config file gives to `slot`.
pub fn php_value(text: &str, slot: PhpSlot<'_>) -> Option<String> {
    let re = slot.regex()?;
    let mut found = live_matches(text, &re);
    if slot.first_wins() {
        found.into_iter().next()
    } else {
        found.pop()
    }
}

/// `text` with the live string literal of `slot` replaced by `value` (same quotes,
/// escaped for them); `None` if the file does not assign `slot` with a literal.
pub fn set_php_value(text: &str, slot: PhpSlot<'_>, value: &str) -> Option<String> {
    let re = slot.regex()?;
    let code = blank_php_comments(text);
    let mut spans = re.captures_iter(&code).filter_map(|c| {
        c.name("s")
            .map(|m| (m.range(), '\''))
            .or_else(|| c.name("d").map(|m| (m.range(), '"')))
    });
    let (range, quote) = if slot.first_wins() {
        spans.next()?
    } else {
        spans.last()?
    };
    let escaped = match quote {
        '\'' => value.replace('\\', "\\\\").replace('\'', "\\'"),
        _ => value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('$', "\\$"),
    };
    Some(format!(
        "{}{escaped}{}",
        &text[..range.start],
        &text[range.end..]
    ))
}

pub fn php_define(text: &str, name: &str) -> Option<String> {
    php_value(text, PhpSlot::Define(name))
}

pub fn php_variable(text: &str, name: &str) -> Option<String> {
    php_value(text, PhpSlot::Variable(name))
}

pub fn php_array(text: &str, spec: &str) -> Option<String> {
    php_value(text, PhpSlot::Array(spec))
}

/// Matches outside PHP comments, unescaped.
fn live_matches(text: &str, re: &Regex) -> Vec<String> {
    let code = blank_php_comments(text);
    re.captures_iter(&code)
        .filter_map(|c| {
            if let Some(s) = c.name("s") {
                Some(unescape_single(s.as_str()))
            } else {
                c.name("d").map(|d| unescape_double(d.as_str()))
            }
        })
        .collect()
}

/// The text with every PHP comment (`//`, `#`, `/* */`) replaced by spaces, string
/// literals left alone: a commented-out `define` must not be read as the live one.
fn blank_php_comments(text: &str) -> String {
    #[derive(PartialEq)]
    enum State {
        Code,
        Single,
        Double,
        Line,
        Block,
    }
    let mut out = String::with_capacity(text.len());
    let mut state = State::Code;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match state {
            State::Code => match c {
                '\'' => state = State::Single,
                '"' => state = State::Double,
                '#' => state = State::Line,
                '/' if chars.peek() == Some(&'/') => state = State::Line,
                '/' if chars.peek() == Some(&'*') => {
                    chars.next();
                    out.push_str("  ");
                    state = State::Block;
                    continue;
                }
                _ => {}
            },
            State::Single | State::Double => {
                let quote = if state == State::Single { '\'' } else { '"' };
                if c == '\\' {
                    out.push(c);
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                    continue;
                }
                if c == quote {
                    state = State::Code;
                }
            }
            State::Line => {
                if c == '\n' {
                    state = State::Code;
                }
            }
            State::Block => {
                if c == '*' && chars.peek() == Some(&'/') {
                    chars.next();
                    out.push_str("  ");
                    state = State::Code;
                    continue;
                }
            }
        }
        let commented = matches!(state, State::Line | State::Block) && c != '\n';
        if commented {
            // As many spaces as the character has bytes: offsets stay those of `text`.
            out.extend(std::iter::repeat_n(' ', c.len_utf8()));
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape_single(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ ('\'' | '\\')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Double-quoted strings: the common escapes. A `$` would interpolate a variable in PHP;
/// such a value is taken literally, which the recipe documentation warns about.
fn unescape_double(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(n @ ('"' | '\\' | '$')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The first capture group of the first match.
pub fn regex_capture(text: &str, re: &Regex) -> Option<String> {
    re.captures(text)?.get(1).map(|m| m.as_str().to_owned())
}

/// A scalar under a dotted key of a TOML document.
pub fn toml_key(text: &str, key: &str) -> Result<Option<String>, String> {
    // Not the error's own text: it quotes the faulty line, which may hold a password.
    let doc: toml::Table = toml::from_str(text).map_err(|e| match e.span() {
        Some(span) => format!(
            "invalid TOML at line {}: {}",
            text.get(..span.start).unwrap_or(text).matches('\n').count() + 1,
            e.message()
        ),
        None => format!("invalid TOML: {}", e.message()),
    })?;
    let mut parts = key.split('.');
    let Some(first) = parts.next() else {
        return Ok(None);
    };
    let mut value = match doc.get(first) {
        Some(v) => v,
        None => return Ok(None),
    };
    for part in parts {
        value = match value.get(part) {
            Some(v) => v,
            None => return Ok(None),
        };
    }
    Ok(match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => return Err(format!("{key} is not a string, an integer or a boolean")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn php_values() {
        let text = "<?php\n// define('DB_NAME', 'commented');\n/* define('DB_NAME', 'x'); */\n\
                    # define('DB_NAME', 'y');\ndefine( 'DB_NAME', 'wp_a' ); // 'z'\n\
                    define(\"DB_PASSWORD\", \"p\\\"w'd\");\n$table_prefix = 'wp_';\n\
                    $table_prefix  = 'new_';\n$conf['savedir'] = '/var/lib/dokuwiki/data';\n\
                    define('DB_USER', 'it\\'s');";
        assert_eq!(php_define(text, "DB_NAME").as_deref(), Some("wp_a"));
        assert_eq!(php_define(text, "DB_PASSWORD").as_deref(), Some("p\"w'd"));
        assert_eq!(php_define(text, "DB_USER").as_deref(), Some("it's"));
        assert_eq!(php_define(text, "DB_HOST"), None);
        assert_eq!(php_variable(text, "table_prefix").as_deref(), Some("new_"));
        assert_eq!(
            php_array(text, "conf.savedir").as_deref(),
            Some("/var/lib/dokuwiki/data")
        );
    }

    #[test]
    fn php_values_are_rewritten_in_place() {
        let text = "<?php\n/* define('DB_NAME', 'old'); é */\ndefine('DB_NAME', 'wp_a');\n\
                    define(\"DB_PASSWORD\", \"x\");\n";
        let new = set_php_value(text, PhpSlot::Define("DB_NAME"), "it's").unwrap();
        assert!(new.contains("define('DB_NAME', 'it\\'s');"), "{new}");
        assert!(
            new.contains("/* define('DB_NAME', 'old'); é */"),
            "comment kept"
        );
        assert_eq!(php_define(&new, "DB_NAME").as_deref(), Some("it's"));
        let new = set_php_value(&new, PhpSlot::Define("DB_PASSWORD"), "a\"$b").unwrap();
        assert_eq!(php_define(&new, "DB_PASSWORD").as_deref(), Some("a\"$b"));
        assert_eq!(set_php_value(text, PhpSlot::Define("DB_HOST"), "x"), None);
    }

    #[test]
    fn toml_values() {
        let text = "domain = \"app.test\"\n[database]\nname = \"app\"\nport = 5432\n";
        assert_eq!(
            toml_key(text, "database.name").unwrap().as_deref(),
            Some("app")
        );
        assert_eq!(
            toml_key(text, "database.port").unwrap().as_deref(),
            Some("5432")
        );
        assert_eq!(toml_key(text, "database.user").unwrap(), None);
        assert!(toml_key(text, "database").is_err());
        let typo = "domain = \"a.test\"\n[mariadb]\npassword = \"s3cr\"et\"\n";
        let error = toml_key(typo, "mariadb.password").unwrap_err();
        assert!(error.starts_with("invalid TOML at line 3:"), "{error}");
        assert!(!error.contains("s3cr"), "{error}");
    }
}
