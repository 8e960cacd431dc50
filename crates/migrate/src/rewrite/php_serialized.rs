//! Search and replace in values that PHP may have serialized.
//!
//! WordPress stores arrays and objects with `serialize()`, whose strings carry their length in
//! bytes (`s:5:"hello";`). A plain byte replace that changes a string's length makes
//! `unserialize()` fail, and WordPress then silently drops the whole option or meta value.
//! So a serialized value is parsed, the replacement is made inside its strings, and the
//! value is written back with every length recomputed. A value that looks serialized but
//! does not parse is left exactly as it was: a warning for a human, never a corruption.

use std::borrow::Cow;

/// Nesting deeper than this (arrays, objects, serialized strings inside strings) is treated
/// as not parsing: real data never gets close, and it bounds the recursion on hostile input.
pub const MAX_DEPTH: usize = 64;

/// What [`replace_serialized_aware`] did to one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to replace: keep the value as it is.
    Unchanged,
    /// Not serialized data: replaced as plain bytes.
    ChangedPlain(Vec<u8>),
    /// Serialized data: replaced inside its strings, every length recomputed.
    ChangedSerialized(Vec<u8>),
    /// Looks serialized and holds something to replace, but does not parse: left alone,
    /// since a plain replace could break lengths that PHP relies on.
    Unparsable,
}

/// Replaces `replacements` (needle, replacement) in `value`, keeping PHP-serialized data
/// valid. See [`replace_plain`] for how overlapping needles are resolved.
///
/// A value "looks serialized" as WordPress's `is_serialized()` sees it: surrounding ASCII
/// whitespace aside, `N;`, or a type letter and `:` at the start and `;` or `}` at the end.
/// Replaced are string values, string array keys, and strings nested as serialized data
/// inside strings (WordPress double-serializes); class names, property names, enum cases
/// and the opaque payload of `C:` (custom-serialized) objects are kept as they are.
pub fn replace_serialized_aware(value: &[u8], replacements: &[(Vec<u8>, Vec<u8>)]) -> Outcome {
    if !contains_any(value, replacements) {
        return Outcome::Unchanged;
    }
    if !looks_serialized(trim_ascii_whitespace(value).1) {
        return match replace_plain(value, replacements) {
            Some(new) => Outcome::ChangedPlain(new),
            None => Outcome::Unchanged,
        };
    }
    match rewrite_serialized(value, replacements, 0) {
        Ok(new) if new == value => Outcome::Unchanged,
        Ok(new) => Outcome::ChangedSerialized(new),
        Err(Invalid) => Outcome::Unparsable,
    }
}

/// Replaces every occurrence of the needles in `haystack` in one left-to-right pass: at each
/// position the longest matching needle wins (the first listed among equals), and replaced
/// text is not scanned again, so `a→b, b→c` never turns `a` into `c`. Empty needles are
/// ignored. `None` when nothing matched.
pub fn replace_plain(haystack: &[u8], replacements: &[(Vec<u8>, Vec<u8>)]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < haystack.len() {
        match longest_match_at(haystack, i, replacements) {
            Some((needle, replacement)) => {
                let buf = out.get_or_insert_with(|| Vec::with_capacity(haystack.len() + 64));
                buf.extend_from_slice(&haystack[copied..i]);
                buf.extend_from_slice(replacement);
                i += needle.len();
                copied = i;
            }
            None => i += 1,
        }
    }
    let mut buf = out?;
    buf.extend_from_slice(&haystack[copied..]);
    Some(buf)
}

fn longest_match_at<'r>(
    haystack: &[u8],
    at: usize,
    replacements: &'r [(Vec<u8>, Vec<u8>)],
) -> Option<(&'r [u8], &'r [u8])> {
    let rest = &haystack[at..];
    let mut best: Option<(&[u8], &[u8])> = None;
    for (needle, replacement) in replacements {
        let longer = best.is_none_or(|(b, _)| needle.len() > b.len());
        if !needle.is_empty() && longer && rest.starts_with(needle) {
            best = Some((needle, replacement));
        }
    }
    best
}

