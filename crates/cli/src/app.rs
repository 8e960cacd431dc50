//! `baluchon detect`, and `baluchon export --app`: apps described by recipes.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use baluchon_bundle::Progress;
use baluchon_migrate::{capture_instance, plan_instance, CaptureOptions, CapturePlan};
use baluchon_recipe::{Catalogue, Instance, LocalHost, Recipe, HOST_RECIPE_DIR};
use baluchon_signature::SigningKey;
use clap::Args;

/// List the app instances found on this host
///
/// Each recipe (built-in, or the host's own in /etc/baluchon/recipes) says how to find its
/// app's instances. An instance that is found but cannot be read fully is listed with the
/// reason.
///
/// Example:
///   baluchon detect --json
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct DetectArgs {
    /// Print JSON on standard output
    #[arg(long)]
    json: bool,
}

fn catalogue() -> anyhow::Result<Catalogue> {
    Ok(Catalogue::load(&[PathBuf::from(HOST_RECIPE_DIR)])?)
}

pub fn load_recipe(app: &str, file: Option<&Path>) -> anyhow::Result<Recipe> {
    let recipe = match file {
        Some(path) => Catalogue::read(path)?,
        None => catalogue()?.get(app)?.clone(),
    };
    anyhow::ensure!(
        recipe.name() == app,
        "the recipe {} is for app {:?}, not {app:?}",
        recipe.origin(),
        recipe.name()
    );
    Ok(recipe)
}

pub fn resolve(recipe: &Recipe, instance: &str) -> anyhow::Result<Instance> {
    Ok(recipe.resolve(&LocalHost::new(), instance)?)
}

pub fn detect(args: &DetectArgs) -> anyhow::Result<()> {
    let host = LocalHost::new();
    let catalogue = catalogue()?;
    let mut apps = Vec::new();
    for recipe in catalogue.recipes() {
        let mut instances = Vec::new();
        for name in recipe.detect(&host)? {
            instances.push(match recipe.resolve(&host, &name) {
                Ok(i) => serde_json::json!({
                    "name": i.name, "domain": i.domain, "version": i.version,
                }),
                Err(e) => serde_json::json!({"name": name, "error": e.to_string()}),
            });
        }
        apps.push(serde_json::json!({
            "app": recipe.name(), "title": recipe.title(), "recipe": recipe.origin(),
            "instances": instances,
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&apps)?);
        return Ok(());
    }
    for app in &apps {
        let instances = app["instances"].as_array().map_or(&[][..], Vec::as_slice);
        println!(
            "{} ({}): {}",
            app["app"].as_str().unwrap_or(""),
            app["title"].as_str().unwrap_or(""),
            match instances.len() {
                0 => "no instance".to_owned(),
                1 => "1 instance".to_owned(),
                n => format!("{n} instances"),
            }
        );
        for i in instances {
            match i.get("error") {
                Some(e) => println!(
                    "  {}  cannot be read: {}",
                    i["name"].as_str().unwrap_or(""),
                    e.as_str().unwrap_or("")
                ),
                None => println!(
                    "  {}  domain {}, version {}",
                    i["name"].as_str().unwrap_or(""),
                    i["domain"].as_str().unwrap_or(""),
                    i["version"].as_str().unwrap_or("unknown")
                ),
            }
        }
    }
    Ok(())
}

pub fn print_plan(instance: &Instance, json: bool) -> anyhow::Result<()> {
    let plan = plan_instance(instance, &LocalHost::new())
        .with_context(|| format!("planning the export of {} {}", instance.app, instance.name))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(());
    }
    print_plan_text(&plan);
    Ok(())
}

fn print_plan_text(plan: &CapturePlan) {
    println!(
        "{} instance {} (domain {}, version {}): nothing written",
        plan.app,
        plan.instance,
        plan.domain,
        plan.version.as_deref().unwrap_or("unknown")
    );
    println!("files:");
    for set in &plan.files {
        println!(
            "  {:<6} {} ({}, {} entries, {} bytes)",
            set.role.to_string(),
            set.path.display(),
            set.kind,
            set.entries,
            set.bytes
        );
    }
    if !plan.excluded.is_empty() {
        println!("left out: {} entries, for example:", plan.excluded.len());
        for e in plan.excluded.iter().take(5) {
            println!("  {}: {}", e.path, e.reason);
        }
    }
    for db in &plan.databases {
        println!(
            "database {}: {} {} (about {} bytes; reachable with the app's credentials)",
            db.id, db.engine, db.source, db.estimated_bytes
        );
    }
    for s in &plan.services {
        println!("service: {} {}", s.kind, s.path);
    }
    let list = |p: &[baluchon_migrate::PackageRecord]| {
        p.iter()
            .map(|p| match &p.version {
                Some(v) => format!("{} {v}", p.name),
                None => format!("{} (not installed here)", p.name),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "code from packages (recorded, not copied): {}",
        list(&plan.code_packages)
    );
    println!(
        "packages the new host needs: {}",
        list(&plan.needs_packages)
    );
    for o in &plan.omitted {
        println!("not captured: {o}");
    }
    println!("total before compression: {} bytes", plan.total_bytes);
}

#[allow(clippy::too_many_arguments)]
pub fn capture(
    recipe: &Recipe,
    instance: &Instance,
    tenant: &str,
    sequence: u64,
    output: &Path,
    key: &SigningKey,
    progress: &dyn Progress,
    json: bool,
    keep_secrets: bool,
) -> anyhow::Result<()> {
    let mut options = CaptureOptions::new(output.to_owned());
    options.keep_secrets = keep_secrets;
    options.tenant = Some(tenant.to_owned());
    options.sequence = sequence;
    let report = capture_instance(recipe, instance, &LocalHost::new(), &options, key, progress)
        .with_context(|| format!("exporting {} {} failed", instance.app, instance.name))?;
    if json {
        let mut value = serde_json::to_value(&report.description)?;
        // The full package inventory is in the bundle; the report stays readable.
        // With the tree export's fields: what was skipped or changed must show here too.
        if let (Some(obj), serde_json::Value::Object(tree)) = (
            value.as_object_mut(),
            crate::export::report_json(&report.bundle),
        ) {
            obj.remove("installed_packages");
            obj.extend(tree);
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    crate::export::print_report(&report.bundle, false)?;
    let d = &report.description;
    for db in &d.databases {
        println!(
            "database {}: {} {} dumped to {} (server {})",
            db.id,
            db.engine,
            db.name.as_deref().or(db.path.as_deref()).unwrap_or(""),
            db.dump,
            db.server_version
        );
        if let Some(note) = &db.note {
            println!("  {note}");
        }
    }
    for set in &d.files {
        println!(
            "{:<6} {} ({}, {} entries)",
            set.role.to_string(),
            set.path,
            set.kind,
            set.entries
        );
    }
    if !d.excluded.is_empty() {
        println!(
            "{} entries left out as the recipe says (each listed in data/app/app.json)",
            d.excluded.len()
        );
    }
    for o in &d.omitted {
        println!("not captured: {o}");
    }
    if !d.redacted_secrets.is_empty() {
        println!(
            "left out of the bundle (the import makes new ones): {}",
            d.redacted_secrets.join(", ")
        );
    }
    Ok(())
}
