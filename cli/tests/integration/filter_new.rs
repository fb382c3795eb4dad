//! `weir filter new`: projects written into temporary folders outside the repository,
//! built with their own one command (cargo; make with clang; build.sh with
//! componentize-js or -py), their native tests run, and
//! their components uploaded through the binary to an in-process broker, whose pulls must
//! keep exactly what the filter should. Also `weir filter test`'s log lines on stderr.
//!
//! The Rust builds share one target folder beside the test binaries
//! (`<target>/filter-new`), so only the first run compiles wit-bindgen. The C project
//! needs clang for wasm32-wasi (`scripts/install-c-toolchain`); without it the test fails
//! saying so, as the C filter's test of `tests/tests/integration/filters.rs` does. The JavaScript and
//! Python projects build with the componentize-js and componentize-py that `scripts/test`
//! installs (or `WEIR_COMPONENTIZE_JS`, `WEIR_COMPONENTIZE_PY`), never downloading;
//! without them the tests fail saying so. One build each: engines take tens of seconds.

use crate::common::{failed, ok, wait_route, weir};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use weir_filter_artifacts::HOSTILE;
use weir_tests::{Env, Msg, assert_keys, key_set};

const NO_NAMESRV: &str = "127.0.0.1:1";

/// The target folder the generated Rust projects build into.
fn shared_target() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_weir"));
    bin.parent()
        .and_then(Path::parent)
        .expect("the weir binary lives in <target>/<profile>/")
        .join("filter-new")
}

/// Runs `cmd` off the async threads; panics with its output unless it succeeds. Its
/// stdout then stderr (test runners report on either).
async fn run_ok(mut cmd: Command, what: &str) -> String {
    let what = what.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        stdout + &stderr
    })
    .await
    .unwrap()
}

