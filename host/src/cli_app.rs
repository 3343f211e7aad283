//! `stasis-host app …`: the admin API from a terminal, with output for people.

use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use stasis_host::admin_client::AdminClient;

use crate::AppCommand;

/// Runs one command; a failure is printed as one readable line (the server's own message)
/// and exits with status 1, without a backtrace.
pub async fn run(host: &str, token: Option<String>, command: AppCommand) -> anyhow::Result<()> {
    if let Err(e) = execute(host, token, command).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

async fn execute(host: &str, token: Option<String>, command: AppCommand) -> anyhow::Result<()> {
    let client = AdminClient::new(host, token);
    match command {
        AppCommand::Push {
            file,
            name,
            max_live_calls,
            memory_mb,
            callback_deadline_ms,
            on_fault,
            config,
        } => {
            let wasm = tokio::fs::read(&file)
                .await
                .with_context(|| format!("reading {}", file.display()))?;
            let mut query = Vec::new();
            let mut limit = |k: &str, v: Option<String>| {
                if let Some(v) = v {
                    query.push((k.to_string(), v));
                }
            };
            limit("max_live_calls", max_live_calls.map(|v| v.to_string()));
            limit("memory_mb", memory_mb.map(|v| v.to_string()));
            limit(
                "callback_deadline_ms",
                callback_deadline_ms.map(|v| v.to_string()),
            );
            limit("on_fault", on_fault);
            for pair in config {
                let Some((k, v)) = pair.split_once('=') else {
                    bail!("--config {pair:?}: expected KEY=VALUE")
                };
                query.push((format!("config.{k}"), v.to_string()));
            }
            let bar = ProgressBar::new(wasm.len() as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message(format!("uploading {}", file.display()));
            let started = Instant::now();
            let progress = bar.clone();
            let pending = client.push(&name, wasm, &query, move |sent| {
                progress.set_position(sent);
                if sent >= progress.length().unwrap_or(0) {
                    progress.set_message("validating and compiling");
                }
            });
            let result = pending.await;
            bar.finish_and_clear();
            let uploaded = result?;
            println!(
                "{} version {} is serving new calls ({} bytes, sha256 {}, compiled in {} ms, {} ms in all){}",
                str_of(&uploaded["name"]),
                uploaded["version"],
                uploaded["size"],
                short(&uploaded["sha256"]),
                uploaded["compile_ms"],
                started.elapsed().as_millis(),
                match uploaded["replaced"].as_u64() {
                    Some(v) => format!("; version {v} finishes its calls in progress"),
                    None => String::new(),
                }
            );
        }
        AppCommand::List => {
            let list = client.list().await?;
            let apps = list["apps"].as_array().cloned().unwrap_or_default();
            if apps.is_empty() {
                println!("no apps");
                return Ok(());
            }
            println!(
                "{:<20} {:>7} {:>10} {:>10} {:<14} STATUS",
                "NAME", "VERSION", "SIZE", "LIVE", "SHA256"
            );
            for app in &apps {
                let status = if app["draining"].as_bool() == Some(true) {
                    "draining".to_string()
                } else if app["source"] == "config" {
                    "from config".to_string()
                } else {
                    match app["recent_errors"].as_array().map_or(0, Vec::len) {
                        0 => "ok".to_string(),
                        n => format!("{n} recent error(s)"),
                    }
                };
                println!(
                    "{:<20} {:>7} {:>10} {:>10} {:<14} {status}",
                    str_of(&app["name"]),
                    app["active_version"]
                        .as_u64()
                        .map_or("-".to_string(), |v| v.to_string()),
                    app["size"]
                        .as_u64()
                        .map_or("-".to_string(), |v| v.to_string()),
                    app["live_calls"].to_string(),
                    short(&app["sha256"]),
                );
            }
        }
        AppCommand::Show { name } => {
            let app = client.get(&name).await?;
            println!(
                "{}  ({}), live calls: {}",
                str_of(&app["name"]),
                str_of(&app["source"]),
                app["live_calls"]
            );
            for v in app["versions"].as_array().cloned().unwrap_or_default() {
                println!(
                    "  {} v{:<4} {:>9} bytes  sha256 {}  compiled in {} ms{}",
                    if v["active"] == true { "*" } else { " " },
                    v["version"],
                    v["size"],
                    short(&v["sha256"]),
                    v["compile_ms"],
                    if v["loaded"] == false {
                        "  (not loaded, see errors)"
                    } else {
                        ""
                    }
                );
            }
            for e in app["recent_errors"].as_array().cloned().unwrap_or_default() {
                println!("  error: {}", str_of(&e["message"]));
            }
        }
        AppCommand::Rm { name, force } => {
            let deleted = client.delete(&name, force).await?;
            let live = deleted["live_calls"].as_u64().unwrap_or(0);
            let hung_up = deleted["hung_up"].as_u64().unwrap_or(0);
            match (live, force) {
                (0, _) => println!("{name} deleted"),
                (_, true) => println!("{name} deleted; {hung_up} call(s) in progress hung up"),
                (_, false) => {
                    println!("{name} deleted; {live} call(s) in progress will finish on it")
                }
            }
        }
        AppCommand::Rollback { name } => {
            let r = client.rollback(&name).await?;
            println!(
                "{name} rolled back: version {} is serving new calls (was {})",
                r["version"],
                r["replaced"]
                    .as_u64()
                    .map_or("-".to_string(), |v| v.to_string())
            );
        }
    }
    Ok(())
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

fn short(v: &Value) -> String {
    v.as_str()
        .map_or("-".to_string(), |s| s.chars().take(12).collect())
}
