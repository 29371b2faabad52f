//! Static HTML dashboards of a sweep's outputs, in the manner of SAEDashboard and Neuronpedia's
//! feature pages: an index of one SAE's latents by density, and a page per latent with its
//! numbers, activation histogram, logit lens and top examples in context.
//!
//! ```text
//! out/index.html          summary, then every latent that fired (density descending)
//! out/latent/<id>.html    one page for each of the `max_pages` densest latents
//! ```
//!
//! The pages open from disk with no network: the CSS is inline, the charts are inline SVG and
//! the links are relative. The same outputs give the same bytes: nothing is timestamped and
//! every list has a fixed order (density descending, then latent id ascending).
//!
//! Token texts are escaped for HTML and their whitespace made visible the way the
//! `scope serve` page shows it: a space (or SentencePiece's `▁`) as `·`, a newline as `↵`, a
//! tab as `→`, other control characters as `\u{…}`, an empty token as `∅`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gemma_model::{GemmaModel, GemmaTokenizer};
use scope::SaeAt;

use crate::error::{Error, Result};
use crate::tables::{
    read_examples, read_latents, read_summary, ExampleRow, LatentRow, Summary, EXAMPLES_FILE,
    LATENTS_FILE, SUMMARY_FILE,
};

/// One latent's logit lens, as the dashboard shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lens {
    /// The tokens its decoder direction raises most, with their logit change, highest first.
    pub promoted: Vec<(String, f32)>,
    /// The tokens it lowers most, with their logit change, lowest first.
    pub suppressed: Vec<(String, f32)>,
}

/// What [`write_dashboard`] writes.
#[derive(Clone, Debug, PartialEq)]
pub struct DashboardOptions {
    /// Pages for at most this many latents: those of highest density that fired.
    pub max_pages: usize,
    /// The pages' title.
    pub title: String,
}

impl Default for DashboardOptions {
    fn default() -> Self {
        DashboardOptions {
            max_pages: 1000,
            title: "scope sweep".to_string(),
        }
    }
}

/// What [`write_dashboard`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct DashboardReport {
    /// `out/index.html`.
    pub index: PathBuf,
    /// Latent pages written.
    pub pages: usize,
}

/// Writes static pages for the sweep outputs in `sae_dir` (a `DIR/<sae name>/` folder) into
/// `out`: `index.html`, and `latent/<id>.html` for the `options.max_pages` latents of highest
/// density that fired, each with the logit lens `lens` gives for it (called once per page, in
/// density order).
pub fn write_dashboard(
    sae_dir: &Path,
    out: &Path,
    options: &DashboardOptions,
    lens: &mut dyn FnMut(i64) -> Result<Lens>,
) -> Result<DashboardReport> {
    let summary = read_summary(&sae_dir.join(SUMMARY_FILE))?;
    let mut latents = read_latents(&sae_dir.join(LATENTS_FILE))?;
    let examples = read_examples(&sae_dir.join(EXAMPLES_FILE))?;
    latents.sort_by(density_order);
    let fired = latents.iter().take_while(|l| l.count > 0).count();
    let (fired, silent) = latents.split_at(fired);
    let paged = &fired[..fired.len().min(options.max_pages)];
    let mut by_latent = examples_of(paged, examples);

    let pages_dir = out.join("latent");
    std::fs::create_dir_all(&pages_dir).map_err(Error::io(&pages_dir))?;
    for (i, row) in paged.iter().enumerate() {
        let page = LatentPage {
            title: &options.title,
            summary: &summary,
            row,
            rank: i + 1,
            prev: i
                .checked_sub(1)
                .and_then(|p| paged.get(p))
                .map(|l| l.latent),
            next: paged.get(i + 1).map(|l| l.latent),
            lens: &lens(row.latent)?,
            examples: by_latent.remove(&row.latent).unwrap_or_default(),
        };
        write(
            &pages_dir.join(format!("{}.html", row.latent)),
            &page.html(),
        )?;
    }
    remove_stale_pages(&pages_dir, paged)?;
    let index = out.join("index.html");
    let silent: Vec<i64> = silent.iter().map(|l| l.latent).collect();
    write(
        &index,
        &index_html(&options.title, &summary, fired, paged.len(), &silent),
    )?;
    Ok(DashboardReport {
        index,
        pages: paged.len(),
    })
}

