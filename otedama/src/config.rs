//! `otedama config`: checks the configuration (file, environment and flags) as a start
//! would, without starting anything, and prints it as TOML with every default filled in.

use otedama_controlplane::config::ConfigArgs;

use crate::dataplane_config;

pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let config = args.load()?;
    config.check_before_start()?;
    dataplane_config::check_dataplanes(&config)?;
    print!("{}", toml::to_string(&config)?);
    Ok(())
}
