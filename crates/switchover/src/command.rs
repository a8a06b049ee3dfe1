//! Operator-supplied commands: templates split into an argument vector (no shell), and a
//! runner with a timeout that captures bounded output.
//!
//! Template syntax: words separated by whitespace; `"…"` or `'…'` group a word that contains
//! spaces (the quotes are removed, nothing inside is special); a backslash is an ordinary
//! character so Windows paths such as `C:\Tools\svc.exe` work unquoted. `{name}` in any word is
//! replaced by the service name after splitting, so a name always stays inside its one word.
//! No shell is involved: to use shell features, write the shell yourself, e.g.
//! `sh -c 'exec mysvc start "$1"' sh {name}` or `cmd /c …`.

use std::fmt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// The placeholder replaced by a service name.
pub const NAME_PLACEHOLDER: &str = "{name}";

/// Output kept from each stream of a command; the rest is read and discarded.
const OUTPUT_LIMIT: usize = 64 * 1024;

/// How long to wait for a finished command's output streams to close. A command that leaves a
/// background process holding them (a `start` script that launches a daemon) still finishes.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// A template that cannot be split into a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("command template is empty: give a program and its arguments")]
    Empty,
    #[error("command template {template:?} has an unterminated {quote} quote: close it")]
    UnterminatedQuote { template: String, quote: char },
}

/// A command line split into words once, at configuration time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTemplate {
    source: String,
    words: Vec<String>,
}

impl CommandTemplate {
    /// Splits `template` into words (see the module documentation for the syntax).
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let words = split_words(template)?;
        if words.is_empty() {
            return Err(TemplateError::Empty);
        }
        Ok(Self {
            source: template.to_owned(),
            words,
        })
    }

    /// The template as the operator wrote it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether any word contains `{name}`.
    pub fn mentions_name(&self) -> bool {
        self.words.iter().any(|w| w.contains(NAME_PLACEHOLDER))
    }

    /// The argument vector with `{name}` replaced by `name` inside each word.
    pub fn argv(&self, name: &str) -> Vec<String> {
        self.words
            .iter()
            .map(|w| w.replace(NAME_PLACEHOLDER, name))
            .collect()
    }

    /// The argument vector as written (for hooks that take no service name).
    pub fn words(&self) -> &[String] {
        &self.words
    }
}

impl fmt::Display for CommandTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn split_words(template: &str) -> Result<Vec<String>, TemplateError> {
    let mut words = Vec::new();
    let mut current: Option<String> = None;
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                let word = current.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some(other) => word.push(other),
                        None => {
                            return Err(TemplateError::UnterminatedQuote {
                                template: template.to_owned(),
                                quote: c,
                            })
                        }
                    }
                }
            }
            c if c.is_whitespace() => words.extend(current.take()),
            c => current.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(current);
    Ok(words)
}

/// A command that could not be run to completion.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run `{command}`: {source} (is the program installed and on PATH?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {seconds} s and was killed: check the service manager, or raise timeout_seconds")]
    Timeout { command: String, seconds: u64 },
    #[error("waiting for `{command}` failed: {source}")]
    Wait {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a finished command printed and how it exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// One line for an error message: the exit code and the first line of stderr (or stdout).
    pub fn summary(&self) -> String {
        let code = match self.code {
            Some(code) => format!("exit code {code}"),
            None => "killed by a signal".to_owned(),
        };
        let said = first_line(&self.stderr).or_else(|| first_line(&self.stdout));
        match said {
            Some(line) => format!("{code}: {line}"),
            None => code,
        }
    }
}

fn first_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| !l.is_empty())
}

