//! Man pages, made from the CLI's own definitions: pool-agent(1) and one page
//! per subcommand (nested ones too), pool-agentd(1) with its files, signals
//! and exit status, and pool-agent.toml(5) made from the shipped example
//! config, so the page and the example cannot drift apart.

use super::args::{Cli, DaemonArgs};
use clap::CommandFactory;
use std::io;
use std::path::Path;

/// The example config the package ships; its comments are the page's text.
const EXAMPLE_CONFIG: &str = include_str!("../../../packaging/config.toml");

pub fn write_pages(man_dir: &Path) -> io::Result<()> {
    let mut cli = Cli::command();
    // Built, so global options (--json, --socket, --timeout) show on every page.
    cli.build();
    write_tree(man_dir, &cli, "pool-agent", CLI_SECTIONS)?;

    let mut daemon = DaemonArgs::command();
    daemon.build();
    let mut page = Vec::new();
    clap_mangen::Man::new(daemon).render(&mut page)?;
    page.extend_from_slice(DAEMON_SECTIONS.as_bytes());
    std::fs::write(man_dir.join("pool-agentd.1"), page)?;

    std::fs::write(man_dir.join("pool-agent.toml.5"), config_page(EXAMPLE_CONFIG))
}

/// One page for `command` named `name`, then one for each visible subcommand.
fn write_tree(dir: &Path, command: &clap::Command, name: &str, extra: &str) -> io::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone().name(name.to_string())).render(&mut page)?;
    page.extend_from_slice(extra.as_bytes());
    std::fs::write(dir.join(format!("{name}.1")), page)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_tree(dir, sub, &format!("{name}-{}", sub.get_name()), SUBCOMMAND_SECTIONS)?;
    }
    Ok(())
}

const CLI_SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Done. For \fBstatus\fR: every component is ready, has nothing to do, or is not built.
.TP
\fB1\fR
The daemon refused or failed the request (its message and \fB[code]\fR on standard error); for \fBstatus\fR: a component is starting, degraded, failed or stopped.
.TP
\fB2\fR
Bad usage.
.TP
\fB3\fR
The daemon could not be reached on its socket.
.SH ENVIRONMENT
.TP
\fBPOOL_AGENT_SOCKET\fR
The socket to talk to, as \fB\-\-socket\fR.
.SH "SEE ALSO"
\fBpool\-agentd\fR(1), \fBpool\-agent.toml\fR(5)
"#;

const SUBCOMMAND_SECTIONS: &str = r#".SH "SEE ALSO"
\fBpool\-agent\fR(1)
"#;

const DAEMON_SECTIONS: &str = r#".SH CONFIGURATION
\fI/etc/pool\-agent/config.toml\fR, then \fI/etc/pool\-agent/config.d/*.toml\fR in name order; a key set in a later file wins. The format and every key: \fBpool\-agent.toml\fR(5).
.SH FILES
.TP
\fI/etc/pool\-agent/config.toml\fR, \fI/etc/pool\-agent/config.d/\fR
The config and its drop\-ins.
.TP
\fI/etc/pool\-agent/secrets/storage\-key\fR
The storage account key (root\-owned, mode 0600, in a directory only root may write).
.TP
\fI/run/pool\-agent/agent.sock\fR
The local API, read by \fBpool\-agent\fR(1).
.TP
\fI/var/lib/pool\-agent/\fR
State, and the last valid config, used when the config on disk is invalid at start.
.TP
\fI/var/log/pool\-agent/scripts/\fR
Logs of the setup scripts.
.SH SIGNALS
.TP
\fBSIGHUP\fR
Read the config again; an invalid one is refused (shown in \fBpool\-agent status\fR) and the one in force stays.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop within 5 seconds, even while a share's server hangs; the share stays mounted unless \fBunmount_on_stop\fR is set.
.SH "EXIT STATUS"
.TP
\fB0\fR
Stopped cleanly, or \fB\-\-check\-config\fR found the config valid.
.TP
\fB1\fR
Could not run (the socket is held by another daemon, no runtime).
.TP
\fB2\fR
\fB\-\-check\-config\fR found the config invalid: each error names the file, the line and the key. Without \fB\-\-check\-config\fR an invalid config does not stop the daemon: it serves the API, reports the error and runs on the last valid config or the built\-in defaults.
.SH ENVIRONMENT
.TP
\fBPOOL_AGENT_LOG\fR
Log filter (\fBinfo\fR by default; \fBdebug\fR for more).
.SH "SEE ALSO"
\fBpool\-agent\fR(1), \fBpool\-agent.toml\fR(5), \fBsystemctl\fR(1), \fBjournalctl\fR(1)
"#;

/// Text as roff prints it: backslashes and hyphens escaped, no line starting a request.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// pool-agent.toml(5) from the example config: its header comment is the
/// description, each `[section]` a section, each key with the comments above it.
pub fn config_page(example: &str) -> String {
    let mut out = String::from(
        ".TH POOL\\-AGENT.TOML 5 \"\" \"pool-agent\" \"File Formats\"\n.SH NAME\npool\\-agent.toml \\- configuration of pool\\-agentd\n.SH SYNOPSIS\n\\fI/etc/pool\\-agent/config.toml\\fR, \\fI/etc/pool\\-agent/config.d/*.toml\\fR\n.SH DESCRIPTION\n",
    );
    let mut comments: Vec<String> = Vec::new();
    let mut in_header = true;
    let flush_paragraph = |out: &mut String, comments: &mut Vec<String>| {
        for line in comments.drain(..) {
            if line.is_empty() {
                out.push_str(".PP\n");
            } else if line.starts_with("    ") || line.starts_with("  ") {
                out.push_str(&format!(".nf\n{}\n.fi\n", roff_text(line.trim_start())));
            } else {
                out.push_str(&roff_text(&line));
                out.push('\n');
            }
        }
    };
    for line in example.lines() {
        let trimmed = line.trim();
        if let Some(comment) = trimmed.strip_prefix('#') {
            comments.push(comment.strip_prefix(' ').unwrap_or(comment).to_string());
            continue;
        }
        if trimmed.is_empty() {
            if in_header {
                flush_paragraph(&mut out, &mut comments);
                out.push_str(".PP\n");
            }
            continue;
        }
        in_header = false;
        if trimmed.starts_with('[') {
            out.push_str(&format!(".SH \"{}\"\n", roff_text(trimmed)));
            flush_paragraph(&mut out, &mut comments);
            continue;
        }
        let (key, value) = trimmed.split_once('=').map(|(k, v)| (k.trim(), v.trim())).unwrap_or((trimmed, ""));
        out.push_str(&format!(".TP\n\\fB{}\\fR = {}\n", roff_text(key), roff_text(value)));
        flush_paragraph(&mut out, &mut comments);
    }
    flush_paragraph(&mut out, &mut comments);
    out.push_str(".SH \"SEE ALSO\"\n\\fBpool\\-agentd\\fR(1), \\fBpool\\-agent\\fR(1)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_page_has_every_section_and_key_of_the_example() {
        let page = config_page(EXAMPLE_CONFIG);
        for line in EXAMPLE_CONFIG.lines().map(str::trim) {
            if line.starts_with('[') {
                assert!(page.contains(&format!(".SH \"{}\"", roff_text(line))), "{line} missing");
            } else if let Some((key, _)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
                assert!(page.contains(&format!("\\fB{}\\fR", roff_text(key.trim()))), "{key} missing");
            }
        }
        assert!(page.contains("key_file"));
    }
}