/// Whether any non-empty needle occurs in `haystack`.
pub(crate) fn contains_any(haystack: &[u8], replacements: &[(Vec<u8>, Vec<u8>)]) -> bool {
    replacements
        .iter()
        .any(|(needle, _)| find(haystack, needle).is_some())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, _) = needle.split_first()?;
    let mut from = 0;
    while let Some(p) = haystack[from..].iter().position(|&b| b == first) {
        let at = from + p;
        if haystack[at..].starts_with(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// As WordPress's `is_serialized()` (strict mode), on already trimmed data.
fn looks_serialized(data: &[u8]) -> bool {
    if data == b"N;" {
        return true;
    }
    data.len() >= 4
        && data[1] == b':'
        && matches!(
            data[0],
            b'a' | b'b' | b'd' | b'i' | b'O' | b'C' | b'E' | b's' | b'S' | b'r' | b'R'
        )
        && matches!(data.last(), Some(b';' | b'}'))
}

/// (leading whitespace, core, trailing whitespace): WordPress trims before unserializing.
fn trim_ascii_whitespace(data: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let start = data
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(data.len());
    let end = data
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    (&data[..start], &data[start..end], &data[end..])
}

/// The data does not parse as PHP-serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Invalid;

/// Parses `data` (surrounding whitespace allowed) as one serialized value and writes it back
/// with the replacements made and the string lengths recomputed.
fn rewrite_serialized(
    data: &[u8],
    replacements: &[(Vec<u8>, Vec<u8>)],
    depth: usize,
) -> Result<Vec<u8>, Invalid> {
    let (lead, core, trail) = trim_ascii_whitespace(data);
    let mut out = Vec::with_capacity(data.len() + 64);
    out.extend_from_slice(lead);
    let mut walker = Walker {
        cur: Cursor { data: core, pos: 0 },
        out: &mut out,
        replacements,
    };
    walker.value(depth)?;
    if walker.cur.pos != core.len() {
        // PHP would ignore (or warn about) extra data; rewriting it as if it were part of
        // the value would be a guess.
        return Err(Invalid);
    }
    out.extend_from_slice(trail);
    Ok(out)
}

#[derive(Debug)]
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn next(&mut self) -> Result<u8, Invalid> {
        let b = *self.data.get(self.pos).ok_or(Invalid)?;
        self.pos += 1;
        Ok(b)
    }

    fn peek(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    fn eat(&mut self, expected: &[u8]) -> Result<(), Invalid> {
        if self.data[self.pos..].starts_with(expected) {
            self.pos += expected.len();
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    fn try_eat(&mut self, expected: &[u8]) -> bool {
        self.eat(expected).is_ok()
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// `[0-9]+` as a length or count.
    fn uint(&mut self) -> Result<usize, Invalid> {
        let start = self.pos;
        if self.digits() == 0 {
            return Err(Invalid);
        }
        self.data[start..self.pos].iter().try_fold(0usize, |n, &d| {
            n.checked_mul(10)
                .and_then(|n| n.checked_add(usize::from(d - b'0')))
                .ok_or(Invalid)
        })
    }

    /// `[+-]?[0-9]+`, validated only: integers are copied as they were written.
    fn int(&mut self) -> Result<(), Invalid> {
        if matches!(self.peek(), Some(b'+' | b'-')) {
            self.pos += 1;
        }
        if self.digits() == 0 {
            return Err(Invalid);
        }
        Ok(())
    }

    /// PHP's float syntax: `iv`, `nv` or `nvexp`, or `NAN`, `INF`, `-INF`.
    fn double(&mut self) -> Result<(), Invalid> {
        if self.try_eat(b"NAN") || self.try_eat(b"INF") || self.try_eat(b"-INF") {
            return Ok(());
        }
        if matches!(self.peek(), Some(b'+' | b'-')) {
            self.pos += 1;
        }
        let mut mantissa = self.digits();
        if self.try_eat(b".") {
            mantissa += self.digits();
        }
        if mantissa == 0 {
            return Err(Invalid);
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            self.int()?;
        }
        Ok(())
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], Invalid> {
        let end = self.pos.checked_add(len).ok_or(Invalid)?;
        let slice = self.data.get(self.pos..end).ok_or(Invalid)?;
        self.pos = end;
        Ok(slice)
    }

    /// `<len>:"<len bytes>"`, the form of class names and string contents.
    fn counted_quoted(&mut self) -> Result<&'a [u8], Invalid> {
        let len = self.uint()?;
        self.eat(b":\"")?;
        let content = self.take(len)?;
        self.eat(b"\"")?;
        Ok(content)
    }
}

/// Walks one serialized value, copying it to `out` with the strings rewritten.
#[derive(Debug)]
struct Walker<'a, 'o, 'r> {
    cur: Cursor<'a>,
    out: &'o mut Vec<u8>,
    replacements: &'r [(Vec<u8>, Vec<u8>)],
}

impl Walker<'_, '_, '_> {
    fn value(&mut self, depth: usize) -> Result<(), Invalid> {
        if depth > MAX_DEPTH {
            return Err(Invalid);
        }
        let start = self.cur.pos;
        match self.cur.next()? {
            b'N' => self.cur.eat(b";")?,
            b'b' => {
                self.cur.eat(b":")?;
                if !(self.cur.try_eat(b"0") || self.cur.try_eat(b"1")) {
                    return Err(Invalid);
                }
                self.cur.eat(b";")?;
            }
            b'i' => {
                self.cur.eat(b":")?;
                self.cur.int()?;
                self.cur.eat(b";")?;
            }
            b'd' => {
                self.cur.eat(b":")?;
                self.cur.double()?;
                self.cur.eat(b";")?;
            }
            b'r' | b'R' => {
                // References count values, and no value is added or removed here.
                self.cur.eat(b":")?;
                self.cur.uint()?;
                self.cur.eat(b";")?;
            }
            b'E' => {
                // An enum case is a name in the code, not data.
                self.cur.eat(b":")?;
                self.cur.counted_quoted()?;
                self.cur.eat(b";")?;
            }
            b'C' => {
                // Custom serialization (the Serializable interface): its payload has its
                // own format, whose lengths this code cannot know, so it stays opaque.
                self.cur.eat(b":")?;
                self.cur.counted_quoted()?;
                self.cur.eat(b":")?;
                let len = self.cur.uint()?;
                self.cur.eat(b":{")?;
                self.cur.take(len)?;
                self.cur.eat(b"}")?;
            }
            b's' => {
                self.cur.pos = start;
                return self.string(depth);
            }
            b'a' => {
                self.cur.eat(b":")?;
                let count = self.cur.uint()?;
                self.cur.eat(b":{")?;
                self.out
                    .extend_from_slice(&self.cur.data[start..self.cur.pos]);
                self.members(count, depth, true)?;
                return Ok(());
            }
            b'O' => {
                self.cur.eat(b":")?;
                self.cur.counted_quoted()?;
                self.cur.eat(b":")?;
                let count = self.cur.uint()?;
                self.cur.eat(b":{")?;
                self.out
                    .extend_from_slice(&self.cur.data[start..self.cur.pos]);
                self.members(count, depth, false)?;
                return Ok(());
            }
            _ => return Err(Invalid),
        }
        self.out
            .extend_from_slice(&self.cur.data[start..self.cur.pos]);
        Ok(())
    }

    /// `count` key/value pairs and the closing brace; the header is already written.
    fn members(&mut self, count: usize, depth: usize, replace_keys: bool) -> Result<(), Invalid> {
        for _ in 0..count {
            let start = self.cur.pos;
            match self.cur.peek() {
                Some(b'i') => {
                    self.cur.eat(b"i:")?;
                    self.cur.int()?;
                    self.cur.eat(b";")?;
                    self.out
                        .extend_from_slice(&self.cur.data[start..self.cur.pos]);
                }
                Some(b's') if replace_keys => self.string(depth + 1)?,
                Some(b's') => {
                    // A property name: the code's, not data.
                    self.cur.eat(b"s:")?;
                    self.cur.counted_quoted()?;
                    self.cur.eat(b";")?;
                    self.out
                        .extend_from_slice(&self.cur.data[start..self.cur.pos]);
                }
                _ => return Err(Invalid),
            }
            self.value(depth + 1)?;
        }
        self.cur.eat(b"}")?;
        self.out.push(b'}');
        Ok(())
    }

    /// `s:<len>:"...";`, its content rewritten (recursively when it is serialized itself).
    fn string(&mut self, depth: usize) -> Result<(), Invalid> {
        let start = self.cur.pos;
        self.cur.eat(b"s:")?;
        let content = self.cur.counted_quoted()?;
        self.cur.eat(b";")?;
        match rewrite_string(content, self.replacements, depth) {
            Cow::Borrowed(_) => self
                .out
                .extend_from_slice(&self.cur.data[start..self.cur.pos]),
            Cow::Owned(new) => {
                self.out
                    .extend_from_slice(format!("s:{}:\"", new.len()).as_bytes());
                self.out.extend_from_slice(&new);
                self.out.extend_from_slice(b"\";");
            }
        }
        Ok(())
    }
}

/// A string's content: serialized data nested in it is rewritten as such; anything else,
/// including nested data that does not parse, gets a plain replace (the enclosing length is
/// recomputed either way, so the outer value stays valid).
fn rewrite_string<'c>(
    content: &'c [u8],
    replacements: &[(Vec<u8>, Vec<u8>)],
    depth: usize,
) -> Cow<'c, [u8]> {
    if !contains_any(content, replacements) {
        return Cow::Borrowed(content);
    }
    if looks_serialized(trim_ascii_whitespace(content).1) {
        if let Ok(new) = rewrite_serialized(content, replacements, depth + 1) {
            return if new == content {
                Cow::Borrowed(content)
            } else {
                Cow::Owned(new)
            };
        }
    }
    match replace_plain(content, replacements) {
        Some(new) => Cow::Owned(new),
        None => Cow::Borrowed(content),
    }
}

