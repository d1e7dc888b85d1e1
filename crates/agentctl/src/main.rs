//! `agentctl`: the agentplane CLI (apply, get, describe, delete, run, ledger, version, completion) and the
//! server (`agentctl server`). This binary owns argument parsing, client configuration, the
//! HTTP client and all printing; it must not implement server logic (that is
//! `agentplane-server`'s).

mod approval;
mod cli;
mod client;
mod commands;
mod config;
mod error;
mod ledger;
mod manifest;
mod output;
mod run;
mod takeover;
mod token;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{
    ApprovalCommand, Cli, ClientArgs, Command, LedgerCommand, OutputFormat, RunCommand, TakeoverCommand, TokenCommand,
};
use crate::commands::Ctx;
use crate::config::{ProcessEnv, Settings};
use crate::error::{CliError, Exit};
use crate::output::Printer;

/// mimalloc: measurably less allocator time on the request path than glibc's malloc
/// (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Usage errors exit 2 and --help/--version exit 0, both by clap.
    let cli = Cli::parse();
    let top = cli.global;
    let (result, printer) = match cli.command {
        Command::Server(args) => {
            if !top.is_empty() {
                Cli::command()
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "client flags (--server, -n, -o, --config) cannot be given before 'server'; \
                         server flags go after it, e.g. 'agentctl server --config FILE'",
                    )
                    .exit();
            }
            (run_server(args), Printer::new(OutputFormat::Table))
        }
        Command::Completion(args) => {
            let printer = Printer::new(OutputFormat::Table);
            (completion(args.shell, &printer), printer)
        }
        Command::Apply(a) => client(top.merged(&a.client), |ctx| Box::pin(commands::apply(ctx, a))),
        Command::Get(a) => client(top.merged(&a.client), |ctx| Box::pin(commands::get(ctx, a))),
        Command::Describe(a) => client(top.merged(&a.client), |ctx| Box::pin(commands::describe(ctx, a))),
        Command::Delete(a) => client(top.merged(&a.client), |ctx| Box::pin(commands::delete(ctx, a))),
        Command::Run(r) => match r.command {
            RunCommand::Submit(a) => client(top.merged(&a.client), |ctx| Box::pin(run::submit(ctx, a))),
            RunCommand::Wait(a) => client(top.merged(&a.client), |ctx| Box::pin(run::wait(ctx, a))),
            RunCommand::Get(a) => client(top.merged(&a.client), |ctx| Box::pin(run::get(ctx, a))),
            RunCommand::List(a) => client(top.merged(&a.client), |ctx| Box::pin(run::list(ctx, a))),
            RunCommand::Watch(a) => client(top.merged(&a.client), |ctx| Box::pin(run::watch(ctx, a))),
            RunCommand::Logs(a) => client(top.merged(&a.client), |ctx| Box::pin(run::logs(ctx, a))),
            RunCommand::Cancel(a) => client(top.merged(&a.client), |ctx| Box::pin(run::cancel(ctx, a))),
        },
        Command::Ledger(l) => {
            let flags = match &l.command {
                LedgerCommand::Verify(a) => top.merged(&a.client),
                LedgerCommand::Query(a) => top.merged(&a.client),
                LedgerCommand::Export(a) => top.merged(&a.client),
                LedgerCommand::Summary(a) => top.merged(&a.client),
                LedgerCommand::PublicKey(a) => top.merged(&a.client),
            };
            if flags.output == Some(OutputFormat::Name) {
                Cli::command()
                    .error(
                        clap::error::ErrorKind::InvalidValue,
                        "'ledger' commands print -o table, json or yaml, not name",
                    )
                    .exit();
            }
            match l.command {
                LedgerCommand::Verify(a) => client(flags, |ctx| Box::pin(ledger::verify(ctx, a))),
                LedgerCommand::Query(a) => client(flags, |ctx| Box::pin(ledger::query(ctx, a))),
                LedgerCommand::Export(a) => client(flags, |ctx| Box::pin(ledger::export(ctx, a))),
                LedgerCommand::Summary(a) => client(flags, |ctx| Box::pin(ledger::summary(ctx, a))),
                LedgerCommand::PublicKey(_) => client(flags, |ctx| Box::pin(ledger::public_key(ctx))),
            }
        }
        Command::Token(t) => match t.command {
            TokenCommand::Create(a) => client(top.merged(&a.client), |ctx| Box::pin(token::create(ctx, a))),
            TokenCommand::List(a) => client(top.merged(&a.client), |ctx| Box::pin(token::list(ctx))),
            TokenCommand::Revoke(a) => client(top.merged(&a.client), |ctx| Box::pin(token::revoke(ctx, a))),
        },
        Command::Elevate(a) => client(top.merged(&a.client), |ctx| Box::pin(approval::elevate(ctx, a))),
        Command::Approval(t) => match t.command {
            ApprovalCommand::List(a) => client(top.merged(&a.client), |ctx| Box::pin(approval::list(ctx, a))),
            ApprovalCommand::Approve(a) => {
                client(top.merged(&a.client), |ctx| Box::pin(approval::decide(ctx, a, "approve")))
            }
            ApprovalCommand::Deny(a) => client(top.merged(&a.client), |ctx| Box::pin(approval::decide(ctx, a, "deny"))),
        },
        Command::Takeover(t) => match t.command {
            TakeoverCommand::Get(a) => client(top.merged(&a.client), |ctx| Box::pin(takeover::get(ctx, a))),
            TakeoverCommand::Set(a) => client(top.merged(&a.client), |ctx| Box::pin(takeover::set(ctx, a))),
        },
        Command::Version(a) => client(top.merged(&a.client), |ctx| Box::pin(commands::version(ctx))),
        Command::Diagnose(a) => client(top.merged(&a.client), |ctx| Box::pin(commands::diagnose(ctx, a))),
    };
    match result {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(err) => {
            printer.error("", &err);
            ExitCode::from(err.exit().code())
        }
    }
}

type CommandFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Exit, CliError>> + 'a>>;

/// Resolves the settings and runs one client command on a single-threaded runtime.
fn client(
    flags: ClientArgs,
    command: impl for<'a> FnOnce(&'a Ctx) -> CommandFuture<'a>,
) -> (Result<Exit, CliError>, Printer) {
    let format = flags.output.unwrap_or_default();
    let result = (|| {
        let settings = Settings::resolve(&flags, &ProcessEnv)?;
        let ctx = Ctx { settings, printer: Printer::new(format) };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::Other(format!("cannot start the async runtime: {e}")))?;
        rt.block_on(command(&ctx))
    })();
    (result, Printer::new(format))
}

fn run_server(args: agentplane_server::ServerArgs) -> Result<Exit, CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(agentplane_server::run_with(args, dev_client_config))
        .map_err(|e| CliError::Other(format!("server: {e}")))?;
    Ok(Exit::Ok)
}

/// `server --dev`: put the bootstrap admin token into the CLI config file, so that the client
/// commands of the tour work without a flag. Logs the file's path, never the token.
fn dev_client_config(config: &agentplane_server::Config) {
    if !config.dev {
        return;
    }
    let token_file = config.data_dir.join(agentplane_server::auth::tokens::ADMIN_TOKEN_FILE);
    let Ok(token) = std::fs::read_to_string(&token_file) else {
        tracing::warn!(file = %token_file.display(), "--dev: no admin token file; the CLI config was not updated");
        return;
    };
    let Some(path) = config::config_path(&ClientArgs::default(), &ProcessEnv) else {
        tracing::warn!("--dev: no CLI config path (set AGENTCTL_CONFIG or HOME); the CLI config was not updated");
        return;
    };
    match config::write_token(&path, token.trim()) {
        Ok(()) => tracing::info!(file = %path.display(), "--dev: wrote the admin token into the CLI config"),
        Err(e) => tracing::warn!(error = %e, "--dev: cannot update the CLI config"),
    }
}

fn completion(shell: clap_complete::Shell, printer: &Printer) -> Result<Exit, CliError> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "agentctl", &mut buf);
    printer.out(&String::from_utf8_lossy(&buf))?;
    Ok(Exit::Ok)
}
