//! Rewriting a MariaDB/MySQL dump while it streams into the new database.
//!
//! The dump is read line by line (a line may be many megabytes: one reused buffer, never
//! the whole file). Three things happen on the way:
//!
//! - in the `INSERT` statements of chosen tables, string values get the replacements
//!   (PHP-serialized ones with their lengths fixed), except in columns to leave alone;
//!   values that do not change are copied byte for byte, changed ones are escaped back
//!   exactly as mysqldump escapes;
//! - `DEFINER=user@host` clauses are removed, so that views, triggers, routines and events
//!   belong to the (unprivileged) user that restores the dump;
//! - lines that would make the `mariadb` client run one of its own commands (a shell, another
//!   file, a file written with `tee`...) are refused. mysqldump never writes them; the
//!   restore also runs the client with `--sandbox`, this is defence in depth.
//!
//! To know what the client will do, every line goes through a scanner that follows the
//! client's own lexing (`add_line()` in `client/mysql.cc`): strings, backquoted names,
//! comments, executable `/*! */` comments, `DELIMITER`. Everything else passes through byte
//! for byte.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, BufRead, Write};

use super::php_serialized::{contains_any, replace_plain, replace_serialized_aware, Outcome};

/// Warnings beyond this many are only counted: a dump with a systematic problem would
/// otherwise grow the report without bound.
const MAX_WARNINGS: usize = 1000;

/// Bytes of a value quoted in a warning.
const EXCERPT_BYTES: usize = 80;

/// What to rewrite in a dump.
#[derive(Debug, Clone, Default)]
pub struct DumpRewrite {
    /// Tables whose `INSERT` values get the replacements (names as in the dump, unquoted).
    pub tables: BTreeSet<String>,
    /// (table, column) pairs left alone, such as `("wp_posts", "guid")`: WordPress guids
    /// identify posts forever (feed readers rely on them) and must not follow the domain.
    pub skip_columns: BTreeSet<(String, String)>,
    /// (needle, replacement) pairs; see [`super::replace_plain`] for how they combine.
    pub replacements: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether string values may be PHP-serialized (and must keep their lengths right).
    pub php_serialized: bool,
}

/// What [`rewrite_dump`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewriteReport {
    /// String values that changed (plain or serialized).
    pub values_changed: u64,
    /// Of those, PHP-serialized values rewritten with their lengths recomputed.
    pub serialized_fixed: u64,
    /// `DEFINER=` clauses removed.
    pub definers_removed: u64,
    /// Things a human should look at; the dump was still rewritten.
    pub warnings: Vec<RewriteWarning>,
    /// Warnings beyond the first thousand, counted only.
    pub warnings_omitted: u64,
}

/// Something left as it was that may need a human's eye.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewriteWarning {
    /// A value that looks PHP-serialized and holds a needle, but does not parse: it was
    /// left unchanged, so it still names the old domain.
    UnparsableSerialized {
        line: u64,
        table: String,
        column: String,
        /// The value's first 80 bytes (lossy UTF-8).
        excerpt: String,
    },
    /// A `DEFINER=` clause whose account this rewriter does not understand: left in place,
    /// so the restore fails on it (it needs a privilege) rather than guess.
    UnrecognisedDefiner { line: u64, excerpt: String },
}

impl fmt::Display for RewriteWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnparsableSerialized {
                line,
                table,
                column,
                excerpt,
            } => write!(
                f,
                "line {line}: {table}.{column} looks PHP-serialized but does not parse; \
                 left unchanged: {excerpt:?}"
            ),
            Self::UnrecognisedDefiner { line, excerpt } => {
                write!(
                    f,
                    "line {line}: DEFINER clause not understood, left in place: {excerpt:?}"
                )
            }
        }
    }
}

/// Why a dump could not be rewritten. What was written so far must be discarded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RewriteError {
    #[error("reading or writing the dump")]
    Io(#[from] io::Error),
    #[error(
        "line {line}: the dump would make the mariadb client run its own command {command:?} \
         (mysqldump never writes one); refusing the dump"
    )]
    ClientCommand { line: u64, command: String },
    #[error("line {line}: INSERT into `{table}` not understood: {reason}")]
    Insert {
        line: u64,
        table: String,
        reason: String,
    },
    #[error(
        "line {line}: columns of `{table}` must be left alone, but no CREATE TABLE or column \
         list tells which value is which"
    )]
    UnknownColumns { line: u64, table: String },
    #[error("the dump ends inside an INSERT into `{table}`: it is truncated")]
    Truncated { table: String },
}

/// Copies `input` to `output`, rewriting as `rules` says (see the module documentation).
pub fn rewrite_dump(
    input: &mut dyn BufRead,
    output: &mut dyn Write,
    rules: &DumpRewrite,
) -> Result<RewriteReport, RewriteError> {
    let mut engine = Engine::new(rules);
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        engine.line += 1;
        engine.feed(&line)?;
        engine.flush(output, false)?;
    }
    if let Some(insert) = engine.insert.take() {
        return Err(RewriteError::Truncated {
            table: insert.table,
        });
    }
    engine.flush(output, true)?;
    output.flush()?;
    Ok(engine.report)
}

#[derive(Debug)]
struct Engine<'r> {
    rules: &'r DumpRewrite,
    /// Whether any value can change at all (otherwise INSERTs are not even parsed).
    active: bool,
    /// Input line number, 1-based.
    line: u64,
    lexer: ClientLexer,
    /// Column names of the tables created so far.
    columns: BTreeMap<String, Vec<String>>,
    /// The CREATE TABLE being read: its name and columns so far.
    create: Option<(String, Vec<String>)>,
    insert: Option<Insert>,
    /// Output not yet through the lexer: whole lines, except while a string value spans
    /// lines (then it waits for the value's end).
    pending: Vec<u8>,
    /// DEFINER clauses to cut from the line being flushed.
    cuts: Vec<(usize, usize)>,
    report: RewriteReport,
}

impl<'r> Engine<'r> {
    fn new(rules: &'r DumpRewrite) -> Self {
        let active =
            !rules.tables.is_empty() && rules.replacements.iter().any(|(n, _)| !n.is_empty());
        Self {
            rules,
            active,
            line: 0,
            lexer: ClientLexer::new(),
            columns: BTreeMap::new(),
            create: None,
            insert: None,
            pending: Vec::new(),
            cuts: Vec::new(),
            report: RewriteReport::default(),
        }
    }

    fn feed(&mut self, line: &[u8]) -> Result<(), RewriteError> {
        if let Some(insert) = self.insert.as_mut() {
            let mut ctx = Ctx {
                rules: self.rules,
                report: &mut self.report,
                line: self.line,
            };
            if let Some(end) = insert.feed(line, 0, &mut self.pending, &mut ctx)? {
                self.insert = None;
                self.pending.extend_from_slice(&line[end..]);
            }
            return Ok(());
        }

        if let Some((table, cols)) = self.create.as_mut() {
            if let Some(col) = column_definition(line) {
                cols.push(col);
                self.pending.extend_from_slice(line);
                return Ok(());
            }
            if line.first().is_some_and(|b| b.is_ascii_whitespace()) {
                // Keys, constraints, periods: not columns.
                self.pending.extend_from_slice(line);
                return Ok(());
            }
            // The closing ") ENGINE=..." line, or anything unexpected: the block is over
            // either way, so that a malformed one cannot swallow the INSERTs after it.
            self.columns
                .insert(std::mem::take(table), std::mem::take(cols));
            self.create = None;
            if line.first() == Some(&b')') {
                self.pending.extend_from_slice(line);
                return Ok(());
            }
        }

        if self.lexer.at_statement_level() {
            if let Some(table) = create_table_header(line) {
                self.create = Some((table, Vec::new()));
            } else if self.active {
                if let Some(header) = insert_header(line, self.line, &self.rules.tables)? {
                    return self.start_insert(line, header);
                }
            }
        }
        self.pending.extend_from_slice(line);
        Ok(())
    }

