//! The agentplane HTTP API server (placeholder; being written).
use std::path::PathBuf;

/// Flags of `agentctl server`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on [default: 127.0.0.1:7300]
    #[arg(long, env = "AGENTPLANE_LISTEN")]
    pub listen: Option<String>,
    /// Data directory [default: ./.agentplane]
    #[arg(long, env = "AGENTPLANE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Load the example resources
    #[arg(long)]
    pub dev: bool,
}

/// Error starting or running the server.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServerError(pub String);

/// Run the server until SIGTERM/SIGINT.
pub async fn run(_args: ServerArgs) -> Result<(), ServerError> {
    Err(ServerError("not yet".into()))
}
