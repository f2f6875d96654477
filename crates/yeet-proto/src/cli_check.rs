//! A test helper for the three binaries' command lines (feature `cli-check`): clap finds
//! some definition errors only when a subcommand is used, and then panics in front of the
//! user. A positional `key` beside the global `--key` made `yeet osquery options set` exit
//! with "Mismatch between definition and access of `key`". This walks the whole tree once.

use clap::Command;

/// Panics, naming the command, on anything in `root`'s tree that would fail a user:
/// - clap's own definition checks (`debug_assert`);
/// - an argument whose id is also the id of a global argument of an ancestor: both land in
///   one slot of the matches, and reading either can panic;
/// - a subcommand whose `--help` does not print help.
pub fn check_command_tree(root: Command) {
    root.clone().debug_assert();
    let name = root.get_name().to_owned();
    walk(&root, &root, &mut vec![name], &[]);
}

fn walk(root: &Command, cmd: &Command, path: &mut Vec<String>, globals: &[String]) {
    let mut globals = globals.to_vec();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().to_string();
        assert!(
            !globals.contains(&id),
            "`{}`: the argument `{id}` has the id of a global argument; rename it (clap keeps one value per id)",
            path.join(" ")
        );
        if arg.is_global_set() {
            globals.push(id);
        }
    }
    let mut argv = path.clone();
    argv.push("--help".into());
    match root.clone().try_get_matches_from(&argv) {
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {}
        Err(e) => panic!("`{}` does not print help: {e}", argv.join(" ")),
        Ok(_) => panic!("`{}` ran instead of printing help", argv.join(" ")),
    }
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        path.push(sub.get_name().to_owned());
        walk(root, sub, path, &globals);
        path.pop();
    }
}