/// Shows an argument vector the way an operator would type it.
pub fn display_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|w| {
            if w.is_empty() || w.chars().any(char::is_whitespace) {
                format!("\"{w}\"")
            } else {
                w.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `argv` directly (no shell) with stdin closed, waits at most `timeout`, and kills the
/// process if it is still running then.
pub async fn run_argv(argv: &[String], timeout: Duration) -> Result<CommandOutput, CommandError> {
    let command = display_argv(argv);
    let (program, args) = argv.split_first().ok_or_else(|| CommandError::Spawn {
        command: command.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
    })?;
    tracing::debug!(%command, "running");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CommandError::Spawn {
            command: command.clone(),
            source,
        })?;
    let stdout = Collected::start(child.stdout.take());
    let stderr = Collected::start(child.stderr.take());
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(source)) => return Err(CommandError::Wait { command, source }),
        Err(_) => {
            // kill_on_drop would do this too; do it now so the process is gone before we return.
            let _ = child.kill().await;
            return Err(CommandError::Timeout {
                command,
                seconds: timeout.as_secs(),
            });
        }
    };
    Ok(CommandOutput {
        code: status.code(),
        stdout: stdout.finish().await,
        stderr: stderr.finish().await,
    })
}

/// One output stream read in the background into a bounded buffer.
struct Collected {
    buffer: Arc<Mutex<Vec<u8>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Collected {
    fn start<R: tokio::io::AsyncRead + Unpin + Send + 'static>(stream: Option<R>) -> Self {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let task = stream.map(|mut stream| {
            let buffer = Arc::clone(&buffer);
            tokio::spawn(async move {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut kept) = buffer.lock() {
                        let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                        kept.extend_from_slice(&chunk[..n.min(room)]);
                    }
                }
            })
        });
        Self { buffer, task }
    }

    /// Waits briefly for the stream to close, then returns what was read.
    async fn finish(mut self) -> String {
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(OUTPUT_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
        let bytes = self.buffer.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(t: &str) -> Vec<String> {
        CommandTemplate::parse(t).unwrap().words().to_vec()
    }

    #[test]
    fn splits_on_whitespace_and_quotes() {
        assert_eq!(words("mysvc start {name}"), ["mysvc", "start", "{name}"]);
        assert_eq!(words("  a\t b  "), ["a", "b"]);
        assert_eq!(
            words(r#""C:\Program Files\x.exe" start"#),
            [r"C:\Program Files\x.exe", "start"]
        );
        assert_eq!(words(r"C:\Tools\svc.exe q"), [r"C:\Tools\svc.exe", "q"]);
        assert_eq!(
            words(r#"--unit="a b".service ''"#),
            ["--unit=a b.service", ""]
        );
        assert_eq!(
            words(r#"sh -c 'echo "$1"' sh"#),
            ["sh", "-c", r#"echo "$1""#, "sh"]
        );
    }

    #[test]
    fn rejects_empty_and_unterminated() {
        assert_eq!(CommandTemplate::parse("   "), Err(TemplateError::Empty));
        assert!(matches!(
            CommandTemplate::parse("a 'b"),
            Err(TemplateError::UnterminatedQuote { quote: '\'', .. })
        ));
    }

    #[test]
    fn name_stays_one_word() {
        let t = CommandTemplate::parse("svc --unit={name}.service {name}").unwrap();
        assert!(t.mentions_name());
        assert_eq!(t.argv("a b;rm"), ["svc", "--unit=a b;rm.service", "a b;rm"]);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn runs_without_a_shell_and_captures_output() {
        let argv: Vec<String> = [
            "sh",
            "-c",
            "printf '%s|' \"$@\"; echo oops >&2; exit 3",
            "sh",
            "a b",
            "$HOME",
        ]
        .map(String::from)
        .to_vec();
        let out = run_argv(&argv, Duration::from_secs(30)).await.unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "a b|$HOME|");
        assert_eq!(out.summary(), "exit code 3: oops");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn kills_a_command_that_overruns() {
        let argv: Vec<String> = ["sleep", "600"].map(String::from).to_vec();
        let err = run_argv(&argv, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let argv = vec!["/nonexistent/swrepl-no-such-program".to_owned()];
        let err = run_argv(&argv, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }), "{err}");
    }
}
