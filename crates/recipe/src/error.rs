use std::io;

/// Why a recipe could not be loaded or applied to a host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecipeError {
    #[error("recipe {origin}: {source}")]
    Parse {
        origin: String,
        #[source]
        source: toml::de::Error,
    },
    #[error(
        "recipe {origin}: format version {found} is not supported (this build reads version {})",
        crate::RECIPE_FORMAT
    )]
    Version { origin: String, found: u32 },
    #[error("recipe {origin}: {field}: {reason}")]
    Invalid {
        origin: String,
        field: String,
        reason: String,
    },
    #[error("two recipes are named {name:?}: {first} and {second}")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
    #[error("unknown app {name:?}; known apps: {known}")]
    UnknownApp { name: String, known: String },
    #[error("{app}: no instance {instance:?} on this host ({found})")]
    NoInstance {
        app: String,
        instance: String,
        found: String,
    },
    #[error("{app} instance {instance}: value {value}: {reason}")]
    Value {
        app: String,
        instance: String,
        value: String,
        reason: String,
    },
    #[error("{app} instance {instance}: {field} {path:?} {reason}")]
    PathNotAllowed {
        app: String,
        instance: String,
        field: String,
        path: String,
        reason: String,
    },
    #[error("{app}: cannot read {what}")]
    Io {
        app: String,
        what: String,
        #[source]
        source: io::Error,
    },
}