/// A command run in `dir` with none of this test's cargo settings (a project of its own).
fn command(program: impl AsRef<std::ffi::OsStr>, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || ["RUSTFLAGS", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER"].contains(&key)
        {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Uploads `wasm` (with `options`, e.g. `--memory`) through the binary for group `G` on
/// `topic`, sends `msgs` to its one queue and drains the queue for `G`: the keys received.
async fn upload_send_drain(
    env: &Env,
    topic: &str,
    wasm: &Path,
    options: &[&str],
    params: &[&str],
    msgs: &[Msg],
) -> BTreeSet<String> {
    let c = env.client().await;
    c.create_topic(topic, 1).await;
    wait_route(&env.namesrv(), topic).await;
    let wasm = wasm.to_str().unwrap();
    let mut args = vec!["filter", "upload", "--group", "G", "--topic", topic, wasm];
    args.extend(options);
    for p in params {
        args.extend(["--param", p]);
    }
    let out = ok(&weir(&env.namesrv(), &args, None).await);
    assert!(out.contains("version 1"), "{out}");
    c.send(topic, 0, msgs).await;
    key_set(&c.drain("G", topic, 0, 0).await.msgs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_folders_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("x");
    for (name, want) in [
        ("Bad", "invalid filter name \"Bad\""),
        ("a_b", "invalid filter name"),
        ("std", "reserved"),
    ] {
        let args = [
            "filter",
            "new",
            name,
            "--lang",
            "rust",
            "--dir",
            dir.to_str().unwrap(),
        ];
        let err = failed(&weir(NO_NAMESRV, &args, None).await);
        assert!(err.contains(want), "{name}: {err}");
    }
    assert!(!dir.exists(), "nothing written for a bad name");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("keep.txt"), "mine").unwrap();
    let args = [
        "filter",
        "new",
        "ok",
        "--lang",
        "c",
        "--dir",
        dir.to_str().unwrap(),
    ];
    let err = failed(&weir(NO_NAMESRV, &args, None).await);
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "left alone");
    let out = weir(
        NO_NAMESRV,
        &["filter", "new", "ok", "--lang", "cobol"],
        None,
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("invalid value 'cobol'"),
        "{err}"
    );
    // Without --dir, the folder is ./NAME; an empty folder is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let args = [
        "filter",
        "new",
        "in-place",
        "--lang",
        "rust",
        "--dir",
        empty.to_str().unwrap(),
    ];
    ok(&weir(NO_NAMESRV, &args, None).await);
    assert!(empty.join("weir-filter-sdk/wit/filter.wit").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_project_builds_tests_and_uploads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("region-is");
    let out = ok(&weir(
        NO_NAMESRV,
        &[
            "filter",
            "new",
            "region-is",
            "--lang",
            "rust",
            "--dir",
            dir.to_str().unwrap(),
        ],
        None,
    )
    .await);
    assert!(
        out.contains("cargo build --release --target wasm32-wasip2"),
        "{out}"
    );
    let target = shared_target();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    // The native tests of the template.
    let mut test = command(&cargo, &dir);
    test.args(["test"]).env("CARGO_TARGET_DIR", &target);
    let out = run_ok(test, "cargo test in the new project").await;
    assert!(out.contains("test result: ok. 2 passed"), "{out}");

    // The one build command, through the script that also prints the upload command.
    let mut build = command(dir.join("build.sh"), &dir);
    build.env("CARGO_TARGET_DIR", &target);
    let out = run_ok(build, "./build.sh").await;
    let wasm = target.join("wasm32-wasip2/release/region_is.wasm");
    assert!(
        out.contains("filter upload --group GROUP --topic TOPIC"),
        "{out}"
    );
    assert!(wasm.is_file(), "{out}");

    // `weir filter test` runs it, its log line on stderr.
    let input = "{\"properties\": {\"region\": \"eu\"}}\n{\"properties\": {\"region\": \"us\"}}\n";
    let params = ["--param", "property=region", "--param", "value=eu"];
    let mut args = vec!["filter", "test", wasm.to_str().unwrap()];
    args.extend(params);
    let out = weir(NO_NAMESRV, &args, Some(input)).await;
    assert_eq!(ok(&out), "1 keep\n2 drop\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "[info] keeping messages whose property \"region\" is \"eu\"\n1 of 2 kept\n"
    );

    // Uploaded to a broker, pulls keep exactly the messages with region=eu.
    let env = Env::start().await;
    let msgs: Vec<Msg> = (0..300)
        .map(|i| Msg::new(format!("r-{i}")).prop("region", ["eu", "us", "EU"][i % 3]))
        .collect();
    let got = upload_send_drain(
        &env,
        "Regions",
        &wasm,
        &[],
        &["property=region", "value=eu"],
        &msgs,
    )
    .await;
    let want = msgs
        .iter()
        .filter(|m| m.get("region") == Some("eu"))
        .map(|m| m.key.clone())
        .collect();
    assert_keys(&got, &want, "the generated Rust filter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_project_builds_tests_and_uploads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tag-prefix");
    ok(&weir(
        NO_NAMESRV,
        &[
            "filter",
            "new",
            "tag-prefix",
            "--lang",
            "c",
            "--dir",
            dir.to_str().unwrap(),
        ],
        None,
    )
    .await);
    let mut test = command("make", &dir);
    test.arg("test");
    let out = run_ok(test, "make test (the native test, host cc)").await;
    assert!(out.contains("all checks passed"), "{out}");

    let mut build = command("make", &dir);
    build.arg(format!("WEIR={}", env!("CARGO_BIN_EXE_weir")));
    if let Ok(clang) = std::env::var("WEIR_CLANG") {
        build.arg(format!("CLANG={clang}"));
    }
    let out = run_ok(
        build,
        "make (clang for wasm32-wasi: scripts/install-c-toolchain installs it)",
    )
    .await;
    let wasm = dir.join("build/tag_prefix.wasm");
    assert!(out.contains("filter upload --group GROUP"), "{out}");

    let input = "{\"tags\": \"order.paid\"}\n{\"tags\": \"refund\"}\n";
    let out = weir(
        NO_NAMESRV,
        &[
            "filter",
            "test",
            wasm.to_str().unwrap(),
            "--param",
            "prefix=order.",
        ],
        Some(input),
    )
    .await;
    assert_eq!(ok(&out), "1 keep\n2 drop\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "[info] tag-prefix: ready\n1 of 2 kept\n"
    );

    let env = Env::start().await;
    let tags = [
        "order.created",
        "order",
        "orders",
        "",
        "Order.x",
        "order.",
        "x.order.",
    ];
    let msgs: Vec<Msg> = (0..350)
        .map(|i| Msg::new(format!("t-{i}")).tag(tags[i % tags.len()]))
        .collect();
    let got = upload_send_drain(&env, "Tags", &wasm, &[], &["prefix=order."], &msgs).await;
    let want = msgs
        .iter()
        .filter(|m| m.tag.starts_with("order."))
        .map(|m| m.key.clone())
        .collect();
    assert_keys(&got, &want, "the generated C filter");
}

/// The tool `scripts/test` installed in the repository at `installed` (or the one the
/// environment variable `var` names); panics saying how to install it when absent.
fn installed_tool(var: &str, installed: &str, what: &str) -> PathBuf {
    let tool = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(installed)
    });
    assert!(
        tool.is_file(),
        "{what} is not installed at {} (needed to build the generated project): run \
         scripts/test, which installs it, or set {var} to an installed one",
        tool.display()
    );
    tool
}

