//! Rewriting a tenant's database for its new home: when a WordPress site moves to a new
//! domain, its dump is rewritten while it streams into the new database. The old domain
//! becomes the new one in chosen tables and columns, PHP-serialized values stay valid
//! (their lengths are recomputed), and `DEFINER` clauses go, so that the restoring
//! (unprivileged) user owns the views, triggers and routines. A dump that would make the
//! `mariadb` client run one of its own commands is refused.

mod php_serialized;
mod sql_dump;

pub use php_serialized::{replace_plain, replace_serialized_aware, Outcome, MAX_DEPTH};
pub use sql_dump::{rewrite_dump, DumpRewrite, RewriteError, RewriteReport, RewriteWarning};