/// The one SAE folder `dir` names: `dir` itself when it holds a `summary.json`, else its one
/// sub-folder that does (a sweep's output directory with a single SAE).
pub fn find_sae_dir(dir: &Path) -> Result<PathBuf> {
    if dir.join(SUMMARY_FILE).is_file() {
        return Ok(dir.to_path_buf());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.join(SUMMARY_FILE).is_file())
        .collect();
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::Input(format!(
            "{}: no {SUMMARY_FILE} in it or in a folder under it (not a sweep's output)",
            dir.display()
        ))),
        many => Err(Error::Input(format!(
            "{} holds the outputs of {} SAEs ({}): name one of their folders",
            dir.display(),
            many.len(),
            many.iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The [`Lens`] callback of `sae` on `model`: [`scope::explain`]'s `k` top tokens each way,
/// decoded by `tokenizer` (special tokens kept).
pub fn explain_lens<'a>(
    model: &'a GemmaModel,
    tokenizer: &'a GemmaTokenizer,
    sae: &'a SaeAt,
    k: i64,
) -> impl FnMut(i64) -> Result<Lens> + 'a {
    move |latent| {
        let lens = scope::explain(model, sae, latent, k)?;
        let texts = |pairs: Vec<(i64, f32)>| -> Result<Vec<(String, f32)>> {
            pairs
                .into_iter()
                .map(|(id, value)| Ok((tokenizer.decode(&[id], false)?, value)))
                .collect()
        };
        Ok(Lens {
            promoted: texts(lens.promoted)?,
            suppressed: texts(lens.suppressed)?,
        })
    }
}

/// Latents that fired first, then density descending, then latent id ascending.
fn density_order(a: &LatentRow, b: &LatentRow) -> std::cmp::Ordering {
    (b.count > 0)
        .cmp(&(a.count > 0))
        .then(b.density.total_cmp(&a.density))
        .then(a.latent.cmp(&b.latent))
}

/// The examples of the `paged` latents, by latent, each list by rank.
fn examples_of(paged: &[LatentRow], examples: Vec<ExampleRow>) -> BTreeMap<i64, Vec<ExampleRow>> {
    let mut by_latent: BTreeMap<i64, Vec<ExampleRow>> =
        paged.iter().map(|l| (l.latent, Vec::new())).collect();
    for example in examples {
        if let Some(list) = by_latent.get_mut(&example.latent) {
            list.push(example);
        }
    }
    for list in by_latent.values_mut() {
        list.sort_by_key(|e| e.rank);
    }
    by_latent
}

/// Removes the latent pages an earlier run into the same folder left (with a larger
/// `--max-pages`, or of another sweep), so that every page there is this run's. Only files
/// named as a latent page is (`<latent>.html`) are touched.
fn remove_stale_pages(pages_dir: &Path, paged: &[LatentRow]) -> Result<()> {
    let current: std::collections::HashSet<i64> = paged.iter().map(|l| l.latent).collect();
    let entries = std::fs::read_dir(pages_dir).map_err(Error::io(pages_dir))?;
    for entry in entries {
        let path = entry.map_err(Error::io(pages_dir))?.path();
        let latent = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".html"))
            .filter(|stem| stem.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|stem| stem.parse::<i64>().ok());
        if latent.is_some_and(|latent| !current.contains(&latent)) {
            std::fs::remove_file(&path).map_err(Error::io(&path))?;
        }
    }
    Ok(())
}

fn write(path: &Path, html: &str) -> Result<()> {
    std::fs::write(path, html).map_err(Error::io(path))
}

// ---- Text --------------------------------------------------------------------------------

/// `text` safe inside HTML text and quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A token's text as HTML, escaped, its whitespace and control characters shown as grey
/// marks (see the module docs) so that `" the"`, `"the"` and `"\n"` look different.
fn token_html(text: &str) -> String {
    if text.is_empty() {
        return "<span class=\"ws\">∅</span>".to_string();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let mark = match c {
            ' ' | '▁' => "·".to_string(),
            '\n' => "↵".to_string(),
            '\t' => "→".to_string(),
            c if c.is_control() => format!("\\u{{{:x}}}", u32::from(c)),
            c => {
                out.push_str(&escape(c.encode_utf8(&mut [0; 4])));
                continue;
            }
        };
        out.push_str(&format!("<span class=\"ws\">{mark}</span>"));
    }
    out
}

/// `x` with 4 significant digits, plainly between 10⁻³ and 10⁵ and in `e` notation outside.
fn number(x: f64) -> String {
    let a = x.abs();
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    if !(1e-3..1e5).contains(&a) {
        return format!("{x:.3e}");
    }
    let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
    let text = format!("{x:.decimals$}");
    match text.contains('.') {
        true => text.trim_end_matches('0').trim_end_matches('.').to_string(),
        false => text,
    }
}

/// An optional metric, `—` when absent.
fn maybe(x: Option<f64>) -> String {
    x.map(number).unwrap_or_else(|| "—".to_string())
}