/// Whether `data` parses as one PHP-serialized value (for tests, here and in `sql_dump`).
#[cfg(test)]
pub(crate) fn parses(data: &[u8]) -> bool {
    rewrite_serialized(data, &[], 0).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reps(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs
            .iter()
            .map(|(a, b)| (a.as_bytes().to_vec(), b.as_bytes().to_vec()))
            .collect()
    }

    fn domain() -> Vec<(Vec<u8>, Vec<u8>)> {
        reps(&[
            ("http://blog.tenant1.test", "https://www.example.org"),
            ("blog.tenant1.test", "www.example.org"),
        ])
    }

    fn serialized(value: &str) -> String {
        match replace_serialized_aware(value.as_bytes(), &domain()) {
            Outcome::ChangedSerialized(new) => {
                assert!(
                    parses(&new),
                    "output does not parse: {}",
                    String::from_utf8_lossy(&new)
                );
                String::from_utf8(new).expect("utf-8")
            }
            other => panic!("expected a serialized change for {value:?}, got {other:?}"),
        }
    }

    #[test]
    fn plain_value_gets_a_plain_replace() {
        assert_eq!(
            replace_serialized_aware(b"Visit http://blog.tenant1.test/ now", &domain()),
            Outcome::ChangedPlain(b"Visit https://www.example.org/ now".to_vec())
        );
        assert_eq!(
            replace_serialized_aware(b"admin@blog.tenant1.test", &domain()),
            Outcome::ChangedPlain(b"admin@www.example.org".to_vec())
        );
    }

    #[test]
    fn nothing_to_replace_is_unchanged() {
        assert_eq!(
            replace_serialized_aware(b"hello", &domain()),
            Outcome::Unchanged
        );
        assert_eq!(
            replace_serialized_aware(b"a:0:{}", &domain()),
            Outcome::Unchanged
        );
        assert_eq!(replace_serialized_aware(b"", &domain()), Outcome::Unchanged);
        assert_eq!(
            replace_serialized_aware(b"anything", &[]),
            Outcome::Unchanged
        );
        assert_eq!(
            replace_serialized_aware(b"anything", &reps(&[("", "x")])),
            Outcome::Unchanged
        );
    }

    #[test]
    fn longest_needle_wins_and_replacements_are_not_rescanned() {
        let r = reps(&[("a", "b"), ("b", "c"), ("ab", "X")]);
        assert_eq!(replace_plain(b"aab b", &r), Some(b"bX c".to_vec()));
        assert_eq!(replace_plain(b"zzz", &r), None);
    }

    #[test]
    fn string_lengths_are_bytes_with_multibyte_utf8() {
        // "é" is 2 bytes and "🏔" 4: the length must count bytes, as PHP does.
        let value = "s:38:\"Café 🏔 http://blog.tenant1.test/é\";";
        assert!(parses(value.as_bytes()));
        assert_eq!(
            serialized(value),
            "s:37:\"Café 🏔 https://www.example.org/é\";"
        );
    }

    #[test]
    fn nested_arrays_get_every_length_fixed() {
        let value = concat!(
            "a:2:{s:4:\"home\";s:24:\"http://blog.tenant1.test\";",
            "s:5:\"links\";a:2:{i:0;s:26:\"http://blog.tenant1.test/a\";",
            "i:1;a:1:{s:3:\"img\";s:30:\"//blog.tenant1.test/wp/i.png?x\";}}}"
        );
        assert!(parses(value.as_bytes()));
        assert_eq!(
            serialized(value),
            concat!(
                "a:2:{s:4:\"home\";s:23:\"https://www.example.org\";",
                "s:5:\"links\";a:2:{i:0;s:25:\"https://www.example.org/a\";",
                "i:1;a:1:{s:3:\"img\";s:28:\"//www.example.org/wp/i.png?x\";}}}"
            )
        );
    }

    #[test]
    fn string_array_keys_are_replaced_too() {
        assert_eq!(
            serialized("a:1:{s:17:\"blog.tenant1.test\";b:1;}"),
            "a:1:{s:15:\"www.example.org\";b:1;}"
        );
    }

    #[test]
    fn objects_keep_class_and_property_names() {
        // A protected property's name is "\0*\0name": 7 bytes.
        let value = "O:8:\"stdClass\":2:{s:7:\"\0*\0name\";s:17:\"blog.tenant1.test\";s:17:\"blog.tenant1.test\";i:5;}";
        assert!(parses(value.as_bytes()));
        assert_eq!(
            serialized(value),
            "O:8:\"stdClass\":2:{s:7:\"\0*\0name\";s:15:\"www.example.org\";s:17:\"blog.tenant1.test\";i:5;}"
        );
    }

    #[test]
    fn double_serialized_values_are_fixed_inside_and_outside() {
        let inner = "a:1:{s:3:\"url\";s:24:\"http://blog.tenant1.test\";}";
        let value = format!("s:{}:\"{inner}\";", inner.len());
        assert!(parses(value.as_bytes()));
        let new_inner = "a:1:{s:3:\"url\";s:23:\"https://www.example.org\";}";
        assert_eq!(
            serialized(&value),
            format!("s:{}:\"{new_inner}\";", new_inner.len())
        );
        // Nested as an array member too, and with the whole thing serialized once more.
        let member = format!("a:1:{{i:0;{value}}}");
        let expected_member = format!("a:1:{{i:0;s:{}:\"{new_inner}\";}}", new_inner.len());
        assert_eq!(serialized(&member), expected_member);
        let twice = format!("s:{}:\"{member}\";", member.len());
        assert_eq!(
            serialized(&twice),
            format!("s:{}:\"{expected_member}\";", expected_member.len())
        );
    }

    #[test]
    fn quote_semicolon_inside_a_string_is_content() {
        let value = "a:2:{i:0;s:30:\"say \";\" to blog.tenant1.test\";\";i:1;s:2:\"\"}\";}";
        assert!(parses(value.as_bytes()));
        assert_eq!(
            serialized(value),
            "a:2:{i:0;s:28:\"say \";\" to www.example.org\";\";i:1;s:2:\"\"}\";}"
        );
    }

    #[test]
    fn scalars_references_enums_and_opaque_objects_are_kept() {
        let payload = "x:i:0;s:17:\"blog.tenant1.test\";;m:a:0:{}";
        let value = format!(
            concat!(
                "a:12:{{i:0;N;i:1;b:0;i:2;b:1;i:3;i:-12;i:4;d:0.5;i:5;d:INF;i:6;d:-INF;",
                "i:7;d:NAN;i:8;d:1.0E+25;i:9;E:22:\"Suit:blog.tenant1.test\";",
                "i:10;C:11:\"ArrayObject\":{}:{{{}}}",
                "i:11;a:3:{{i:0;s:17:\"blog.tenant1.test\";i:1;r:12;i:2;R:12;}}}}"
            ),
            payload.len(),
            payload
        );
        assert!(parses(value.as_bytes()), "fixture must be valid");
        let out = serialized(&value);
        assert_eq!(
            out,
            value.replace(
                "i:0;s:17:\"blog.tenant1.test\";i:1",
                "i:0;s:15:\"www.example.org\";i:1"
            )
        );
        assert!(out.contains("E:22:\"Suit:blog.tenant1.test\";"));
        assert!(out.contains("{x:i:0;s:17:\"blog.tenant1.test\";;m:a:0:{}}"));
    }

    #[test]
    fn needle_only_in_opaque_parts_is_unchanged() {
        let value = "E:22:\"Host:blog.tenant1.test\";";
        assert!(parses(value.as_bytes()));
        assert_eq!(
            replace_serialized_aware(value.as_bytes(), &domain()),
            Outcome::Unchanged
        );
    }

    #[test]
    fn invalid_serialized_data_is_left_alone() {
        for value in [
            // Wrong length (a previous plain replace broke it).
            "s:20:\"http://blog.tenant1.test\";",
            "a:1:{s:3:\"url\";s:99:\"http://blog.tenant1.test\";}",
            // Count larger than the members.
            "a:2:{i:0;s:17:\"blog.tenant1.test\";}",
            // Trailing data after the value.
            "s:17:\"blog.tenant1.test\";x;",
            // Not a valid key type, bad boolean, bad float.
            "a:1:{b:1;s:17:\"blog.tenant1.test\";}",
            "a:2:{i:0;b:2;i:1;s:17:\"blog.tenant1.test\";}",
            "a:2:{i:0;d:.;i:1;s:17:\"blog.tenant1.test\";}",
            // Prose that happens to look serialized.
            "s: see blog.tenant1.test;",
            // The old escaped-string format is not supported.
            "S:17:\"blog.tenant1.test\";",
        ] {
            assert_eq!(
                replace_serialized_aware(value.as_bytes(), &domain()),
                Outcome::Unparsable,
                "{value}"
            );
        }
    }

    #[test]
    fn nesting_deeper_than_the_limit_does_not_parse() {
        let depth = MAX_DEPTH + 1;
        let mut value = "a:1:{i:0;".repeat(depth);
        value.push_str("s:17:\"blog.tenant1.test\";");
        value.push_str(&"}".repeat(depth));
        assert_eq!(
            replace_serialized_aware(value.as_bytes(), &domain()),
            Outcome::Unparsable
        );

        let depth = MAX_DEPTH - 1;
        let mut value = "a:1:{i:0;".repeat(depth);
        value.push_str("s:17:\"blog.tenant1.test\";");
        value.push_str(&"}".repeat(depth));
        assert!(matches!(
            replace_serialized_aware(value.as_bytes(), &domain()),
            Outcome::ChangedSerialized(_)
        ));
    }

    #[test]
    fn broken_nested_serialized_string_gets_a_plain_replace_inside_a_valid_outer_value() {
        // The inner "a:1:{...}" has a wrong length: it cannot be fixed, but the outer
        // string's length can, so the outer value stays valid.
        let inner = "a:1:{i:0;s:3:\"http://blog.tenant1.test\";}";
        let value = format!("a:1:{{i:0;s:{}:\"{inner}\";}}", inner.len());
        let new_inner = "a:1:{i:0;s:3:\"https://www.example.org\";}";
        assert_eq!(
            serialized(&value),
            format!("a:1:{{i:0;s:{}:\"{new_inner}\";}}", new_inner.len())
        );
    }

    #[test]
    fn surrounding_whitespace_is_kept() {
        assert_eq!(
            serialized(" s:17:\"blog.tenant1.test\";\n"),
            " s:15:\"www.example.org\";\n"
        );
    }

    #[test]
    fn mutated_values_never_panic_nor_come_out_invalid() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut below = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let inner = "a:1:{s:3:\"url\";s:24:\"http://blog.tenant1.test\";}";
        let seed = format!(
            "a:3:{{i:0;s:{}:\"{inner}\";s:17:\"blog.tenant1.test\";O:1:\"X\":1:{{s:1:\"p\";d:0.5;}}i:1;C:1:\"Y\":3:{{abc}}}}",
            inner.len()
        );
        assert!(parses(seed.as_bytes()));
        const BYTES: &[u8] = b"sSaiOCdbNrRE:;{}\"0123456789.-";
        for _ in 0..5000 {
            let mut data = seed.as_bytes().to_vec();
            for _ in 0..1 + below(3) {
                let at = below(data.len());
                let byte = BYTES[below(BYTES.len())];
                match below(3) {
                    0 => data.insert(at, byte),
                    1 => {
                        data.remove(at);
                    }
                    _ => data[at] = byte,
                }
            }
            match replace_serialized_aware(&data, &domain()) {
                Outcome::ChangedSerialized(new) => {
                    assert!(parses(&new), "{}", String::from_utf8_lossy(&new))
                }
                Outcome::ChangedPlain(_) => {
                    assert!(!looks_serialized(trim_ascii_whitespace(&data).1))
                }
                Outcome::Unchanged | Outcome::Unparsable => {}
            }
        }
    }

    #[test]
    fn hostile_lengths_do_not_panic() {
        for value in [
            "s:99999999999999999999999:\"blog.tenant1.test\";",
            "a:18446744073709551615:{i:0;s:17:\"blog.tenant1.test\";}",
            "C:1:\"X\":18446744073709551615:{blog.tenant1.test};",
            "s:17:\"blog.tenant1.test\"}",
        ] {
            assert_eq!(
                replace_serialized_aware(value.as_bytes(), &domain()),
                Outcome::Unparsable,
                "{value}"
            );
        }
    }
}
