//! `weir bench produce|consume` (being written).

use weir_client::ClientInstance;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {}

pub async fn run(cmd: BenchCmd, client: ClientInstance) -> anyhow::Result<()> {
    let _ = client;
    match cmd {}
}