/// Sorted ids as ranges: `0–3, 7, 9–10`.
fn id_ranges(ids: &[i64]) -> String {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for id in sorted {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == id => *end = id,
            _ => runs.push((id, id)),
        }
    }
    runs.iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}–{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- Charts ------------------------------------------------------------------------------

/// A row of the index: the histogram as bars in a 62 × 16 box, heights proportional to the
/// counts (at least 1 for a bin with any), one path so that thousands of rows stay small.
fn sparkline_svg(counts: &[i64]) -> String {
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let bars: String = counts
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(i, &c)| {
            let h = ((16.0 * c as f64 / max).round() as i64).clamp(1, 16);
            format!("M{i}.5 16V{}", 16 - h)
        })
        .collect();
    format!(
        "<svg class=\"spark\" viewBox=\"0 0 {n} 16\" width=\"124\" height=\"24\" \
         preserveAspectRatio=\"none\" aria-hidden=\"true\"><path d=\"M0 16H{n}\" \
         stroke=\"#ccc\" stroke-width=\"0.5\"/><path d=\"{bars}\" stroke=\"#3f6fb0\" \
         stroke-width=\"0.8\"/></svg>",
        n = counts.len()
    )
}

/// Geometry of the histogram chart, in SVG units.
const CHART: Chart = Chart {
    width: 640.0,
    height: 240.0,
    left: 56.0,
    right: 16.0,
    top: 12.0,
    bottom: 44.0,
};

