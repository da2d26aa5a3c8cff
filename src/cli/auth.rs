//! `emulate auth print-identity-token`: an ID token signed with the emulator's key, as
//! `gcloud auth print-identity-token` prints Google's, for calling private services.

use clap::{Args, Subcommand};

use super::run::GoogleArgs;
use super::Exit;
use crate::metadata::identity::{self, IdentityKey};

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Print an ID token for the service account (default: the project's Compute Engine
    /// default account), signed with the emulator's key: `curl -H "Authorization: Bearer
    /// $(emulate auth print-identity-token)" http://SERVICE.localhost:8080/`.
    PrintIdentityToken(PrintArgs),
}

#[derive(Debug, Args)]
pub struct PrintArgs {
    /// The token's audience, e.g. a service URL (default: gcloud's, which every private
    /// service accepts).
    #[arg(long, value_name = "URL")]
    pub audiences: Option<String>,
    #[command(flatten)]
    pub google: GoogleArgs,
}

pub async fn run(command: AuthCommand) -> Exit {
    let AuthCommand::PrintIdentityToken(args) = command;
    let audience = match args.audiences {
        Some(a) if a.trim().is_empty() => {
            eprintln!("error: --audiences: empty");
            return Exit::Usage;
        }
        Some(a) => a,
        None => identity::GCLOUD_AUDIENCE.to_string(),
    };
    let settings = match args.google.check() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Usage;
        }
    };
    let Some(dir) = identity::state_dir(|name| std::env::var(name).ok()) else {
        eprintln!("error: no state directory for the signing key: set EMULATE_STATE_DIR");
        return Exit::Failure;
    };
    let key = match tokio::task::spawn_blocking(move || IdentityKey::load_or_create(&dir)).await {
        Ok(Ok(key)) => key,
        Ok(Err(e)) => {
            eprintln!("error: the signing key: {e}");
            return Exit::Failure;
        }
        Err(e) => {
            eprintln!("error: the signing key: {e}");
            return Exit::Failure;
        }
    };
    let email = settings.email();
    let token = key.id_token(
        &email,
        &identity::subject(&email),
        &audience,
        crate::metadata::unix_now(),
        None,
    );
    println!("{token}");
    Exit::Success
}
