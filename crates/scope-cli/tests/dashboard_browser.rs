//! `scope sweep` then `scope dashboard` on the fixture model and SAE, and the pages opened from
//! disk in a real headless Chromium: the index has its table of latents and its sparklines, a
//! latent page has its histogram and its examples with the firing token marked, and both
//! render to a screenshot that is not blank. The latent page's screenshot is kept at
//! `target/dashboard-screenshot.png` (the README shows it).
//!
//! Needs `chromium` (Debian package `chromium`): `cargo xtask setup` installs it. Without it
//! the test fails, it does not skip.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests may panic

mod common;

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fixture, program, scope, F32_MODEL, F32_SAE};

/// The folder `scope sweep` names the fixture SAE's outputs.
const SAE_FOLDER: &str = "tiny-f32-res_layer_2_width_256_average_l0_20";

/// How long one Chromium run may take.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(120);

/// A screenshot smaller than this is taken for a blank page (a white 1200 × 900 PNG is a few
/// KB; the latent page, with text and a chart, is tens).
const MIN_SCREENSHOT_BYTES: u64 = 15_000;

/// A corpus of its own (so the test does not wait on `fixtures/corpus`), with text that must
/// be escaped.
const CORPUS: &str = "\
Would you be able to travel through time using a wormhole?
The cat sat on the mat & looked at the <door> for a \"long\" time.
My neighbour walks the poodle in the park every morning.
Space between the stars is mostly empty and light takes years to cross it.
The river ran north past the quiet city of glass and stone.
She wrote the music on paper by the bright morning light.
Golden fields stretched away to the hills under a pale sky.
If x < y and y < z then x < z, said the teacher.
The library opens at nine and closes at five on weekdays.
A small boat drifted slowly toward the harbour at dusk.
";

/// `scope ARGS` must succeed.
fn scope_ok(args: &[&str]) {
    let out = scope(args);
    assert!(
        out.status.success(),
        "scope {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Headless Chromium on `page` with `args`, its stdout written to `stdout`; fails after
/// [`BROWSER_TIMEOUT`]. Each run gets its own profile folder under `work`, so runs (and other
/// tests' browsers) never share a profile lock.
fn chromium(work: &Path, name: &str, args: &[String], page: &Path, stdout: &Path) {
    let binary = program(&["chromium", "chromium-browser"]);
    let profile = work.join(format!("profile-{name}"));
    let log = work.join(format!("chromium-{name}.log"));
    let mut child = Command::new(&binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--window-size=1200,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(File::create(stdout).unwrap())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{} does not start: {e}", binary.display()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > BROWSER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium ({name}) ran past {BROWSER_TIMEOUT:?}; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "chromium ({name}) failed ({status}); its log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// The DOM of `page` after Chromium has loaded it.
fn dump_dom(work: &Path, name: &str, page: &Path) -> String {
    let out = work.join(format!("{name}.dom.html"));
    chromium(work, name, &["--dump-dom".to_string()], page, &out);
    std::fs::read_to_string(&out).unwrap()
}

/// A screenshot of `page` at `png`, checked not to be blank: a PNG, large enough, and not one
/// byte repeated.
fn screenshot(work: &Path, name: &str, page: &Path, png: &Path) {
    let arg = format!("--screenshot={}", png.display());
    chromium(work, name, &[arg], page, &work.join(format!("{name}.out")));
    let bytes =
        std::fs::read(png).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        png.display()
    );
    assert!(
        bytes.len() as u64 > MIN_SCREENSHOT_BYTES,
        "the screenshot of {} is {} bytes: a blank page?",
        page.display(),
        bytes.len()
    );
    assert!(bytes.iter().any(|&b| b != bytes[0]), "a uniform screenshot");
}

/// The first `latent/<id>.html` the index links to (the densest latent).
fn first_latent_link(index: &str) -> String {
    let start = index
        .find("href=\"latent/")
        .expect("the index links to a latent page")
        + "href=\"".len();
    let end = start + index[start..].find('"').unwrap();
    index[start..end].to_string()
}

/// Rows of the `<tbody>` of the table whose tag has `class`.
fn table_rows(dom: &str, class: &str) -> usize {
    let table = dom
        .find(&format!("<table class=\"{class}\">"))
        .unwrap_or_else(|| panic!("no table.{class} in the DOM"));
    let end = table + dom[table..].find("</table>").unwrap();
    let body = &dom[table..end];
    let tbody = body.find("<tbody>").expect("a tbody");
    body[tbody..].matches("<tr>").count()
}

#[test]
fn dashboard_renders_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let corpus = work.join("corpus.txt");
    std::fs::write(&corpus, CORPUS).unwrap();
    let (model, sae) = (fixture(F32_MODEL), fixture(F32_SAE));
    let (sweep, html) = (work.join("sweep"), work.join("html"));
    let path = |p: &Path| p.display().to_string();

    scope_ok(&[
        "sweep",
        "--model",
        &model,
        "--sae",
        &sae,
        "--file",
        &path(&corpus),
        "--out",
        &path(&sweep),
        "--max-len",
        "24",
        "--top-k",
        "4",
        "--device",
        "cpu",
    ]);
    for file in ["latents.parquet", "examples.parquet", "summary.json"] {
        let file = sweep.join(SAE_FOLDER).join(file);
        assert!(file.is_file(), "scope sweep wrote no {}", file.display());
    }
    scope_ok(&[
        "dashboard",
        &path(&sweep),
        "--model",
        &model,
        "--sae",
        &sae,
        "--out",
        &path(&html),
        "--device",
        "cpu",
    ]);

    let index = html.join("index.html");
    let index_html = std::fs::read_to_string(&index)
        .unwrap_or_else(|e| panic!("scope dashboard wrote no {}: {e}", index.display()));
    let latent = html.join(first_latent_link(&index_html));
    assert!(
        latent.is_file(),
        "the index links to {}, which is missing",
        latent.display()
    );

    let dom = dump_dom(work, "index", &index);
    assert!(
        table_rows(&dom, "latents") > 0,
        "the latents table has no rows"
    );
    assert!(dom.contains("<svg"), "no sparkline on the index");
    let dom = dump_dom(work, "latent", &latent);
    assert!(
        dom.contains("<svg class=\"hist\""),
        "no histogram on {}",
        latent.display()
    );
    assert!(
        table_rows(&dom, "examples") > 0,
        "no examples on {}",
        latent.display()
    );
    assert!(
        dom.contains("<mark"),
        "no firing token marked on {}",
        latent.display()
    );
    assert!(
        dom.contains("href=\"../index.html\""),
        "no link back to the index"
    );

    screenshot(work, "index-shot", &index, &work.join("index.png"));
    let png = work.join("latent.png");
    screenshot(work, "latent-shot", &latent, &png);
    // target/ is the parent of CARGO_TARGET_TMPDIR (target/tmp), wherever the target dir is.
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("dashboard-screenshot.png");
    std::fs::copy(&png, &keep).unwrap();
}