struct Chart {
    width: f64,
    height: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl Chart {
    fn plot_width(&self) -> f64 {
        self.width - self.left - self.right
    }

    fn plot_height(&self) -> f64 {
        self.height - self.top - self.bottom
    }

    fn base(&self) -> f64 {
        self.height - self.bottom
    }
}

/// A latent's activation histogram as a bar chart: one bar per bin, evenly spaced (so the
/// x axis is logarithmic, the bins being 0.1 decade wide), the decade edges labeled, the
/// y axis in tokens; each bar's tooltip gives its range and count. `edges` are the inner
/// edges: bin `b` lies between `edges[b − 1]` and `edges[b]`.
fn histogram_svg(counts: &[i64], edges: &[f64]) -> String {
    let c = &CHART;
    let n = counts.len().max(1) as f64;
    let bin = c.plot_width() / n;
    let max = counts.iter().copied().max().unwrap_or(0);
    let mut svg = format!(
        "<svg class=\"hist\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" \
         aria-label=\"activation histogram\">",
        w = c.width,
        h = c.height
    );
    svg.push_str(&y_axis(max));
    for (i, &count) in counts.iter().enumerate().filter(|(_, k)| **k > 0) {
        let h = c.plot_height() * count as f64 / max as f64;
        svg.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\"><title>{}: {count} \
             tokens</title></rect>",
            c.left + i as f64 * bin + 0.5,
            c.base() - h,
            (bin - 1.0).max(0.5),
            escape(&bin_range(i, counts.len(), edges)),
        ));
    }
    svg.push_str(&x_axis(edges, bin));
    if max == 0 {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">never fired</text>",
            c.left + c.plot_width() / 2.0,
            c.top + c.plot_height() / 2.0
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// The y axis up to `max` tokens: gridlines and labels every 1, 2 or 5 × 10ᵏ, at most 5.
fn y_axis(max: i64) -> String {
    let c = &CHART;
    let step = nice_step(max);
    let mut svg = String::new();
    let mut tick = 0;
    while tick <= max {
        let y = c.base() - c.plot_height() * tick as f64 / max.max(1) as f64;
        svg.push_str(&format!(
            "<line class=\"grid\" x1=\"{l}\" y1=\"{y:.1}\" x2=\"{r}\" y2=\"{y:.1}\"/>\
             <text x=\"{lx}\" y=\"{ty:.1}\" text-anchor=\"end\">{tick}</text>",
            l = c.left,
            r = c.width - c.right,
            lx = c.left - 6.0,
            ty = y + 4.0,
        ));
        tick += step;
    }
    svg.push_str(&format!(
        "<text x=\"14\" y=\"{y:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {y:.1})\">\
         tokens</text>",
        y = c.top + c.plot_height() / 2.0
    ));
    svg
}

/// The smallest 1, 2 or 5 × 10ᵏ that cuts `0..=max` into at most 4 steps.
fn nice_step(max: i64) -> i64 {
    let mut magnitude = 1;
    loop {
        for factor in [1, 2, 5] {
            let step = factor * magnitude;
            if step * 4 >= max {
                return step;
            }
        }
        magnitude *= 10;
    }
}

/// The x axis: a tick and label at each edge that is a power of ten (edge `j` lies at the
/// right side of bin `j`), and the axis title.
fn x_axis(edges: &[f64], bin: f64) -> String {
    let c = &CHART;
    let mut svg = format!(
        "<line class=\"axis\" x1=\"{l}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\"/>",
        l = c.left,
        r = c.width - c.right,
        b = c.base()
    );
    for (j, &edge) in edges.iter().enumerate() {
        let Some(decade) = decade_of(edge) else {
            continue;
        };
        let x = c.left + (j + 1) as f64 * bin;
        svg.push_str(&format!(
            "<line class=\"axis\" x1=\"{x:.1}\" y1=\"{b}\" x2=\"{x:.1}\" y2=\"{t}\"/>\
             <text x=\"{x:.1}\" y=\"{ty}\" text-anchor=\"middle\">{}</text>",
            decade_label(decade),
            b = c.base(),
            t = c.base() + 5.0,
            ty = c.base() + 18.0,
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{x:.1}\" y=\"{y}\" text-anchor=\"middle\">activation (log scale)</text>",
        x = c.left + c.plot_width() / 2.0,
        y = c.height - 6.0
    ));
    svg
}

/// `k` when `x` is 10ᵏ (to float precision).
fn decade_of(x: f64) -> Option<i32> {
    let k = x.log10().round();
    ((x.log10() - k).abs() < 1e-9).then_some(k as i32)
}

/// 10ᵏ as the axis writes it: `0.01`, `0.1`, `1`, `10`, `100`, `1000`, then `1e4`.
fn decade_label(k: i32) -> String {
    match k {
        k if k < 0 => format!("{:.*}", k.unsigned_abs() as usize, 10f64.powi(k)),
        0..=3 => 10i64.pow(k.unsigned_abs()).to_string(),
        k => format!("1e{k}"),
    }
}

/// Bin `i`'s range among `bins`: `< e₀` for the first, `≥ eₗₐₛₜ` for the last, `[a, b)`
/// between.
fn bin_range(i: usize, bins: usize, edges: &[f64]) -> String {
    let edge = |j: usize| {
        edges
            .get(j)
            .map(|&e| number(e))
            .unwrap_or_else(|| "?".into())
    };
    match i {
        0 => format!("< {}", edge(0)),
        i if i + 1 == bins => format!("≥ {}", edge(i - 1)),
        i => format!("[{}, {})", edge(i - 1), edge(i)),
    }
}

// ---- Pages -------------------------------------------------------------------------------

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2330;
margin:0 auto;padding:16px 24px 48px;max-width:1160px;background:#fff}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:16px;margin:24px 0 8px}
.sub{color:#5a6478;margin:0 0 12px}nav{font-size:13px;margin-bottom:8px}
a{color:#2454a6;text-decoration:none}a:hover{text-decoration:underline}
table{border-collapse:collapse}th,td{padding:3px 10px;text-align:left;vertical-align:middle}
thead th{border-bottom:2px solid #d5dae3;font-weight:600;white-space:nowrap}
tbody tr:nth-child(even){background:#f6f8fb}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
table.kv th{font-weight:500;color:#5a6478;padding-right:16px}
.cards{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
svg text{font:11px system-ui,sans-serif;fill:#3b4456}.hist rect{fill:#3f6fb0}
.hist rect:hover{fill:#e08a00}.grid{stroke:#e6e9ef}.axis{stroke:#5a6478}
.lens{display:flex;gap:32px}.lens td.n{color:#5a6478}
.tok{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
.ws{color:#a3abba}
.ctx{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;
overflow-wrap:anywhere;max-width:760px}
.ctx span:hover{background:#e6ecf7}
mark{border-radius:3px;padding:0 1px;outline:1px solid #d08000;color:inherit}
";

/// A whole page.
fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(title)
    )
}

/// `name · layer L · site` of the SAE.
fn sae_line(summary: &Summary) -> String {
    let sae = &summary.sae;
    format!(
        "{} · layer {} · {}",
        escape(&sae.name),
        sae.layer,
        escape(&sae.site)
    )
}

/// A two-column table of `(label, value HTML)`.
fn key_values(rows: &[(&str, String)]) -> String {
    let rows: String = rows
        .iter()
        .map(|(k, v)| format!("<tr><th>{}</th><td class=\"n\">{v}</td></tr>\n", escape(k)))
        .collect();
    format!("<table class=\"kv\"><tbody>\n{rows}</tbody></table>\n")
}

/// The summary's numbers.
fn summary_html(summary: &Summary) -> String {
    let m = &summary.metrics;
    let sae = &summary.sae;
    let mut rows = vec![
        ("model", escape(&summary.model)),
        ("SAE", escape(&sae.source)),
        (
            "layer · site",
            format!("{} · {}", sae.layer, escape(&sae.site)),
        ),
        ("d_sae · d_out", format!("{} · {}", sae.d_sae, sae.d_out)),
        ("documents", summary.docs.to_string()),
        ("tokens", summary.tokens.to_string()),
        ("mean L0", number(m.mean_l0)),
        ("MSE", number(m.mse)),
        ("explained variance (SAELens)", number(m.explained_variance)),
        (
            "explained variance (1 − MSE/var)",
            number(m.explained_variance_tutorial),
        ),
    ];
    if m.delta_ce.is_some() {
        rows.push((
            "ΔCE (clean → spliced)",
            format!(
                "{} ({} → {})",
                maybe(m.delta_ce),
                maybe(m.ce_clean),
                maybe(m.ce_spliced)
            ),
        ));
    }
    if m.kl.is_some() {
        rows.push(("KL(clean ‖ spliced)", maybe(m.kl)));
    }
    rows.push((
        "latents fired",
        format!(
            "{} of {} ({}%)",
            summary.latents_fired,
            sae.d_sae,
            number(100.0 * summary.latents_fired as f64 / sae.d_sae.max(1) as f64)
        ),
    ));
    key_values(&rows)
}

/// `index.html`: the summary, the latents that fired by density (linked where they have a
/// page) and the ids of those that never fired.
fn index_html(
    title: &str,
    summary: &Summary,
    fired: &[LatentRow],
    pages: usize,
    silent: &[i64],
) -> String {
    let rows: String = fired
        .iter()
        .enumerate()
        .map(|(i, row)| index_row(i + 1, row, i < pages))
        .collect();
    let mut body = format!(
        "<header>\n<h1>{}</h1>\n<p class=\"sub\">{}</p>\n</header>\n<section>\n{}</section>\n\
         <h2>Latents by density</h2>\n<p class=\"sub\">{} latents fired; pages for the first {}.\
         </p>\n<table class=\"latents\">\n<thead><tr><th class=\"n\">#</th><th>latent</th>\
         <th class=\"n\">density</th><th class=\"n\">count</th><th class=\"n\">max</th>\
         <th class=\"n\">mean</th><th>histogram</th></tr></thead>\n<tbody>\n{rows}</tbody>\n\
         </table>\n",
        escape(title),
        sae_line(summary),
        summary_html(summary),
        fired.len(),
        pages
    );
    if !silent.is_empty() {
        body.push_str(&format!(
            "<h2>Never fired</h2>\n<details><summary>{} latents</summary>\n<p class=\"tok\">{}</p>\
             \n</details>\n",
            silent.len(),
            id_ranges(silent)
        ));
    }
    page(&format!("{title} · {}", summary.sae.name), &body)
}

/// One latent's row of the index.
fn index_row(rank: usize, row: &LatentRow, paged: bool) -> String {
    let id = match paged {
        true => format!("<a href=\"latent/{0}.html\">{0}</a>", row.latent),
        false => row.latent.to_string(),
    };
    format!(
        "<tr><td class=\"n\">{rank}</td><td>{id}</td><td class=\"n\">{}</td>\
         <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>\n",
        number(row.density),
        row.count,
        number(f64::from(row.max)),
        maybe(row.mean),
        sparkline_svg(&row.histogram)
    )
}

/// What one latent's page shows.
struct LatentPage<'a> {
    title: &'a str,
    summary: &'a Summary,
    row: &'a LatentRow,
    /// Its place by density, from 1.
    rank: usize,
    /// The paged latents before and after it by density.
    prev: Option<i64>,
    next: Option<i64>,
    lens: &'a Lens,
    examples: Vec<ExampleRow>,
}

impl LatentPage<'_> {
    fn html(&self) -> String {
        let id = self.row.latent;
        let body = format!(
            "{}<header>\n<h1>Latent {id}</h1>\n<p class=\"sub\">{}</p>\n</header>\n\
             <div class=\"cards\">\n<section>\n<h2>Numbers</h2>\n{}</section>\n<section>\n\
             <h2>Activation histogram</h2>\n{}\n</section>\n</div>\n<section>\n<h2>Logit lens</h2>\n\
             {}</section>\n<section>\n<h2>Top examples</h2>\n{}</section>\n",
            self.nav(),
            sae_line(self.summary),
            self.numbers(),
            histogram_svg(&self.row.histogram, &self.summary.histogram_edges),
            lens_html(self.lens),
            examples_html(&self.examples, self.row.max),
        );
        page(
            &format!("{} · {} · latent {id}", self.title, self.summary.sae.name),
            &body,
        )
    }

    fn nav(&self) -> String {
        let mut links = vec!["<a href=\"../index.html\">↑ all latents</a>".to_string()];
        if let Some(prev) = self.prev {
            links.push(format!("<a href=\"{prev}.html\">← latent {prev}</a>"));
        }
        if let Some(next) = self.next {
            links.push(format!("<a href=\"{next}.html\">latent {next} →</a>"));
        }
        format!("<nav>{}</nav>\n", links.join(" · "))
    }

    fn numbers(&self) -> String {
        let row = self.row;
        key_values(&[
            (
                "density",
                format!("{} ({}%)", number(row.density), number(100.0 * row.density)),
            ),
            (
                "count",
                format!("{} of {} tokens", row.count, self.summary.tokens),
            ),
            ("max", number(f64::from(row.max))),
            ("mean where it fires", maybe(row.mean)),
            (
                "rank by density",
                format!("{} of {}", self.rank, self.summary.latents_fired),
            ),
        ])
    }
}

/// The promoted and suppressed tokens side by side.
fn lens_html(lens: &Lens) -> String {
    let table = |name: &str, tokens: &[(String, f32)]| {
        let rows: String = tokens
            .iter()
            .map(|(t, v)| {
                format!(
                    "<tr><td class=\"tok\">{}</td><td class=\"n\">{v:+.3}</td></tr>\n",
                    token_html(t)
                )
            })
            .collect();
        format!(
            "<table class=\"{name}\"><thead><tr><th>{name}</th><th class=\"n\">logit</th></tr>\
             </thead>\n<tbody>\n{rows}</tbody></table>\n"
        )
    };
    format!(
        "<div class=\"lens\">\n{}{}</div>\n",
        table("promoted", &lens.promoted),
        table("suppressed", &lens.suppressed)
    )
}

/// The top examples, one row each, the context shown with its firing token marked.
fn examples_html(examples: &[ExampleRow], max: f32) -> String {
    if examples.is_empty() {
        return "<p class=\"sub\">No examples.</p>\n".to_string();
    }
    let rows: String = examples
        .iter()
        .map(|e| {
            format!(
                "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"ctx\">{}</td></tr>\n",
                e.rank,
                number(f64::from(e.value)),
                e.doc,
                e.position,
                context_html(e, max)
            )
        })
        .collect();
    format!(
        "<table class=\"examples\">\n<thead><tr><th class=\"n\">rank</th><th class=\"n\">value</th>\
         <th class=\"n\">doc</th><th class=\"n\">position</th><th>context</th></tr></thead>\n\
         <tbody>\n{rows}</tbody>\n</table>\n"
    )
}

/// An example's context tokens, each with its position (and id) as a tooltip; the firing
/// token (index `position − context_start`) in a `<mark>` whose shade grows with its value
/// relative to the latent's `max`.
fn context_html(example: &ExampleRow, max: f32) -> String {
    let at = example.position - example.context_start;
    let strength = match max > 0.0 {
        true => (example.value / max).clamp(0.0, 1.0),
        false => 1.0,
    };
    example
        .context_tokens
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let position = example.context_start + i as i64;
            let id = example.context_ids.get(i).copied().unwrap_or(-1);
            let title = format!("position {position}, token {id}");
            match i as i64 == at {
                true => format!(
                    "<mark title=\"{title}\" style=\"background:rgba(255,170,0,{:.2})\">{}</mark>",
                    0.25 + 0.75 * strength,
                    token_html(text)
                ),
                false => format!("<span title=\"{title}\">{}</span>", token_html(text)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::state::{Coverage, SaeSpec};
    use crate::stats::{histogram_edges, Context, Example, SaeStats, HISTOGRAM_BINS};
    use crate::tables::{summary, write_outputs};

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain ▁ text"), "plain ▁ text");
    }

    #[test]
    fn tokens_show_whitespace_and_controls() {
        let ws = |m: &str| format!("<span class=\"ws\">{m}</span>");
        assert_eq!(token_html(" the"), format!("{}the", ws("·")));
        assert_eq!(token_html("▁<b>"), format!("{}&lt;b&gt;", ws("·")));
        assert_eq!(token_html("a\nb"), format!("a{}b", ws("↵")));
        assert_eq!(token_html("\t"), ws("→"));
        assert_eq!(token_html("\u{7}"), ws("\\u{7}"));
        assert_eq!(token_html(""), ws("∅"));
        assert_eq!(token_html("&\""), "&amp;&quot;");
    }

    #[test]
    fn numbers_keep_four_significant_digits() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(1.0), "1");
        assert_eq!(number(0.012346), "0.01235");
        assert_eq!(number(123.456), "123.5");
        assert_eq!(number(-2.5), "-2.5");
        assert_eq!(number(12345.0), "12345");
        assert_eq!(number(1.5e-5), "1.500e-5");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(id_ranges(&[9, 0, 1, 2, 3, 7, 10]), "0–3, 7, 9–10");
    }

    #[test]
    fn decades_and_steps() {
        let labels: Vec<String> = histogram_edges()
            .iter()
            .filter_map(|&e| decade_of(e))
            .map(decade_label)
            .collect();
        assert_eq!(labels, ["0.01", "0.1", "1", "10", "100", "1000", "1e4"]);
        assert_eq!(nice_step(0), 1);
        assert_eq!(nice_step(7), 2);
        assert_eq!(nice_step(40), 10);
        assert_eq!(nice_step(41), 20);
    }

    fn counts(pairs: &[(usize, i64)]) -> Vec<i64> {
        let mut h = vec![0; HISTOGRAM_BINS];
        for &(bin, count) in pairs {
            h[bin] = count;
        }
        h
    }

    #[test]
    fn histogram_svg_has_a_bar_per_filled_bin_and_labeled_axes() {
        let h = counts(&[(0, 1), (21, 8), (30, 4), (61, 2)]);
        let svg = histogram_svg(&h, &histogram_edges());
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 4);
        for label in [">0.01<", ">0.1<", ">1<", ">10<", ">100<", ">1000<", ">1e4<"] {
            assert!(svg.contains(label), "no x label {label}");
        }
        assert!(svg.contains("activation (log scale)") && svg.contains(">tokens<"));
        // y ticks every 2 up to the largest count, the tallest bar filling the plot
        for tick in [">0<", ">2<", ">4<", ">6<", ">8<"] {
            assert!(svg.contains(tick), "no y label {tick}");
        }
        assert!(svg.contains(&format!("height=\"{:.1}\"", CHART.plot_height())));
        assert!(svg.contains("<title>&lt; 0.01: 1 tokens</title>"));
        assert!(svg.contains("<title>[1, 1.259): 8 tokens</title>"));
        assert!(svg.contains("<title>≥ 10000: 2 tokens</title>"));
        assert_eq!(svg, histogram_svg(&h, &histogram_edges()));
    }

    #[test]
    fn empty_histogram_says_so() {
        let svg = histogram_svg(&counts(&[]), &histogram_edges());
        assert_eq!(svg.matches("<rect").count(), 0);
        assert!(svg.contains("never fired"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn sparkline_draws_filled_bins() {
        let svg = sparkline_svg(&counts(&[(3, 100), (4, 1)]));
        assert!(svg.contains("d=\"M3.5 16V0M4.5 16V15\""), "{svg}");
        assert!(svg.contains("viewBox=\"0 0 62 16\""));
    }

    #[test]
    fn context_marks_the_firing_token() {
        let example = example_row(2, 0, 6.0);
        let html = context_html(&example, 10.0);
        assert_eq!(html.matches("<mark").count(), 1);
        assert!(html.contains(
            "<mark title=\"position 5, token 12\" \
                               style=\"background:rgba(255,170,0,0.70)\">&lt;b&gt;</mark>"
        ));
        assert!(html
            .contains("<span title=\"position 3, token 10\"><span class=\"ws\">·</span>a</span>"));
    }

    fn example_row(latent: i64, rank: i64, value: f32) -> ExampleRow {
        ExampleRow {
            latent,
            rank,
            value,
            doc: 1,
            position: 5,
            token_id: 12,
            token: "<b>".into(),
            context_start: 3,
            context_ids: vec![10, 11, 12, 13],
            context_tokens: vec![" a".into(), "\n".into(), "<b>".into(), "&".into()],
        }
    }

    /// A sweep output folder of 4 latents, hand-made: latent 2 fires most, 0 once, 1 and 3
    /// never.
    fn sweep_dir(dir: &Path) -> PathBuf {
        let mut stats = SaeStats::new(4, 2, 2, Context::default(), false);
        stats.count = vec![1, 0, 3, 0];
        stats.sum = vec![0.5, 0.0, 9.0, 0.0];
        stats.max = vec![0.5, 0.0, 4.0, 0.0];
        stats.histogram[17] = 1;
        stats.histogram[2 * HISTOGRAM_BINS + 25] = 2;
        stats.histogram[2 * HISTOGRAM_BINS + 27] = 1;
        let example = |value, position| Example {
            value,
            doc: 0,
            position,
            token_id: 7,
            context_start: 0,
            context: vec![2, 7, 8],
        };
        stats.top[0] = vec![example(0.5, 1)];
        stats.top[2] = vec![example(4.0, 1), example(3.0, 2)];
        stats.reconstruction.tokens = 10;
        stats.reconstruction.target_squared = 20.0;
        stats.reconstruction.squared_error = 2.0;
        let sae = SaeSpec {
            name: "tiny_layer_1".into(),
            source: "saes/tiny/layer_1".into(),
            layer: 1,
            site: "resid_post".into(),
            d_sae: 4,
            d_out: 2,
        };
        let coverage = Coverage {
            shard_count: 1,
            shards: vec![0],
            docs: 2,
            next_doc: 2,
            complete: true,
        };
        let folder = dir.join(&sae.name);
        let s = summary(&sae, "models/tiny <&>", &coverage, &stats);
        let text =
            |id: i64| ["<bos>", "", " x", "", "", "", "", " <cat>", "\n"][id as usize].to_string();
        write_outputs(&folder, &stats, &s, &text).unwrap();
        folder
    }

    fn fake_lens(latent: i64) -> Result<Lens> {
        Ok(Lens {
            promoted: vec![(format!(" up{latent}"), 1.5)],
            suppressed: vec![("\"down\"".into(), -0.25)],
        })
    }

    #[test]
    fn writes_pages_for_the_densest_latents() {
        let dir = tempfile::tempdir().unwrap();
        let folder = sweep_dir(dir.path());
        let out = dir.path().join("html");
        let mut asked = Vec::new();
        let mut lens = |latent| {
            asked.push(latent);
            fake_lens(latent)
        };
        let options = DashboardOptions {
            max_pages: 1,
            ..DashboardOptions::default()
        };
        let report = write_dashboard(&folder, &out, &options, &mut lens).unwrap();
        assert_eq!(
            report,
            DashboardReport {
                index: out.join("index.html"),
                pages: 1
            }
        );
        assert_eq!(asked, [2]);
        assert!(!out.join("latent/0.html").exists());

        let index = std::fs::read_to_string(&report.index).unwrap();
        assert!(index.contains("models/tiny &lt;&amp;&gt;"));
        assert!(index.contains("<a href=\"latent/2.html\">2</a>"));
        assert!(index.find(">2</a>").unwrap() < index.find("<td>0</td>").unwrap());
        assert!(index.contains("<summary>2 latents</summary>") && index.contains("1, 3"));
        assert_eq!(index.matches("class=\"spark\"").count(), 2);

        let page = std::fs::read_to_string(out.join("latent/2.html")).unwrap();
        assert!(page.contains("<a href=\"../index.html\">"));
        assert!(page.contains("<span class=\"ws\">·</span>up2"));
        assert!(page.contains("&quot;down&quot;</td><td class=\"n\">-0.250"));
        assert_eq!(page.matches("<mark").count(), 2);
        assert!(page.contains("<span class=\"ws\">·</span>&lt;cat&gt;</mark>"));
        assert_eq!(page.matches("class=\"hist\"").count(), 1);
    }

    #[test]
    fn pages_of_an_earlier_run_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let folder = sweep_dir(dir.path());
        let out = dir.path().join("html");
        let all = DashboardOptions::default();
        write_dashboard(&folder, &out, &all, &mut fake_lens).unwrap();
        assert!(out.join("latent/0.html").exists());
        std::fs::write(out.join("latent/notes.html"), "mine").unwrap();
        let one = DashboardOptions {
            max_pages: 1,
            ..DashboardOptions::default()
        };
        write_dashboard(&folder, &out, &one, &mut fake_lens).unwrap();
        assert!(!out.join("latent/0.html").exists());
        assert!(out.join("latent/2.html").exists());
        assert!(out.join("latent/notes.html").exists());
    }

    #[test]
    fn output_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let folder = sweep_dir(dir.path());
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let options = DashboardOptions::default();
        write_dashboard(&folder, &a, &options, &mut fake_lens).unwrap();
        write_dashboard(&folder, &b, &options, &mut fake_lens).unwrap();
        for file in ["index.html", "latent/0.html", "latent/2.html"] {
            let read = |d: &Path| std::fs::read(d.join(file)).unwrap();
            assert_eq!(read(&a), read(&b), "{file} differs");
        }
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let folder = sweep_dir(dir.path());
        std::fs::remove_file(folder.join(EXAMPLES_FILE)).unwrap();
        let err = write_dashboard(
            &folder,
            &dir.path().join("o"),
            &DashboardOptions::default(),
            &mut fake_lens,
        )
        .unwrap_err();
        assert!(err.to_string().contains(EXAMPLES_FILE), "{err}");
        let err = write_dashboard(
            dir.path(),
            &dir.path().join("o"),
            &DashboardOptions::default(),
            &mut fake_lens,
        )
        .unwrap_err();
        assert!(err.to_string().contains(SUMMARY_FILE), "{err}");
    }

    #[test]
    fn finds_the_one_sae_folder() {
        let dir = tempfile::tempdir().unwrap();
        let folder = sweep_dir(dir.path());
        assert_eq!(find_sae_dir(dir.path()).unwrap(), folder);
        assert_eq!(find_sae_dir(&folder).unwrap(), folder);
        std::fs::create_dir(dir.path().join("other")).unwrap();
        std::fs::write(dir.path().join("other").join(SUMMARY_FILE), "{}").unwrap();
        let err = find_sae_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("2 SAEs") && err.contains("other"), "{err}");
        let err = find_sae_dir(&dir.path().join("other/none"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("none"), "{err}");
    }
}