    fn start_insert(&mut self, line: &[u8], header: InsertHeader) -> Result<(), RewriteError> {
        let columns = header
            .columns
            .or_else(|| self.columns.get(&header.table).cloned());
        let skip: Vec<bool> = match &columns {
            Some(names) => names
                .iter()
                .map(|c| {
                    self.rules
                        .skip_columns
                        .contains(&(header.table.clone(), c.clone()))
                })
                .collect(),
            None if self
                .rules
                .skip_columns
                .iter()
                .any(|(t, _)| *t == header.table) =>
            {
                return Err(RewriteError::UnknownColumns {
                    line: self.line,
                    table: header.table,
                })
            }
            None => Vec::new(),
        };
        let mut insert = Insert {
            table: header.table,
            columns,
            skip,
            state: State::BeforeTuple,
            field: 0,
            partial: Vec::new(),
        };
        self.pending.extend_from_slice(&line[..header.values_end]);
        let mut ctx = Ctx {
            rules: self.rules,
            report: &mut self.report,
            line: self.line,
        };
        match insert.feed(line, header.values_end, &mut self.pending, &mut ctx)? {
            Some(end) => self.pending.extend_from_slice(&line[end..]),
            None => self.insert = Some(insert),
        }
        Ok(())
    }

    /// Runs the complete lines of `pending` through the lexer and writes them, minus their
    /// DEFINER clauses. At the end of the input, the last line need not end with a newline.
    fn flush(&mut self, output: &mut dyn Write, at_eof: bool) -> Result<(), RewriteError> {
        let mut start = 0;
        while start < self.pending.len() {
            let end = match self.pending[start..].iter().position(|&b| b == b'\n') {
                Some(p) => start + p + 1,
                None if at_eof => self.pending.len(),
                None => break,
            };
            let line = &self.pending[start..end];
            self.cuts.clear();
            self.lexer
                .line(line, self.line, &mut self.cuts, &mut self.report)?;
            let mut from = 0;
            for &(cut_start, cut_end) in &self.cuts {
                output.write_all(&line[from..cut_start])?;
                from = cut_end;
            }
            output.write_all(&line[from..])?;
            start = end;
        }
        self.pending.drain(..start);
        Ok(())
    }
}

/// What a value needs besides itself.
#[derive(Debug)]
struct Ctx<'a> {
    rules: &'a DumpRewrite,
    report: &'a mut RewriteReport,
    line: u64,
}

fn warn(report: &mut RewriteReport, warning: RewriteWarning) {
    if report.warnings.len() < MAX_WARNINGS {
        report.warnings.push(warning);
    } else {
        report.warnings_omitted += 1;
    }
}

fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(EXCERPT_BYTES)]).into_owned()
}

/// `  \`name\` type ...`: a column of the CREATE TABLE being read.
fn column_definition(line: &[u8]) -> Option<String> {
    let start = line.iter().position(|b| !b.is_ascii_whitespace())?;
    if start == 0 {
        return None;
    }
    let (name, _) = backquoted(line, start)?;
    Some(name)
}

/// `CREATE TABLE [IF NOT EXISTS] \`name\` (`: the start of a table's definition, as
/// mysqldump writes it (one column a line after it).
fn create_table_header(line: &[u8]) -> Option<String> {
    let mut at = keyword(line, 0, b"CREATE")?;
    at = keyword(line, at, b"TABLE")?;
    if let Some(after) = keyword(line, at, b"IF") {
        at = keyword(line, after, b"NOT")?;
        at = keyword(line, at, b"EXISTS")?;
    }
    let (name, after) = table_name(line, at)?;
    let rest = trim_end(&line[after..]);
    (rest
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .eq(*b"("))
    .then_some(name)
}

#[derive(Debug)]
struct InsertHeader {
    table: String,
    columns: Option<Vec<String>>,
    /// Offset just after `VALUES`.
    values_end: usize,
}

/// `INSERT [IGNORE] INTO \`t\` [(\`a\`, ...)] VALUES`, or `REPLACE INTO`, for one of
/// `tables`. `Ok(None)` when the line is no such statement or is one for another table; an
/// error when it is an INSERT whose target cannot be read, or one into `tables` in a form
/// other than mysqldump's.
fn insert_header(
    line: &[u8],
    line_no: u64,
    tables: &BTreeSet<String>,
) -> Result<Option<InsertHeader>, RewriteError> {
    let Some(mut at) = keyword(line, 0, b"INSERT").or_else(|| keyword(line, 0, b"REPLACE")) else {
        return Ok(None);
    };
    for modifier in [
        &b"LOW_PRIORITY"[..],
        b"DELAYED",
        b"HIGH_PRIORITY",
        b"IGNORE",
    ] {
        if let Some(after) = keyword(line, at, modifier) {
            at = after;
        }
    }
    if let Some(after) = keyword(line, at, b"INTO") {
        at = after;
    }
    let Some((table, mut at)) = table_name(line, at) else {
        return Err(RewriteError::Insert {
            line: line_no,
            table: "?".into(),
            reason: format!("no table name in {:?}", excerpt(line)),
        });
    };
    if !tables.contains(&table) {
        return Ok(None);
    }
    let bad = |reason: &str| RewriteError::Insert {
        line: line_no,
        table: table.clone(),
        reason: reason.into(),
    };
    at = skip_spaces(line, at);
    let mut columns = None;
    if line.get(at) == Some(&b'(') {
        let mut names = Vec::new();
        at += 1;
        loop {
            at = skip_spaces(line, at);
            let (name, after) = identifier(line, at).ok_or_else(|| bad("bad column list"))?;
            names.push(name);
            at = skip_spaces(line, after);
            match line.get(at) {
                Some(b',') => at += 1,
                Some(b')') => {
                    at += 1;
                    break;
                }
                _ => return Err(bad("bad column list")),
            }
        }
        columns = Some(names);
    }
    let values_end = keyword(line, at, b"VALUES")
        .or_else(|| keyword(line, at, b"VALUE"))
        .ok_or_else(|| bad("only VALUES (...) lists are supported"))?;
    Ok(Some(InsertHeader {
        table,
        columns,
        values_end,
    }))
}

/// After optional spaces at `at`, the keyword `word` (any case) followed by a non-word
/// byte: the offset after it.
fn keyword(line: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    let at = skip_spaces(line, at);
    let end = at + word.len();
    let found = line.get(at..end)?;
    (found.eq_ignore_ascii_case(word) && !line.get(end).copied().is_some_and(is_word_byte))
        .then_some(end)
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

/// Spaces and tabs (a newline ends the statement header on a line anyway).
fn skip_spaces(line: &[u8], mut at: usize) -> usize {
    while line.get(at).is_some_and(|&b| b == b' ' || b == b'\t') {
        at += 1;
    }
    at
}

fn trim_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    &bytes[..end]
}

/// A possibly qualified table name (`db`.`t`): the table part, and the offset after.
fn table_name(line: &[u8], at: usize) -> Option<(String, usize)> {
    let at = skip_spaces(line, at);
    let (mut name, mut after) = identifier(line, at)?;
    while line.get(after) == Some(&b'.') {
        (name, after) = identifier(line, after + 1)?;
    }
    Some((name, after))
}