/// A project of an engine language (a component embedding its interpreter): written,
/// tested natively with `native` (whose output must contain `passed`), built by its
/// build.sh with the installed tool (`var`=`tool`: no download), run by `weir filter test`
/// and uploaded with `--memory 64MiB`, after which pulls keep exactly region=eu.
async fn engine_project(lang: &str, native: &[&str], passed: &str, var: &str, tool: PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("region-is");
    let out = ok(&weir(
        NO_NAMESRV,
        &[
            "filter",
            "new",
            "region-is",
            "--lang",
            lang,
            "--dir",
            dir.to_str().unwrap(),
        ],
        None,
    )
    .await);
    assert!(out.contains(&native.join(" ")), "{out}");

    // The native tests of the template, through the SDK's testing helper.
    let mut test = command(native[0], &dir);
    test.args(&native[1..]).env_remove("PYTHONPATH");
    let out = run_ok(test, &format!("{native:?} in the new {lang} project")).await;
    assert!(out.contains(passed), "{out}");

    // The one build command, with the installed tool (no download, no network).
    let mut build = command(dir.join("build.sh"), &dir);
    build.env(var, &tool);
    let out = run_ok(build, &format!("./build.sh of the {lang} project")).await;
    assert!(
        out.contains("filter upload --group GROUP --topic TOPIC region_is.wasm --memory 64MiB"),
        "{out}"
    );
    let wasm = dir.join("region_is.wasm");
    assert!(wasm.is_file(), "{out}");
    for installed in ["node_modules", ".venv"] {
        assert!(
            !dir.join(installed).exists(),
            "build.sh installed tools: {out}"
        );
    }

    let input = "{\"properties\": {\"region\": \"eu\"}}\n{\"properties\": {\"region\": \"us\"}}\n";
    let out = weir(
        NO_NAMESRV,
        &[
            "filter",
            "test",
            wasm.to_str().unwrap(),
            "--memory",
            "64MiB",
            "--param",
            "property=region",
            "--param",
            "value=eu",
        ],
        Some(input),
    )
    .await;
    assert_eq!(ok(&out), "1 keep\n2 drop\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "[info] keeping messages whose property \"region\" is \"eu\"\n1 of 2 kept\n"
    );

    let env = Env::start().await;
    let msgs: Vec<Msg> = (0..300)
        .map(|i| {
            let m = Msg::new(format!("{lang}-{i}"));
            match i % 4 {
                3 => m.tag("TagA"),
                n => m.prop("region", ["eu", "us", "EU"][n]),
            }
        })
        .collect();
    let got = upload_send_drain(
        &env,
        "Regions",
        &wasm,
        &["--memory", "64MiB"],
        &["property=region", "value=eu"],
        &msgs,
    )
    .await;
    let want = msgs
        .iter()
        .filter(|m| m.get("region") == Some("eu"))
        .map(|m| m.key.clone())
        .collect();
    assert_keys(&got, &want, &format!("the generated {lang} filter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_project_builds_tests_and_uploads() {
    let var = "WEIR_COMPONENTIZE_JS";
    let tool = installed_tool(
        var,
        "filters/js/node_modules/@bytecodealliance/componentize-js/src/cli.js",
        "componentize-js (`npm ci --prefix filters/js`)",
    );
    let native = ["node", "--test", "test.mjs"];
    engine_project("js", &native, "# pass 2\n# fail 0", var, tool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_project_builds_tests_and_uploads() {
    let var = "WEIR_COMPONENTIZE_PY";
    let tool = installed_tool(
        var,
        "filters/python/target/venv/bin/componentize-py",
        "componentize-py (in the venv filters/python/target/venv)",
    );
    let native = ["python3", "-m", "unittest"];
    engine_project("python", &native, "Ran 2 tests", var, tool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_test_prints_log_lines_under_the_limit() {
    // 10,000 lines of 10 KiB in the one call: at most 10 in any second reach stderr,
    // each cut at 1024 bytes.
    let started = std::time::Instant::now();
    let out = weir(
        NO_NAMESRV,
        &["filter", "test", HOSTILE, "--param", "mode=log-spam"],
        Some("{}\n"),
    )
    .await;
    let elapsed = started.elapsed().as_secs();
    let err = String::from_utf8_lossy(&out.stderr);
    // The filter may also run past the 50 ms budget of `weir filter test` (the broker's
    // default) while logging: then the run fails, naming it, after the lines it logged.
    if out.status.success() {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "1 keep\n");
        assert!(err.ends_with("1 of 1 kept\n"), "{err:.300}");
    } else {
        assert!(
            err.ends_with("the call was interrupted at its deadline\n"),
            "{err:.300}"
        );
    }
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("[info] ")).collect();
    assert!(!lines.is_empty(), "{err}");
    assert!(
        lines.len() as u64 <= 10 * (elapsed + 1),
        "{} lines in {elapsed} s",
        lines.len()
    );
    for l in &lines {
        let text = &l["[info] ".len()..];
        assert!(text.starts_with("xxxx") && text.ends_with('…'), "{l:.40}");
        assert!(text.len() <= 1024 + '…'.len_utf8(), "{}", text.len());
    }
    let dropped = err
        .lines()
        .find_map(|l| {
            l.strip_prefix("weir: ")?
                .strip_suffix(" log lines dropped (the limit is 10 lines a second)")
        })
        .unwrap_or_else(|| panic!("no count of dropped lines: {err:.300}"));
    let dropped: usize = dropped.parse().unwrap();
    assert!(dropped >= 1 && dropped + lines.len() <= 10_000, "{dropped}");
}
