//! The binary's subcommands: migrate (idempotent, both backends), callers, check-config.

use crate::common;

use std::process::Command;

use common::db::fresh_postgres;

fn precall(dir: &std::path::Path, db: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_precall"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PRECALL_DATA__DIR", dir.join("data"))
        .env("DATABASE_URL", db)
        .output()
        .expect("run precall")
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test]
async fn migrate_is_idempotent_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}/m.db?mode=rwc", dir.path().display());
    for _ in 0..2 {
        let o = precall(dir.path(), &sqlite, &["migrate"]);
        assert!(o.status.success(), "{}", text(&o));
    }
    if let Some(db) = fresh_postgres("cli").await {
        for _ in 0..2 {
            let o = precall(dir.path(), &db.url, &["migrate"]);
            assert!(o.status.success(), "{}", text(&o));
        }
        let store = precall::store::Store::connect(&db.url, 1).await.unwrap();
        assert_eq!(store.count_calls().await.unwrap(), 0, "tables exist");
        store.close().await;
        db.drop_db().await;
    }
    let o = precall(dir.path(), "postgres://nobody@127.0.0.1:1/none", &["migrate"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("connecting to postgres://nobody@127.0.0.1:1/none"),
        "{}",
        text(&o)
    );
}

#[test]
fn callers_add_list_remove_and_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/c.db?mode=rwc", dir.path().display());
    let wav = dir.path().join("alice.wav");
    std::fs::write(&wav, b"RIFF\x24\0\0\0WAVEfmt sample").unwrap();
    let wav_s = wav.to_str().unwrap();

    let o = precall(
        dir.path(),
        &db,
        &[
            "callers",
            "add",
            "+1 (555) 123-4567",
            wav_s,
            "--name",
            "Alice",
            "--labels",
            r#"{"accent":"british"}"#,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).starts_with("+15551234567: 1 sample(s)"), "{}", text(&o));
    let stored: Vec<_> = std::fs::read_dir(dir.path().join("data/samples/+15551234567")).unwrap().collect();
    assert_eq!(stored.len(), 1, "sample copied into the data directory");

    let o = precall(dir.path(), &db, &["callers", "list"]);
    assert!(
        text(&o).contains("+15551234567\tAlice\tenabled\t{\"accent\":\"british\"}\tsamples/+15551234567/"),
        "{}",
        text(&o)
    );

    // A missing file: clear error, nothing written (not even the good file).
    let o = precall(dir.path(), &db, &["callers", "add", "+442071838750", wav_s, "/nonexistent/bob.wav"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("/nonexistent/bob.wav: cannot read"), "{}", text(&o));
    assert!(!dir.path().join("data/samples/+442071838750").exists());
    let o = precall(dir.path(), &db, &["callers", "list"]);
    assert!(!text(&o).contains("+442071838750"));
    // Not audio, bad labels, bad caller id.
    let txt = dir.path().join("notes.txt");
    std::fs::write(&txt, "hello").unwrap();
    let o = precall(dir.path(), &db, &["callers", "add", "+442071838750", txt.to_str().unwrap()]);
    assert!(text(&o).contains("not a WAV or MP3"), "{}", text(&o));
    let o = precall(dir.path(), &db, &["callers", "add", "+442071838750", wav_s, "--labels", "[1]"]);
    assert!(text(&o).contains("--labels must be a JSON object"), "{}", text(&o));
    let o = precall(dir.path(), &db, &["callers", "add", "anonymous", wav_s]);
    assert!(text(&o).contains("is not a caller id"), "{}", text(&o));

    let o = precall(dir.path(), &db, &["callers", "remove", "+15551234567"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = precall(dir.path(), &db, &["callers", "remove", "+15551234567"]);
    assert!(!o.status.success() && text(&o).contains("no mapping for caller"));
}

#[test]
fn check_config_masks_secrets_and_rejects_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let o = precall(dir.path(), "postgres://precall:hunter2@db.example/precall", &["check-config"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("postgres://precall:********@db.example/precall") && !text(&o).contains("hunter2"),
        "{}",
        text(&o)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_precall"))
        .args(["check-config"])
        .env_clear()
        .env("PRECALL_LIMITS__MAX_CALLS", "0")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("limits.max_calls"), "{}", text(&o));
}
