//! Issue #9 items 11–15: a newcomer's first hour. The README's commands run
//! as written, its Configuration table is one table that matches the binary,
//! a busy port fails at once naming itself, logs are quiet and colourless
//! when all is well, database errors say what PostgreSQL said, and
//! `rowcast token` needs no role.

use crate::common::*;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_rowcast");
const SUBCOMMANDS: [&str; 4] = ["serve", "migrate", "token", "demo"];

fn readme() -> String {
    std::fs::read_to_string("README.md").expect("README.md")
}

/// The text of every fenced block and every inline code span.
fn code_segments(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced: Option<String> = None;
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            match fenced.take() {
                Some(block) => out.push(block),
                None => fenced = Some(String::new()),
            }
            continue;
        }
        if let Some(block) = fenced.as_mut() {
            block.push_str(line);
            block.push('\n');
            continue;
        }
        let mut rest = line;
        while let Some(a) = rest.find('`') {
            let Some(b) = rest[a + 1..].find('`') else {
                break;
            };
            out.push(rest[a + 1..a + 1 + b].to_string());
            rest = &rest[a + 2 + b..];
        }
    }
    out
}

/// `--flag` names an invocation of `rowcast <sub>` uses, from the words after it.
fn flags_of(words: &[&str]) -> Vec<String> {
    words
        .iter()
        .take_while(|w| !["#", "|", "&&", ";"].contains(w) && !w.starts_with(')'))
        .filter(|w| w.starts_with("--"))
        .map(|w| {
            w.split('=')
                .next()
                .unwrap_or(w)
                .trim_end_matches([')', '`', ','])
                .to_string()
        })
        .collect()
}

/// The flags of a benchmark run starting at `words[i]`: the bench is its own
/// crate (bench/), run as `./target/release/rowcast-bench ...` or
/// `cargo run --release -p rowcast-bench -- ...`.
fn bench_invocation(words: &[&str], i: usize) -> Option<Vec<String>> {
    match words[i] {
        "./target/release/rowcast-bench" => Some(flags_of(&words[i + 1..])),
        "rowcast-bench" if i > 0 && words[i - 1] == "-p" => {
            let dashes = words[i + 1..].iter().position(|w| *w == "--")?;
            Some(flags_of(&words[i + 2 + dashes..]))
        }
        _ => None,
    }
}

/// The options `rowcast <sub> --help` lists (lines that start with `--`).
fn help_flags(sub: &str) -> BTreeSet<String> {
    let out = Command::new(BIN).args([sub, "--help"]).output().unwrap();
    assert!(out.status.success(), "{sub} --help");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("-h, ").unwrap_or(l);
            l.starts_with("--")
                .then(|| l.split([' ', ',']).next().unwrap_or(l).to_string())
        })
        .filter(|f| f != "--help" && f != "--version")
        .collect()
}