/// A backquoted or bare identifier at `at`: its name and the offset after it.
fn identifier(line: &[u8], at: usize) -> Option<(String, usize)> {
    if line.get(at) == Some(&b'`') {
        return backquoted(line, at);
    }
    let len = line[at.min(line.len())..]
        .iter()
        .take_while(|&&b| is_word_byte(b) || b >= 0x80)
        .count();
    (len > 0).then(|| {
        (
            String::from_utf8_lossy(&line[at..at + len]).into_owned(),
            at + len,
        )
    })
}

/// `` `name` `` at `at` (a backquote inside doubled): the name and the offset after it.
fn backquoted(line: &[u8], at: usize) -> Option<(String, usize)> {
    if line.get(at) != Some(&b'`') {
        return None;
    }
    let mut name = Vec::new();
    let mut i = at + 1;
    loop {
        match *line.get(i)? {
            b'`' if line.get(i + 1) == Some(&b'`') => {
                name.push(b'`');
                i += 2;
            }
            b'`' => return Some((String::from_utf8_lossy(&name).into_owned(), i + 1)),
            b'\n' => return None,
            b => {
                name.push(b);
                i += 1;
            }
        }
    }
}

/// The INSERT statement being read, possibly over many lines (MariaDB writes one row a
/// line). Its state survives from one line to the next.
#[derive(Debug)]
struct Insert {
    table: String,
    /// Column names by position, when a column list or CREATE TABLE gave them.
    columns: Option<Vec<String>>,
    /// By position: whether the column is left alone (empty when nothing is skipped).
    skip: Vec<bool>,
    state: State,
    /// Position of the current value in its row.
    field: usize,
    /// A string literal that started on an earlier line, from its opening quote on.
    partial: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After VALUES or a row's comma: a row must start.
    BeforeTuple,
    /// After a row: `,` or `;`.
    AfterTuple,
    /// A value must start.
    BeforeField,
    /// After a value: `,` or `)`.
    AfterField,
    /// Inside a string literal that started on an earlier line (kept in `partial`).
    InString { quote: u8, binary: bool },
}

impl Insert {
    /// Reads `line` from `at`, writing the (rewritten) bytes to `out`. `Some(offset)` after
    /// the statement's final `;`; `None` when the statement goes on on the next line.
    fn feed(
        &mut self,
        line: &[u8],
        mut at: usize,
        out: &mut Vec<u8>,
        ctx: &mut Ctx<'_>,
    ) -> Result<Option<usize>, RewriteError> {
        // Bytes from `copied` to `at` are still to be copied to `out` as they are.
        let mut copied = at;
        while at < line.len() {
            let b = line[at];
            match self.state {
                State::InString { quote, binary } => match string_end(line, at, quote) {
                    Some(end) => {
                        let mut literal = std::mem::take(&mut self.partial);
                        literal.extend_from_slice(&line[at..=end]);
                        self.string_value(&literal, binary, out, ctx);
                        at = end + 1;
                        copied = at;
                        self.state = State::AfterField;
                    }
                    None => {
                        self.partial.extend_from_slice(&line[at..]);
                        return Ok(None);
                    }
                },
                _ if b.is_ascii_whitespace() => at += 1,
                State::BeforeTuple if b == b'(' => {
                    at += 1;
                    self.field = 0;
                    self.state = State::BeforeField;
                }
                State::AfterTuple if b == b',' => {
                    at += 1;
                    self.state = State::BeforeTuple;
                }
                State::AfterTuple if b == b';' => {
                    out.extend_from_slice(&line[copied..=at]);
                    return Ok(Some(at + 1));
                }
                State::AfterField if b == b',' => {
                    at += 1;
                    self.field += 1;
                    self.state = State::BeforeField;
                }
                State::AfterField if b == b')' => {
                    let found = self.field + 1;
                    if let Some(expected) = self.columns.as_ref().map(Vec::len) {
                        if found != expected {
                            return Err(self.error(
                                ctx,
                                format!("a row of {found} values, for {expected} columns"),
                            ));
                        }
                    }
                    at += 1;
                    self.state = State::AfterTuple;
                }
                State::BeforeField => {
                    if let Some(expected) = self.columns.as_ref().map(Vec::len) {
                        if self.field >= expected {
                            return Err(self.error(
                                ctx,
                                format!("a row of more values than its {expected} columns"),
                            ));
                        }
                    }
                    let (quote_at, binary) = match b {
                        b'\'' | b'"' => (at, false),
                        b'_' => {
                            // A charset introducer: `_binary '...'` is a blob, kept as is.
                            let name_end = at
                                + 1
                                + line[at + 1..]
                                    .iter()
                                    .take_while(|&&c| is_word_byte(c))
                                    .count();
                            let quote_at = skip_spaces(line, name_end);
                            if !matches!(line.get(quote_at), Some(b'\'' | b'"')) {
                                // `_binary 0x...`: the literal after it is read next.
                                at = quote_at;
                                continue;
                            }
                            (
                                quote_at,
                                line[at..name_end].eq_ignore_ascii_case(b"_binary"),
                            )
                        }
                        b'x' | b'X' | b'b' | b'B' if line.get(at + 1) == Some(&b'\'') => {
                            // Hex or bit literal: digits only, copied as they are.
                            let end = line[at + 2..]
                                .iter()
                                .position(|&c| c == b'\'')
                                .ok_or_else(|| self.error(ctx, "unterminated literal".into()))?;
                            at += 2 + end + 1;
                            self.state = State::AfterField;
                            continue;
                        }
                        b'N' | b'n' if line.get(at + 1) == Some(&b'\'') => (at + 1, false),
                        _ => {
                            // NULL, numbers, 0x... hex literals: copied as they are.
                            let len = line[at..]
                                .iter()
                                .take_while(|&&c| {
                                    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'-')
                                })
                                .count();
                            if len == 0 {
                                return Err(self
                                    .error(ctx, format!("unexpected {:?}", excerpt(&line[at..]))));
                            }
                            at += len;
                            self.state = State::AfterField;
                            continue;
                        }
                    };
                    let quote = line[quote_at];
                    out.extend_from_slice(&line[copied..quote_at]);
                    match string_end(line, quote_at + 1, quote) {
                        Some(end) => {
                            self.string_value(&line[quote_at..=end], binary, out, ctx);
                            at = end + 1;
                            copied = at;
                            self.state = State::AfterField;
                        }
                        None => {
                            // A raw newline inside the string (not mysqldump's doing, but
                            // valid SQL): the literal goes on on the next line.
                            self.partial.clear();
                            self.partial.extend_from_slice(&line[quote_at..]);
                            self.state = State::InString { quote, binary };
                            return Ok(None);
                        }
                    }
                }
                _ => {
                    return Err(self.error(ctx, format!("unexpected {:?}", excerpt(&line[at..]))));
                }
            }
        }
        out.extend_from_slice(&line[copied..]);
        Ok(None)
    }

    fn error(&self, ctx: &Ctx<'_>, reason: String) -> RewriteError {
        RewriteError::Insert {
            line: ctx.line,
            table: self.table.clone(),
            reason: format!("value {} of a row: {reason}", self.field + 1),
        }
    }

    fn column_name(&self) -> String {
        match self.columns.as_ref().and_then(|c| c.get(self.field)) {
            Some(name) => name.clone(),
            None => format!("#{}", self.field + 1),
        }
    }

    /// One complete string literal, quotes included: written back as it was unless the
    /// replacements change it.
    fn string_value(&self, literal: &[u8], binary: bool, out: &mut Vec<u8>, ctx: &mut Ctx<'_>) {
        let skipped = self.skip.get(self.field).copied().unwrap_or(false);
        if binary || skipped || literal.len() < 2 {
            out.extend_from_slice(literal);
            return;
        }
        let quote = literal[0];
        let value = unescape(&literal[1..literal.len() - 1], quote);
        let replacements = &ctx.rules.replacements;
        let outcome = if !contains_any(&value, replacements) {
            Outcome::Unchanged
        } else if ctx.rules.php_serialized {
            replace_serialized_aware(&value, replacements)
        } else {
            replace_plain(&value, replacements).map_or(Outcome::Unchanged, Outcome::ChangedPlain)
        };
        let new = match outcome {
            Outcome::Unchanged => None,
            Outcome::ChangedPlain(new) => Some(new),
            Outcome::ChangedSerialized(new) => {
                ctx.report.serialized_fixed += 1;
                Some(new)
            }
            Outcome::Unparsable => {
                warn(
                    ctx.report,
                    RewriteWarning::UnparsableSerialized {
                        line: ctx.line,
                        table: self.table.clone(),
                        column: self.column_name(),
                        excerpt: excerpt(&value),
                    },
                );
                None
            }
        };
        match new {
            Some(new) => {
                ctx.report.values_changed += 1;
                out.push(b'\'');
                escape(&new, out);
                out.push(b'\'');
            }
            None => out.extend_from_slice(literal),
        }
    }
}

