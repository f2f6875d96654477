//! `yeet window ...`: maintenance windows, the hours in which hosts carrying their tags may
//! start an activation (the server holds their switches until then).

use anyhow::Result;
use clap::Subcommand;
use yeet_proto::windows::MaintenanceWindow;

use super::{Connection, Json};
use crate::output;

#[derive(Subcommand)]
pub enum WindowCommand {
    /// Set a window (replacing one of that name).
    #[command(after_help = WINDOW_EXAMPLE)]
    Set(WindowSetArgs),
    /// List the windows.
    List(Json),
    /// Remove a window; switches it held go ahead.
    Rm { name: String },
}

const WINDOW_EXAMPLE: &str = "\
Example:
  yeet window set nights --tag prod --days mon-fri --from 02:00 --to 04:00 --tz Europe/Zurich

Days: mon-fri, sat,sun, mon,wed-fri, fri-mon (ranges wrap), daily. A window whose --to is
at or before its --from closes the next day (22:00 to 02:00). A host carrying a tag of
several windows may start in any of them.";

#[derive(clap::Args)]
pub struct WindowSetArgs {
    pub name: String,
    /// The hosts it covers: those carrying any of these tags.
    #[arg(long = "tag", required = true, value_name = "TAG")]
    pub tags: Vec<String>,
    /// The days it opens on.
    #[arg(long, default_value = "daily")]
    pub days: String,
    /// Opens at (HH:MM, wall-clock time in --tz).
    #[arg(long, value_name = "HH:MM")]
    pub from: String,
    /// Closes at (HH:MM).
    #[arg(long, value_name = "HH:MM")]
    pub to: String,
    /// The time zone of --from and --to (tz database name).
    #[arg(long, default_value = "UTC", value_name = "ZONE")]
    pub tz: String,
    #[command(flatten)]
    pub json: Json,
}

pub fn run(command: &WindowCommand, connection: &Connection) -> Result<()> {
    let client = connection.connect()?;
    match command {
        WindowCommand::Set(args) => {
            let window = MaintenanceWindow {
                tags: args.tags.clone(),
                days: args.days.clone(),
                from: args.from.clone(),
                to: args.to.clone(),
                tz: args.tz.clone(),
            };
            // Checked here too, so that a typo is explained before anything is sent.
            window.schedule().map_err(anyhow::Error::msg)?;
            let set = client.set_window(&args.name, &window)?;
            if args.json.json {
                return output::json(&set);
            }
            println!("window {}: {}", set.name, describe(&set.window));
            Ok(())
        }
        WindowCommand::List(json) => {
            let windows = client.windows()?;
            if json.json {
                return output::json(&windows);
            }
            if output::said_empty(
                &windows,
                "no maintenance windows: hosts switch whenever a release reaches them",
            ) {
                return Ok(());
            }
            let mut t = output::table(["NAME", "TAGS", "WHEN", "SET BY"]);
            for w in &windows {
                t.add_row([
                    w.name.as_str(),
                    &output::tag_list(&w.window.tags),
                    &describe(&w.window),
                    &w.updated_by,
                ]);
            }
            output::print_clean(t);
            Ok(())
        }
        WindowCommand::Rm { name } => {
            client.remove_window(name)?;
            println!("window {name} removed");
            Ok(())
        }
    }
}

fn describe(w: &MaintenanceWindow) -> String {
    format!(
        "{} {}-{} {} (hosts tagged {})",
        w.days,
        w.from,
        w.to,
        w.tz,
        w.tags.join(", ")
    )
}