/// Item 11: every command the README gives with options is spelled so that
/// it runs from a fresh clone after the first command (`./target/release/rowcast
/// ...`), and uses only options the binary has (the benchmark's: those of
/// `rowcast-bench`'s command line).
#[test]
fn readme_commands_run_as_written() {
    let md = readme();
    let quick = md
        .split("## Two commands")
        .nth(1)
        .and_then(|s| s.split("```sh").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("the Two commands block");
    let first: Vec<&str> = quick
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(first, ["cargo run --release -- demo", "cargo test"]);
    let mut checked = 0;
    for seg in code_segments(&md) {
        for line in seg.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            for (i, w) in words.iter().enumerate() {
                if let Some(flags) = bench_invocation(&words, i) {
                    let known = rowcast_bench::cli::flags();
                    for f in flags {
                        assert!(
                            known.contains(&f),
                            "README: `{line}` uses {f}, unknown to rowcast-bench"
                        );
                    }
                    checked += 1;
                    continue;
                }
                let bare = w.trim_start_matches("T=$(");
                let Some(prefix) = bare.strip_suffix("rowcast") else {
                    continue;
                };
                let Some(sub) = words.get(i + 1).filter(|s| SUBCOMMANDS.contains(s)) else {
                    continue;
                };
                let flags = flags_of(&words[i + 2..]);
                if flags.is_empty() && prefix.is_empty() && words.len() == i + 2 {
                    continue; // the subcommand's name in prose: `rowcast serve`
                }
                assert_eq!(
                    prefix, "./target/release/",
                    "README runs `{line}`: after a fresh clone and `cargo run --release`, \
                     only ./target/release/rowcast exists"
                );
                let known = help_flags(sub);
                for f in flags {
                    assert!(
                        known.contains(&f),
                        "README: `{line}` uses {f}, unknown to `rowcast {sub}`"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} commands found");
}

/// Item 12: the Configuration table is one table (no blank line splitting
/// it), lists every `serve` option with its environment variable, and no other.
#[test]
fn configuration_table_is_whole_and_complete() {
    let md = readme();
    let section = md
        .split("\n## Configuration")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("Configuration section");
    let lines: Vec<&str> = section.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.starts_with("| flag |"))
        .expect("table header");
    let rows: Vec<&str> = lines[head + 2..]
        .iter()
        .take_while(|l| l.starts_with('|'))
        .copied()
        .collect();
    let stray = lines[head + 2 + rows.len()..]
        .iter()
        .filter(|l| l.starts_with("| `--"))
        .count();
    assert_eq!(stray, 0, "the table is split: {stray} rows after a break");
    let help = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap()
        .stdout;
    let help = String::from_utf8(help).unwrap();
    let mut in_table = BTreeSet::new();
    for row in &rows {
        let cell = row.split('|').nth(1).unwrap().trim();
        let flag = cell
            .trim_start_matches('`')
            .split('`')
            .next()
            .unwrap()
            .to_string();
        if let Some(env) = cell.split("[`").nth(1).and_then(|e| e.split('`').next()) {
            assert!(
                help.contains(&format!("[env: {env}=")) || help.contains(&format!("[env: {env}]")),
                "{flag}: environment variable {env} unknown to serve --help"
            );
        }
        in_table.insert(flag);
    }
    assert_eq!(in_table, help_flags("serve"));
}

/// Item 15: `rowcast token` needs no role; with none the token has no `role`.
#[test]
fn token_role_is_optional() {
    use base64::Engine;
    let out = Command::new(BIN)
        .args(["token", "--sub", "7", "--jwt-secret", "s"])
        .env_remove("ROWCAST_JWT_SECRET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let payload = token.trim().split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "7");
    assert!(claims.get("role").is_none(), "{claims}");
    let out = Command::new(BIN)
        .args([
            "token",
            "--sub",
            "7",
            "--role",
            "authenticated",
            "--jwt-secret",
            "s",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "any role is accepted");
}

/// Item 13: a busy port stops the demo at once, before PostgreSQL starts,
/// with the address and `--listen` in the message.
#[test]
fn demo_on_a_busy_port_fails_at_once_naming_it() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", &addr])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + ARRIVAL;
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&addr) && stderr.contains("--listen"),
        "{stderr}"
    );
    assert!(!stdout.contains("PostgreSQL"), "started anyway: {stdout}");
    assert!(!stderr.contains("source"), "{stderr}");
}

/// Item 14: `migrate`, run twice with the default log settings and stderr
/// not a terminal, prints what it did on stdout and nothing on stderr (no
/// NOTICEs, no colour codes); a database error carries PostgreSQL's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_quiet_and_errors_say_what_postgres_said() {
    let url = empty_db().await;
    let run = |url: &str| {
        let out = Command::new(BIN)
            .args(["migrate", "--market", "--database-url", url])
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = run(&url);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("applied 001_core"), "{stdout}");
    assert_eq!(stderr, "", "first migrate logged");
    let (ok, stdout, stderr) = run(&url);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "up to date");
    assert_eq!(stderr, "", "second migrate logged (NOTICEs?)");
    // a database that does not exist: PostgreSQL's own words, once
    let missing = cluster().url("no_such_database");
    let (ok, _, stderr) = run(&missing);
    assert!(!ok);
    assert!(
        stderr.contains("database \"no_such_database\" does not exist"),
        "{stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "colour codes in {stderr:?}");
    // and in the library's error text (what every log line shows)
    let db = connect(&url).await;
    let e = db.execute("SELECT 1 / 0", &[]).await.unwrap_err();
    let text = rowcast::Error::from(e).to_string();
    assert!(text.contains("division by zero"), "{text}");
    assert!(text.contains("22012"), "{text}");
}