/// The offset of the quote that closes a string whose content starts at `from`, if on
/// this line. A backslash escapes the next byte; a doubled quote is a quote.
fn string_end(line: &[u8], from: usize, quote: u8) -> Option<usize> {
    let mut i = from;
    while i < line.len() {
        let b = line[i];
        if b == b'\\' {
            i += 2;
        } else if b == quote {
            if line.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return Some(i);
            }
        } else {
            i += 1;
        }
    }
    None
}

/// The bytes a string literal's content stands for, as the server reads them.
fn unescape(content: &[u8], quote: u8) -> std::borrow::Cow<'_, [u8]> {
    if !content.contains(&b'\\') && !content.contains(&quote) {
        return std::borrow::Cow::Borrowed(content);
    }
    let mut out = Vec::with_capacity(content.len());
    let mut i = 0;
    while i < content.len() {
        let b = content[i];
        if b == b'\\' && i + 1 < content.len() {
            let next = content[i + 1];
            match next {
                b'0' => out.push(0),
                b'b' => out.push(0x08),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'Z' => out.push(0x1a),
                // The server keeps these backslashes (they matter to LIKE).
                b'%' | b'_' => out.extend_from_slice(&[b'\\', next]),
                other => out.push(other),
            }
            i += 2;
        } else if b == quote && content.get(i + 1) == Some(&quote) {
            out.push(quote);
            i += 2;
        } else {
            out.push(b);
            i += 1;
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Escapes as mysqldump does (`mysql_real_escape_string` for utf8mb4), without the quotes.
fn escape(value: &[u8], out: &mut Vec<u8>) {
    out.reserve(value.len() + value.len() / 8);
    for &b in value {
        match b {
            0 => out.extend_from_slice(b"\\0"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\'' => out.extend_from_slice(b"\\'"),
            b'"' => out.extend_from_slice(b"\\\""),
            0x1a => out.extend_from_slice(b"\\Z"),
            _ => out.push(b),
        }
    }
}

/// Named client commands that reach outside the database: a shell, other files, another
/// server. (`delimiter` is one too, and mysqldump writes it: it is followed, not refused.)
const DANGEROUS_COMMANDS: [&[u8]; 6] =
    [b"system", b"source", b"tee", b"pager", b"edit", b"connect"];

/// Follows the `mariadb` client's reading of its input, line by line, as `add_line()` and
/// `read_and_execute()` in `client/mysql.cc` do.
#[derive(Debug)]
struct ClientLexer {
    /// The quote of the string or backquoted name that is open.
    quote: Option<u8>,
    /// Inside a `/* ... */` comment (not an executable `/*! ... */` one).
    comment: bool,
    delimiter: Vec<u8>,
}

impl ClientLexer {
    fn new() -> Self {
        Self {
            quote: None,
            comment: false,
            delimiter: b";".to_vec(),
        }
    }

    /// Whether the next line starts outside strings and comments, with the usual delimiter:
    /// where mysqldump writes its table data.
    fn at_statement_level(&self) -> bool {
        self.quote.is_none() && !self.comment && self.delimiter == b";"
    }

    /// Reads one line (with its newline, if any), as the client would. Errors on a client
    /// command other than `delimiter` and the sandbox switch `\-`; pushes the ranges of
    /// the DEFINER clauses found outside strings and comments to `cuts`.
    fn line(
        &mut self,
        line: &[u8],
        line_no: u64,
        cuts: &mut Vec<(usize, usize)>,
        report: &mut RewriteReport,
    ) -> Result<(), RewriteError> {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if self.quote.is_none()
            && (body.is_empty() || body.starts_with(b"#") || body.starts_with(b"--"))
        {
            // The client skips these lines whole, even inside a /* comment.
            return Ok(());
        }
        if self.quote.is_none() && !self.comment && self.named_command(body, line_no)? {
            return Ok(());
        }
        let mut i = 0;
        while i < body.len() {
            let b = body[i];
            if self.comment {
                if body[i..].starts_with(b"*/") {
                    self.comment = false;
                    i += 2;
                } else {
                    i += 1;
                }
                continue;
            }
            if let Some(quote) = self.quote {
                if b == b'\\' && quote != b'`' {
                    i += 2;
                } else {
                    if b == quote {
                        self.quote = None;
                    }
                    i += 1;
                }
                continue;
            }
            match b {
                b'\\' => match body.get(i + 1) {
                    // A trailing backslash is dropped; `\N` is NULL; `\-` turns the
                    // sandbox on (mariadb-dump's first line).
                    None => break,
                    Some(b'N' | b'-') => i += 2,
                    Some(&c) => {
                        return Err(RewriteError::ClientCommand {
                            line: line_no,
                            command: format!("\\{}", char::from(c)),
                        })
                    }
                },
                b'#' => break,
                b'-' if body.get(i + 1) == Some(&b'-')
                    && body.get(i + 2).is_none_or(|c| c.is_ascii_whitespace()) =>
                {
                    break
                }
                b'/' if body.get(i + 1) == Some(&b'*') => {
                    let rest = &body[i + 2..];
                    if !(rest.starts_with(b"!") || rest.starts_with(b"M!")) {
                        self.comment = true;
                    }
                    i += 2;
                }
                b'\'' | b'"' | b'`' => {
                    self.quote = Some(b);
                    i += 1;
                }
                b'D' | b'd' => match definer_clause(body, i) {
                    Definer::Clause(end) => {
                        let end = skip_spaces(body, end);
                        cuts.push((i, end));
                        report.definers_removed += 1;
                        i = end;
                    }
                    Definer::Unrecognised => {
                        warn(
                            report,
                            RewriteWarning::UnrecognisedDefiner {
                                line: line_no,
                                excerpt: excerpt(&body[i..]),
                            },
                        );
                        i += 1;
                    }
                    Definer::None => i += 1,
                },
                _ => i += 1,
            }
        }
        Ok(())
    }

    /// A named command at the start of the line (the client ignores leading spaces and
    /// case): `delimiter` is followed, dangerous ones refused. `true` when the line was a
    /// `delimiter` command (it holds no SQL).
    fn named_command(&mut self, body: &[u8], line_no: u64) -> Result<bool, RewriteError> {
        let start = skip_spaces(body, 0);
        let word_len = body[start..]
            .iter()
            .take_while(|&&b| !matches!(b, b' ' | b'\t' | b';'))
            .count();
        let word = &body[start..start + word_len];
        if word.eq_ignore_ascii_case(b"delimiter") {
            let arg_start = skip_spaces(body, start + word_len);
            let arg_len = body[arg_start..]
                .iter()
                .take_while(|&&b| !matches!(b, b' ' | b'\t'))
                .count();
            if arg_len > 0 {
                self.delimiter = body[arg_start..arg_start + arg_len].to_vec();
            }
            return Ok(true);
        }
        // Refused wherever it appears, even mid-statement where the client would not run
        // it: mysqldump never starts a line with these words.
        if DANGEROUS_COMMANDS
            .iter()
            .any(|c| word.eq_ignore_ascii_case(c))
        {
            return Err(RewriteError::ClientCommand {
                line: line_no,
                command: String::from_utf8_lossy(word).into_owned(),
            });
        }
        Ok(false)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Definer {
    /// Not a DEFINER clause.
    None,
    /// A clause ending at this offset.
    Clause(usize),
    /// `DEFINER=` where one belongs, but an account this code does not read.
    Unrecognised,
}

/// Whether `body[at..]` is a `DEFINER=account` clause where mysqldump writes one: after
/// `CREATE`, `ALTER`, `OR REPLACE`, `ALGORITHM=...`, or the opening of an executable
/// comment (`/*!50017 DEFINER=...*/`, `/*!50013 DEFINER=... SQL SECURITY DEFINER */`).
/// The preceding word is checked so that a column named `definer` in a trigger's body
/// (`SET NEW.definer='x'`) is never taken for one.
fn definer_clause(body: &[u8], at: usize) -> Definer {
    let Some(after_word) = keyword(body, at, b"DEFINER") else {
        return Definer::None;
    };
    if at == 0 || !matches!(body[at - 1], b' ' | b'\t') {
        return Definer::None;
    }
    let before = trim_end(&body[..at]);
    let previous = &before[before
        .iter()
        .rposition(|b| b.is_ascii_whitespace())
        .map_or(0, |p| p + 1)..];
    let after_keyword_word = [
        "CREATE",
        "ALTER",
        "REPLACE",
        "UNDEFINED",
        "MERGE",
        "TEMPTABLE",
    ]
    .iter()
    .any(|w| {
        previous.len() >= w.len()
            && previous[previous.len() - w.len()..].eq_ignore_ascii_case(w.as_bytes())
            && (previous.len() == w.len() || previous[previous.len() - w.len() - 1] == b'=')
    });
    let after_comment_opening = {
        let digits = previous
            .strip_prefix(b"/*!")
            .or_else(|| previous.strip_prefix(b"/*M!"));
        digits.is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    if !(after_keyword_word || after_comment_opening) {
        return Definer::None;
    }
    let eq = skip_spaces(body, after_word);
    if body.get(eq) != Some(&b'=') {
        return Definer::None;
    }
    let Some(mut end) = account_part(body, skip_spaces(body, eq + 1)) else {
        return Definer::Unrecognised;
    };
    if body.get(end) == Some(&b'@') {
        match account_part(body, end + 1) {
            Some(host_end) => end = host_end,
            None => return Definer::Unrecognised,
        }
    }
    Definer::Clause(end)
}

/// A user or host name: `` `quoted` `` (backquote doubled inside), `'quoted'` or
/// `"quoted"` (backslash escapes, quote doubled), or a bare word such as
/// `CURRENT_USER` / `CURRENT_USER()`. The offset after it.
fn account_part(body: &[u8], at: usize) -> Option<usize> {
    match *body.get(at)? {
        b'`' => backquoted(body, at).map(|(_, end)| end),
        q @ (b'\'' | b'"') => string_end(body, at + 1, q).map(|end| end + 1),
        _ => {
            let len = body[at..].iter().take_while(|&&b| is_word_byte(b)).count();
            if len == 0 {
                return None;
            }
            let end = at + len;
            Some(if body[end..].starts_with(b"()") {
                end + 2
            } else {
                end
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::php_serialized::parses;
    use super::*;

    const OLD_URL: &str = "http://blog.tenant1.test";
    const NEW_URL: &str = "https://www.example.org";

    fn wordpress_rules() -> DumpRewrite {
        DumpRewrite {
            tables: [
                "wp_options",
                "wp_posts",
                "wp_postmeta",
                "wp_users",
                "wp_comments",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            skip_columns: [("wp_posts".to_string(), "guid".to_string())]
                .into_iter()
                .collect(),
            replacements: vec![
                (OLD_URL.as_bytes().to_vec(), NEW_URL.as_bytes().to_vec()),
                (b"blog.tenant1.test".to_vec(), b"www.example.org".to_vec()),
            ],
            php_serialized: true,
        }
    }

    fn rewrite(dump: &[u8], rules: &DumpRewrite) -> Result<(Vec<u8>, RewriteReport), RewriteError> {
        let mut out = Vec::new();
        let report = rewrite_dump(&mut &dump[..], &mut out, rules)?;
        Ok((out, report))
    }

    fn rewrite_ok(dump: &str, rules: &DumpRewrite) -> (String, RewriteReport) {
        let (out, report) = rewrite(dump.as_bytes(), rules).expect("rewrite");
        (String::from_utf8(out).expect("utf-8"), report)
    }

    /// Excerpts of a real mariadb-dump of a WordPress site (MariaDB 10.11: one row a line),
    /// with a serialized option and a double-serialized meta value added.
    const WORDPRESS: &str = r#"/*M!999999\- enable the sandbox mode */ 
-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)
--
-- Host: localhost    Database: wp_blog_tenant1_test
-- ------------------------------------------------------
-- Server version	10.11.19-MariaDB-0+deb12u1

/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
/*!40101 SET NAMES utf8mb4 */;
/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;

--
-- Table structure for table `wp_options`
--

DROP TABLE IF EXISTS `wp_options`;
/*!40101 SET @saved_cs_client     = @@character_set_client */;
/*!40101 SET character_set_client = utf8mb4 */;
CREATE TABLE `wp_options` (
  `option_id` bigint(20) unsigned NOT NULL AUTO_INCREMENT,
  `option_name` varchar(191) NOT NULL DEFAULT '',
  `option_value` longtext NOT NULL,
  `autoload` varchar(20) NOT NULL DEFAULT 'yes',
  PRIMARY KEY (`option_id`),
  UNIQUE KEY `option_name` (`option_name`),
  KEY `autoload` (`autoload`)
) ENGINE=InnoDB AUTO_INCREMENT=126 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;
/*!40101 SET character_set_client = @saved_cs_client */;

--
-- Dumping data for table `wp_options`
--

LOCK TABLES `wp_options` WRITE;
/*!40000 ALTER TABLE `wp_options` DISABLE KEYS */;
INSERT INTO `wp_options` VALUES
(1,'siteurl','http://blog.tenant1.test','yes'),
(2,'home','http://blog.tenant1.test','yes'),
(3,'blogname','Tenant Blog blog.tenant1.test','yes'),
(6,'admin_email','admin@blog.tenant1.test','yes'),
(33,'active_plugins','a:0:{}','yes'),
(104,'sidebars_widgets','a:4:{s:19:\"wp_inactive_widgets\";a:0:{}s:9:\"sidebar-1\";a:3:{i:0;s:7:\"block-2\";i:1;s:7:\"block-3\";i:2;s:7:\"block-4\";}s:9:\"sidebar-2\";a:2:{i:0;s:7:\"block-5\";i:1;s:7:\"block-6\";}s:13:\"array_version\";i:3;}','yes'),
(120,'widget_text','a:2:{i:2;a:2:{s:5:\"title\";s:5:\"Links\";s:4:\"text\";s:52:\"<a href=\"http://blog.tenant1.test/about\">It\'s me</a>\";}s:12:\"_multiwidget\";i:1;}','yes');
/*!40000 ALTER TABLE `wp_options` ENABLE KEYS */;
UNLOCK TABLES;

--
-- Table structure for table `wp_posts`
--

DROP TABLE IF EXISTS `wp_posts`;
CREATE TABLE `wp_posts` (
  `ID` bigint(20) unsigned NOT NULL AUTO_INCREMENT,
  `post_author` bigint(20) unsigned NOT NULL DEFAULT 0,
  `post_content` longtext NOT NULL,
  `post_title` text NOT NULL,
  `guid` varchar(255) NOT NULL DEFAULT '',
  `post_type` varchar(20) NOT NULL DEFAULT 'post',
  PRIMARY KEY (`ID`),
  KEY `type_status_date` (`post_type`,`ID`)
) ENGINE=InnoDB AUTO_INCREMENT=7 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

LOCK TABLES `wp_posts` WRITE;
INSERT INTO `wp_posts` VALUES
(3,1,'<!-- wp:paragraph --><p><strong class=\"privacy-policy-tutorial\">Suggested text: </strong>Our website address is: http://blog.tenant1.test.</p><!-- /wp:paragraph -->','Privacy Policy','http://blog.tenant1.test/?page_id=3','page'),
(4,1,'<p>Canary: CANARY-1f9cb002b4198828</p>','Canary post','http://blog.tenant1.test/?p=4','post'),
(6,1,'','canary-9bf07c95.png','http://blog.tenant1.test/wp-content/uploads/2026/11/canary-9bf07c95.png','attachment');
UNLOCK TABLES;

--
-- Table structure for table `wp_postmeta`
--

CREATE TABLE `wp_postmeta` (
  `meta_id` bigint(20) unsigned NOT NULL AUTO_INCREMENT,
  `post_id` bigint(20) unsigned NOT NULL DEFAULT 0,
  `meta_key` varchar(255) DEFAULT NULL,
  `meta_value` longtext DEFAULT NULL,
  PRIMARY KEY (`meta_id`)
) ENGINE=InnoDB AUTO_INCREMENT=4 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

LOCK TABLES `wp_postmeta` WRITE;
INSERT INTO `wp_postmeta` VALUES
(1,6,'_wp_attached_file','2026/11/canary-9bf07c95.png'),
(2,6,'_menu_item_url','s:41:\"a:1:{s:3:\"url\";s:17:\"blog.tenant1.test\";}\";'),
(3,6,'_broken','a:1:{s:3:\"url\";s:99:\"http://blog.tenant1.test\";}'),
(4,6,NULL,NULL);
UNLOCK TABLES;
/*!40103 SET TIME_ZONE=@OLD_TIME_ZONE */;

-- Dump completed on 2026-11-25 12:44:57
"#;

    #[test]
    fn wordpress_excerpt_is_rewritten() {
        let (out, report) = rewrite_ok(WORDPRESS, &wordpress_rules());
        let expected_options = r#"INSERT INTO `wp_options` VALUES
(1,'siteurl','https://www.example.org','yes'),
(2,'home','https://www.example.org','yes'),
(3,'blogname','Tenant Blog www.example.org','yes'),
(6,'admin_email','admin@www.example.org','yes'),
(33,'active_plugins','a:0:{}','yes'),
(104,'sidebars_widgets','a:4:{s:19:\"wp_inactive_widgets\";a:0:{}s:9:\"sidebar-1\";a:3:{i:0;s:7:\"block-2\";i:1;s:7:\"block-3\";i:2;s:7:\"block-4\";}s:9:\"sidebar-2\";a:2:{i:0;s:7:\"block-5\";i:1;s:7:\"block-6\";}s:13:\"array_version\";i:3;}','yes'),
(120,'widget_text','a:2:{i:2;a:2:{s:5:\"title\";s:5:\"Links\";s:4:\"text\";s:51:\"<a href=\"https://www.example.org/about\">It\'s me</a>\";}s:12:\"_multiwidget\";i:1;}','yes');
"#;
        assert!(out.contains(expected_options), "{out}");
        let expected_posts = r#"INSERT INTO `wp_posts` VALUES
(3,1,'<!-- wp:paragraph --><p><strong class=\"privacy-policy-tutorial\">Suggested text: </strong>Our website address is: https://www.example.org.</p><!-- /wp:paragraph -->','Privacy Policy','http://blog.tenant1.test/?page_id=3','page'),
(4,1,'<p>Canary: CANARY-1f9cb002b4198828</p>','Canary post','http://blog.tenant1.test/?p=4','post'),
(6,1,'','canary-9bf07c95.png','http://blog.tenant1.test/wp-content/uploads/2026/11/canary-9bf07c95.png','attachment');
"#;
        assert!(out.contains(expected_posts), "{out}");
        let expected_meta = r#"(2,6,'_menu_item_url','s:39:\"a:1:{s:3:\"url\";s:15:\"www.example.org\";}\";'),
(3,6,'_broken','a:1:{s:3:\"url\";s:99:\"http://blog.tenant1.test\";}'),
"#;
        assert!(out.contains(expected_meta), "{out}");
        // Everything else is as it was, line for line.
        let changed: Vec<_> = WORDPRESS
            .lines()
            .zip(out.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(changed.len(), 7, "{changed:#?}");
        assert_eq!(WORDPRESS.lines().count(), out.lines().count());

        assert_eq!(report.values_changed, 7);
        assert_eq!(report.serialized_fixed, 2);
        assert_eq!(report.definers_removed, 0);
        assert_eq!(
            report.warnings,
            vec![RewriteWarning::UnparsableSerialized {
                line: 86,
                table: "wp_postmeta".into(),
                column: "meta_value".into(),
                excerpt: r#"a:1:{s:3:"url";s:99:"http://blog.tenant1.test";}"#.into(),
            }]
        );
        assert_eq!(report.warnings_omitted, 0);
        assert!(report.warnings[0]
            .to_string()
            .contains("wp_postmeta.meta_value"));
        assert!(parses(
            br#"s:39:"a:1:{s:3:"url";s:15:"www.example.org";}";"#
        ));
    }

    #[test]
    fn dump_without_matches_is_identical() {
        let mut rules = wordpress_rules();
        rules.replacements = vec![(b"nowhere.invalid".to_vec(), b"x".to_vec())];
        let (out, report) = rewrite_ok(WORDPRESS, &rules);
        assert_eq!(out, WORDPRESS);
        assert_eq!(report, RewriteReport::default());
        // Nor when nothing is to be replaced at all, nor without a final newline.
        let (out, _) = rewrite_ok(WORDPRESS, &DumpRewrite::default());
        assert_eq!(out, WORDPRESS);
        let trimmed = WORDPRESS.trim_end();
        let (out, _) = rewrite_ok(trimmed, &rules);
        assert_eq!(out, trimmed);
    }

    #[test]
    fn plain_replace_when_values_are_not_php() {
        let mut rules = wordpress_rules();
        rules.php_serialized = false;
        let (out, report) = rewrite_ok(WORDPRESS, &rules);
        // The length is not fixed: that is what php_serialized is for.
        assert!(out.contains(
            r#"(2,6,'_menu_item_url','s:41:\"a:1:{s:3:\"url\";s:17:\"www.example.org\";}\";'),"#
        ));
        assert_eq!(report.serialized_fixed, 0);
        assert!(report.warnings.is_empty());
        assert_eq!(report.values_changed, 8);
    }

    const ESCAPES_HEADER: &str = "CREATE TABLE `t` (\n  `id` int(11) NOT NULL,\n  `v` longtext,\n  `b` blob\n) ENGINE=InnoDB;\n";

    #[test]
    fn escapes_round_trip() {
        // \' \\ \n \0 \Z \r \" and a literal "),(" inside a value that changes.
        let dump = format!(
            "{ESCAPES_HEADER}INSERT INTO `t` VALUES (1,'it\\'s \\\\ a\\nb\\0c\\Zd\\r\\\"),(\\\" http://blog.tenant1.test \\t\\b x''y',NULL),(2,'),(',0x00ff);\n"
        );
        let mut rules = wordpress_rules();
        rules.tables.insert("t".into());
        let (out, report) = rewrite_ok(&dump, &rules);
        // mysqldump escapes \0 \n \r \\ \' \" \Z; tab and backspace are written raw, and a
        // doubled quote comes back as \'.
        let expected = format!(
            "{ESCAPES_HEADER}INSERT INTO `t` VALUES (1,'it\\'s \\\\ a\\nb\\0c\\Zd\\r\\\"),(\\\" https://www.example.org \t\u{8} x\\'y',NULL),(2,'),(',0x00ff);\n"
        );
        assert_eq!(out, expected);
        assert_eq!(report.values_changed, 1);

        // The same escapes in a value without a match come out byte for byte.
        let untouched = dump.replace("http://blog.tenant1.test", "elsewhere");
        let (out, report) = rewrite_ok(&untouched, &rules);
        assert_eq!(out, untouched);
        assert_eq!(report.values_changed, 0);
    }

    #[test]
    fn unescape_and_escape_are_inverse_for_mysqldump_output() {
        let value: Vec<u8> = (0u8..=255).collect();
        let mut escaped = Vec::new();
        escape(&value, &mut escaped);
        assert_eq!(unescape(&escaped, b'\'').as_ref(), value.as_slice());
        assert_eq!(unescape(br"a\%b\_c\qd", b'\'').as_ref(), br"a\%b\_cqd");
    }

    #[test]
    fn binary_and_hex_values_are_untouched() {
        let dump = format!(
            "{ESCAPES_HEADER}INSERT INTO `t` VALUES (1,_binary 'http://blog.tenant1.test\\0',_binary 0x687474703A2F2F626C6F672E74656E616E74312E74657374),(2,_utf8mb4'http://blog.tenant1.test',X'00'),(3,N'blog.tenant1.test',b'101');\n"
        );
        let mut rules = wordpress_rules();
        rules.tables.insert("t".into());
        let (out, report) = rewrite_ok(&dump, &rules);
        assert_eq!(
            out,
            dump.replace(
                "_utf8mb4'http://blog.tenant1.test'",
                "_utf8mb4'https://www.example.org'"
            )
            .replace("N'blog.tenant1.test'", "N'www.example.org'")
        );
        assert_eq!(report.values_changed, 2);
    }

    #[test]
    fn skipped_columns_are_kept() {
        let (out, _) = rewrite_ok(WORDPRESS, &wordpress_rules());
        assert!(out.contains("'http://blog.tenant1.test/?p=4','post'"));
        let mut rules = wordpress_rules();
        rules.skip_columns.clear();
        let (out, _) = rewrite_ok(WORDPRESS, &rules);
        assert!(out.contains("'https://www.example.org/?p=4','post'"));
    }

    #[test]
    fn single_line_inserts_and_column_lists() {
        let dump = concat!(
            "INSERT INTO `wp_posts` (`ID`, `guid`, `post_content`) VALUES (1,'http://blog.tenant1.test/?p=1','see http://blog.tenant1.test'),(2,'http://blog.tenant1.test/?p=2','none');\n",
            "INSERT IGNORE INTO `wp_posts` (`post_content`,`guid`) VALUES ('blog.tenant1.test','blog.tenant1.test');\n",
            "REPLACE INTO wp_posts (guid) VALUE ('blog.tenant1.test');\n",
        );
        let (out, report) = rewrite_ok(dump, &wordpress_rules());
        assert_eq!(
            out,
            concat!(
                "INSERT INTO `wp_posts` (`ID`, `guid`, `post_content`) VALUES (1,'http://blog.tenant1.test/?p=1','see https://www.example.org'),(2,'http://blog.tenant1.test/?p=2','none');\n",
                "INSERT IGNORE INTO `wp_posts` (`post_content`,`guid`) VALUES ('www.example.org','blog.tenant1.test');\n",
                "REPLACE INTO wp_posts (guid) VALUE ('blog.tenant1.test');\n",
            )
        );
        assert_eq!(report.values_changed, 2);
    }

    #[test]
    fn string_with_raw_newlines_spanning_lines() {
        let dump = format!(
            "{ESCAPES_HEADER}INSERT INTO `t` VALUES (1,'first\nhttp://blog.tenant1.test\n\nlast',NULL),\n(2,'a\nb',NULL);\nSELECT 1;\n"
        );
        let mut rules = wordpress_rules();
        rules.tables.insert("t".into());
        let (out, report) = rewrite_ok(&dump, &rules);
        assert_eq!(
            out,
            format!("{ESCAPES_HEADER}INSERT INTO `t` VALUES (1,'first\\nhttps://www.example.org\\n\\nlast',NULL),\n(2,'a\nb',NULL);\nSELECT 1;\n")
        );
        assert_eq!(report.values_changed, 1);
    }

    #[test]
    fn definers_are_removed() {
        let dump = concat!(
            "/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER `t1` BEFORE INSERT ON `wp_posts` FOR EACH ROW SET NEW.definer='x' */;;\n",
            "/*!50001 CREATE ALGORITHM=UNDEFINED */\n",
            "/*!50013 DEFINER=`wp``user`@`%` SQL SECURITY DEFINER */\n",
            "/*!50001 VIEW `v` AS select 'DEFINER=`a`@`b`' AS `x` */;\n",
            "CREATE DEFINER=`root`@`localhost` PROCEDURE `p`()\n",
            "CREATE DEFINER=`root`@`127.0.0.1` FUNCTION `f`() RETURNS int(11)\n",
            "/*!50106 CREATE*/ /*!50117 DEFINER=`admin`@`%`*/ /*!50106 EVENT `e` ON SCHEDULE EVERY 1 DAY DO SELECT 1 */ ;;\n",
            "CREATE DEFINER='root'@'localhost' PROCEDURE `q`()\n",
            "CREATE OR REPLACE DEFINER=CURRENT_USER() VIEW `w` AS SELECT 1;\n",
            "CREATE DEFINER=`role_only` PROCEDURE `r`()\n",
            "UPDATE t SET definer='x' WHERE 1;\n",
            "-- CREATE DEFINER=`root`@`localhost` PROCEDURE in a comment\n",
        );
        let (out, report) = rewrite_ok(dump, &DumpRewrite::default());
        assert_eq!(
            out,
            concat!(
                "/*!50003 CREATE*/ /*!50017 */ /*!50003 TRIGGER `t1` BEFORE INSERT ON `wp_posts` FOR EACH ROW SET NEW.definer='x' */;;\n",
                "/*!50001 CREATE ALGORITHM=UNDEFINED */\n",
                "/*!50013 SQL SECURITY DEFINER */\n",
                "/*!50001 VIEW `v` AS select 'DEFINER=`a`@`b`' AS `x` */;\n",
                "CREATE PROCEDURE `p`()\n",
                "CREATE FUNCTION `f`() RETURNS int(11)\n",
                "/*!50106 CREATE*/ /*!50117 */ /*!50106 EVENT `e` ON SCHEDULE EVERY 1 DAY DO SELECT 1 */ ;;\n",
                "CREATE PROCEDURE `q`()\n",
                "CREATE OR REPLACE VIEW `w` AS SELECT 1;\n",
                "CREATE PROCEDURE `r`()\n",
                "UPDATE t SET definer='x' WHERE 1;\n",
                "-- CREATE DEFINER=`root`@`localhost` PROCEDURE in a comment\n",
            )
        );
        assert_eq!(report.definers_removed, 8);
        assert!(report.warnings.is_empty());
    }

    #[test]
    fn unreadable_definer_is_kept_with_a_warning() {
        let dump = "CREATE DEFINER=@`x` PROCEDURE `p`()\n";
        let (out, report) = rewrite_ok(dump, &DumpRewrite::default());
        assert_eq!(out, dump);
        assert!(matches!(
            report.warnings.as_slice(),
            [RewriteWarning::UnrecognisedDefiner { line: 1, .. }]
        ));
    }

    #[test]
    fn client_commands_are_refused() {
        for (dump, command) in [
            ("\\! id\n", "\\!"),
            ("SELECT 1;\n  \\! touch /tmp/x\n", "\\!"),
            ("system id\n", "system"),
            ("SYSTEM id\n", "SYSTEM"),
            ("\\. /etc/passwd\n", "\\."),
            ("source /etc/passwd\n", "source"),
            ("  tee /tmp/out\n", "tee"),
            ("pager sh -c id\n", "pager"),
            ("connect evil.example\n", "connect"),
            ("SELECT 1; \\! id\n", "\\!"),
            ("SELECT 'it''s' \\! id\n", "\\!"),
            ("/*!40101 SET x=1 \\! id */;\n", "\\!"),
            ("INSERT INTO `x` VALUES (1,'a');\\! id\n", "\\!"),
            // A string that ends on the next line: the command after it is live.
            ("SELECT 'a\nb'; \\. /etc/passwd\n", "\\."),
        ] {
            match rewrite(dump.as_bytes(), &wordpress_rules()) {
                Err(RewriteError::ClientCommand { command: c, .. }) => {
                    assert_eq!(c, command, "{dump:?}")
                }
                other => panic!("{dump:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn backslashes_in_strings_and_comments_are_not_commands() {
        let dump = concat!(
            "/*M!999999\\- enable the sandbox mode */ \n",
            "INSERT INTO `x` VALUES (1,'\\\\! not a command'),(2,\"\\\\. nor this\");\n",
            "SELECT 'multi\n",
            "\\! still inside the string\n",
            "system is a word in a string too';\n",
            "-- \\! a comment\n",
            "# source a comment\n",
            "SELECT 1; -- \\! a comment\n",
            "SELECT 1 /* \\! a comment\n",
            "source inside the comment */;\n",
            "SELECT `a\\` FROM t;\n",
            "DELIMITER ;;\n",
            "CREATE PROCEDURE p() BEGIN SELECT 1; END ;;\n",
            "DELIMITER ;\n",
            "SELECT \\N;\n",
        );
        let (out, _) = rewrite_ok(dump, &wordpress_rules());
        assert_eq!(out, dump);
    }

    #[test]
    fn inserts_in_routine_bodies_are_left_alone() {
        let dump = concat!(
            "DELIMITER ;;\n",
            "INSERT INTO `wp_options` VALUES (CONCAT('blog.tenant1.test'));;\n",
            "DELIMITER ;\n",
        );
        let (out, report) = rewrite_ok(dump, &wordpress_rules());
        assert_eq!(out, dump);
        assert_eq!(report.values_changed, 0);
    }

    #[test]
    fn malformed_inserts_are_errors() {
        let rules = wordpress_rules();
        let header = "CREATE TABLE `wp_options` (\n  `a` int,\n  `b` text\n);\n";
        for (body, fragment) in [
            (
                "INSERT INTO `wp_options` VALUES (1,'x',3);\n",
                "a row of more values",
            ),
            (
                "INSERT INTO `wp_options` VALUES (1);\n",
                "a row of 1 values, for 2 columns",
            ),
            ("INSERT INTO `wp_options` VALUES (1,NOW());\n", "unexpected"),
            ("INSERT INTO `wp_options` SELECT * FROM x;\n", "only VALUES"),
        ] {
            let dump = format!("{header}{body}");
            match rewrite(dump.as_bytes(), &rules) {
                Err(e @ RewriteError::Insert { .. }) => {
                    assert!(e.to_string().contains(fragment), "{body}: {e}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        match rewrite(
            format!("{header}INSERT INTO `wp_options` VALUES (1,'x'),\n").as_bytes(),
            &rules,
        ) {
            Err(RewriteError::Truncated { table }) => assert_eq!(table, "wp_options"),
            other => panic!("{other:?}"),
        }
        // guid must be skipped, but without CREATE TABLE nothing says which value it is.
        match rewrite(b"INSERT INTO `wp_posts` VALUES (1,'x');\n", &rules) {
            Err(RewriteError::UnknownColumns { table, .. }) => assert_eq!(table, "wp_posts"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_tables_pass_through() {
        let dump = "INSERT INTO `wp_other` VALUES (1,'http://blog.tenant1.test',NOW());\nINSERT INTO wp_other SELECT 1;\n";
        let (out, report) = rewrite_ok(dump, &wordpress_rules());
        assert_eq!(out, dump);
        assert_eq!(report.values_changed, 0);
    }

    /// Small deterministic generator for the mutation tests (no dependency for so little).
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    fn mutate(rng: &mut XorShift, input: &[u8]) -> Vec<u8> {
        const BYTES: &[u8] = b"'\\\n\"`(),;:{}s0123456789aNx_/*!#- ";
        let mut data = input.to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(data.len() + 1);
            let byte = BYTES[rng.below(BYTES.len())];
            match rng.below(3) {
                0 => data.insert(at, byte),
                1 if at < data.len() => {
                    data.remove(at);
                }
                _ if at < data.len() => data[at] = byte,
                _ => data.push(byte),
            }
        }
        data
    }

    #[test]
    fn mutated_dumps_never_panic_and_pass_through_without_matches() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut absent = wordpress_rules();
        absent.replacements = vec![(b"nowhere.invalid".to_vec(), b"x".to_vec())];
        let rules = wordpress_rules();
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..3000 {
            let dump = mutate(&mut rng, WORDPRESS.as_bytes());
            match rewrite(&dump, &absent) {
                Ok((out, _)) => {
                    assert!(out == dump, "{}", String::from_utf8_lossy(&dump));
                    ok += 1;
                }
                Err(_) => refused += 1,
            }
            let _ = rewrite(&dump, &rules);
        }
        assert!(ok > 1000 && refused > 0, "{ok} {refused}");
    }
}
