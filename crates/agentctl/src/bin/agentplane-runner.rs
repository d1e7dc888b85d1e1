//! `agentplane-runner`: started by the local runtime for every attempt (see `agentplane_sandbox`).

fn main() {
    std::process::exit(agentplane_sandbox::runner::main());
}
