//! What the control-plane verbs (`deploy`, `services`, `revisions`) share: finding the
//! running emulator, the output format, exit codes for the API's answers, and table printing.

use clap::{Args, ValueEnum};

use super::Exit;
use crate::admin::client::{AdminClient, ClientError};
use crate::admin::gate::TOKEN_ENV;

#[derive(Clone, Debug, Args)]
pub struct Target {
    /// The admin API of the emulator to talk to (default: the one running emulator).
    #[arg(long, env = "EMULATE_ADMIN", value_name = "ADDR")]
    pub admin: Option<String>,
}

impl Target {
    pub async fn client(&self) -> Result<AdminClient, Exit> {
        // The token comes from the environment only: a flag would show it in `ps`.
        let token = std::env::var(TOKEN_ENV).ok();
        AdminClient::find(self.admin.as_deref(), token)
            .await
            .map_err(|e| fail(&e))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A readable table or summary.
    #[default]
    Table,
    Json,
    Yaml,
}

/// Prints a document as JSON or YAML.
pub fn print_document<T: serde::Serialize>(format: Format, value: &T) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        _ => print!("{}", serde_yaml_ng::to_string(value).unwrap_or_default()),
    }
}

/// Prints the error and picks the exit code: the user's input (2), a revision that did not
/// become ready (3), anything else (1).
pub fn fail(error: &ClientError) -> Exit {
    eprintln!("ERROR: {error}");
    match error {
        ClientError::Api { code, .. } if code.as_u16() == 400 => Exit::Usage,
        ClientError::Api { code, .. } if code.as_u16() == 422 => Exit::NotReady,
        ClientError::BadAddress(_) | ClientError::BadToken => Exit::Usage,
        _ => Exit::Failure,
    }
}

/// clap's parser for a SERVICE argument: Cloud Run's naming rules, checked before anything
/// is sent (a bad name exits 2).
pub fn service_arg(text: &str) -> Result<String, String> {
    crate::cloudrun::validate_service_name(text)?;
    Ok(text.to_string())
}

/// clap's parser for a REVISION argument.
pub fn revision_arg(text: &str) -> Result<String, String> {
    crate::cloudrun::validate_revision_lookup(text)?;
    Ok(text.to_string())
}

pub fn print_notes(notes: &[String]) {
    for note in notes {
        eprintln!("note: {note}");
    }
}

/// ✔ ready, ✘ failed, … not known yet: a resource's `Ready` condition at a glance.
pub fn ready_mark(conditions: &[crate::control::knative::Condition]) -> String {
    match conditions
        .iter()
        .find(|c| c.kind == "Ready")
        .map(|c| c.status.as_str())
    {
        Some("True") => "✔",
        Some("False") => "✘",
        _ => "…",
    }
    .to_string()
}

/// Prints rows as aligned columns, the first row being the header.
pub fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        println!("{}", line.trim_end());
    }
}
