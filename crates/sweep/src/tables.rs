//! A sweep's outputs for one SAE: `latents.parquet`, `examples.parquet` and `summary.json`,
//! written from its [`SaeStats`] and read back (for the dashboards and for tests).
//!
//! `latents.parquet`, one row per latent:
//!
//! | column | type | |
//! |---|---|---|
//! | `latent` | int64 | |
//! | `count` | int64 | tokens where it is `> 0` |
//! | `density` | double | `count / tokens` |
//! | `max` | float | its largest activation (0 when it never fires) |
//! | `mean` | double, null when it never fires | over the tokens where it fires |
//! | `histogram` | list of int64 | firing tokens per bin; the edges are in `summary.json` ([`crate::stats`]) |
//!
//! `examples.parquet`, up to `k` rows per latent, by latent then rank:
//!
//! | column | type | |
//! |---|---|---|
//! | `latent`, `rank` | int64 | rank 0 is the strongest; ties go to the lower (`doc`, `position`) |
//! | `value` | float | the activation |
//! | `doc` | int64 | the document's 0-based index in corpus order |
//! | `position` | int64 | the token's 0-based position, `<bos>` being 0 |
//! | `token_id`, `token` | int64, string | the token that fired, and its text |
//! | `context_start` | int64 | the position of the context's first token |
//! | `context_ids`, `context_tokens` | list of int64, list of string | the tokens around it |

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, FloatType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::FileReader;
use parquet::file::writer::SerializedFileWriter;
use parquet::record::{Field, ListAccessor};
use parquet::schema::parser::parse_message_type;
use serde::{Deserialize, Serialize};

use crate::corpus::parquet_error;
use crate::error::{Error, Result};
use crate::state::{Coverage, SaeSpec};
use crate::stats::{histogram_edges, Metrics, SaeStats};

/// The latents table's file name.
pub const LATENTS_FILE: &str = "latents.parquet";
/// The examples table's file name.
pub const EXAMPLES_FILE: &str = "examples.parquet";
/// The summary's file name.
pub const SUMMARY_FILE: &str = "summary.json";

/// Rows per Parquet row group.
const ROW_GROUP: usize = 1 << 16;

const LATENTS_SCHEMA: &str = "message latents {
    REQUIRED INT64 latent;
    REQUIRED INT64 count;
    REQUIRED DOUBLE density;
    REQUIRED FLOAT max;
    OPTIONAL DOUBLE mean;
    REQUIRED GROUP histogram (LIST) { REPEATED GROUP list { REQUIRED INT64 element; } }
}";

const EXAMPLES_SCHEMA: &str = "message examples {
    REQUIRED INT64 latent;
    REQUIRED INT64 rank;
    REQUIRED FLOAT value;
    REQUIRED INT64 doc;
    REQUIRED INT64 position;
    REQUIRED INT64 token_id;
    REQUIRED BYTE_ARRAY token (STRING);
    REQUIRED INT64 context_start;
    REQUIRED GROUP context_ids (LIST) { REPEATED GROUP list { REQUIRED INT64 element; } }
    REQUIRED GROUP context_tokens (LIST) { REPEATED GROUP list { REQUIRED BYTE_ARRAY element (STRING); } }
}";

/// One row of `latents.parquet`.
#[derive(Clone, Debug, PartialEq)]
pub struct LatentRow {
    /// The latent.
    pub latent: i64,
    /// Tokens where it fired.
    pub count: i64,
    /// `count / tokens`.
    pub density: f64,
    /// Its largest activation.
    pub max: f32,
    /// Its mean where it fired.
    pub mean: Option<f64>,
    /// Firing tokens per histogram bin.
    pub histogram: Vec<i64>,
}

/// One row of `examples.parquet`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExampleRow {
    /// The latent.
    pub latent: i64,
    /// 0 is the strongest.
    pub rank: i64,
    /// The activation.
    pub value: f32,
    /// The document's index in corpus order.
    pub doc: i64,
    /// The token's position, `<bos>` being 0.
    pub position: i64,
    /// The token.
    pub token_id: i64,
    /// Its text.
    pub token: String,
    /// The position of the context's first token.
    pub context_start: i64,
    /// The context's tokens.
    pub context_ids: Vec<i64>,
    /// Their texts.
    pub context_tokens: Vec<String>,
}

/// `summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The SAE.
    pub sae: SaeSpec,
    /// The model, as `--model` named it.
    pub model: String,
    /// Documents taken in.
    pub docs: usize,
    /// Tokens counted (`<bos>` only with `--include-bos`).
    pub tokens: u64,
    /// Which shards of how many.
    pub coverage: Coverage,
    /// Latents that fired at least once.
    pub latents_fired: usize,
    /// The metrics.
    #[serde(flatten)]
    pub metrics: Metrics,
    /// The histogram's inner edges (bin `b` lies between edges `b − 1` and `b`).
    pub histogram_edges: Vec<f64>,
}

/// Writes `latents.parquet`, `examples.parquet` and `summary.json` of one SAE into `dir`;
/// `token_text` gives a token's text.
pub fn write_outputs(
    dir: &Path,
    stats: &SaeStats,
    summary: &Summary,
    token_text: &dyn Fn(i64) -> String,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    write_latents(&dir.join(LATENTS_FILE), stats)?;
    write_examples(&dir.join(EXAMPLES_FILE), stats, token_text)?;
    let path = dir.join(SUMMARY_FILE);
    let json = serde_json::to_string_pretty(summary).map_err(|e| Error::Input(e.to_string()))?;
    std::fs::write(&path, json + "\n").map_err(Error::io(&path))
}

/// The summary of `stats` (see [`Summary`]).
pub fn summary(sae: &SaeSpec, model: &str, coverage: &Coverage, stats: &SaeStats) -> Summary {
    Summary {
        sae: sae.clone(),
        model: model.to_string(),
        docs: coverage.docs,
        tokens: stats.reconstruction.tokens,
        coverage: coverage.clone(),
        latents_fired: stats.count.iter().filter(|&&c| c > 0).count(),
        metrics: stats.metrics(),
        histogram_edges: histogram_edges(),
    }
}

struct Table {
    path: PathBuf,
    writer: SerializedFileWriter<File>,
}

impl Table {
    fn create(path: &Path, schema: &str) -> Result<Table> {
        let schema = Arc::new(parse_message_type(schema).map_err(|e| parquet_error(path, e))?);
        let properties = Arc::new(
            WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build(),
        );
        let file = File::create(path).map_err(Error::io(path))?;
        let writer = SerializedFileWriter::new(file, schema, properties)
            .map_err(|e| parquet_error(path, e))?;
        Ok(Table {
            path: path.to_path_buf(),
            writer,
        })
    }

    /// Writes one row group, a column at a time in schema order.
    fn row_group(&mut self, columns: Vec<Column>) -> Result<()> {
        let path = self.path.clone();
        let err = |e| parquet_error(&path, e);
        let mut group = self.writer.next_row_group().map_err(err)?;
        for column in columns {
            let mut writer = group
                .next_column()
                .map_err(err)?
                .ok_or_else(|| Error::Input("more columns than the schema has".into()))?;
            match column {
                Column::I64(v) => writer.typed::<Int64Type>().write_batch(&v, None, None),
                Column::F64(v) => writer.typed::<DoubleType>().write_batch(&v, None, None),
                Column::F32(v) => writer.typed::<FloatType>().write_batch(&v, None, None),
                Column::Text(v) => {
                    let v: Vec<ByteArray> = v
                        .into_iter()
                        .map(|t| ByteArray::from(t.into_bytes()))
                        .collect();
                    writer.typed::<ByteArrayType>().write_batch(&v, None, None)
                }
                Column::OptionalF64(v) => {
                    let defined: Vec<i16> = v.iter().map(|x| i16::from(x.is_some())).collect();
                    let values: Vec<f64> = v.into_iter().flatten().collect();
                    writer
                        .typed::<DoubleType>()
                        .write_batch(&values, Some(&defined), None)
                }
                Column::I64Lists(v) => {
                    let (values, def, rep) = levels(v);
                    writer
                        .typed::<Int64Type>()
                        .write_batch(&values, Some(&def), Some(&rep))
                }
                Column::TextLists(v) => {
                    let (values, def, rep) = levels(v);
                    let values: Vec<ByteArray> = values
                        .into_iter()
                        .map(|t| ByteArray::from(t.into_bytes()))
                        .collect();
                    writer
                        .typed::<ByteArrayType>()
                        .write_batch(&values, Some(&def), Some(&rep))
                }
            }
            .map_err(err)?;
            writer.close().map_err(err)?;
        }
        group.close().map_err(err)?;
        Ok(())
    }

    fn close(self) -> Result<()> {
        let path = self.path;
        self.writer.close().map_err(|e| parquet_error(&path, e))?;
        Ok(())
    }
}

enum Column {
    I64(Vec<i64>),
    F64(Vec<f64>),
    F32(Vec<f32>),
    Text(Vec<String>),
    OptionalF64(Vec<Option<f64>>),
    I64Lists(Vec<Vec<i64>>),
    TextLists(Vec<Vec<String>>),
}

/// A required list of required values, flattened with its levels: an empty list is one
/// undefined entry, each value after a list's first repeats at level 1.
fn levels<T>(lists: Vec<Vec<T>>) -> (Vec<T>, Vec<i16>, Vec<i16>) {
    let (mut values, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
    for list in lists {
        if list.is_empty() {
            def.push(0);
            rep.push(0);
        }
        for (i, value) in list.into_iter().enumerate() {
            values.push(value);
            def.push(1);
            rep.push(i16::from(i > 0));
        }
    }
    (values, def, rep)
}

fn write_latents(path: &Path, stats: &SaeStats) -> Result<()> {
    let tokens = stats.reconstruction.tokens as f64;
    let mut table = Table::create(path, LATENTS_SCHEMA)?;
    let d = stats.d_sae();
    let bins = stats.histogram.len() / d.max(1);
    for start in (0..d).step_by(ROW_GROUP) {
        let range = start..(start + ROW_GROUP).min(d);
        let density = |c: i64| if tokens > 0.0 { c as f64 / tokens } else { 0.0 };
        table.row_group(vec![
            Column::I64(range.clone().map(|i| i as i64).collect()),
            Column::I64(stats.count[range.clone()].to_vec()),
            Column::F64(range.clone().map(|i| density(stats.count[i])).collect()),
            Column::F32(stats.max[range.clone()].to_vec()),
            Column::OptionalF64(
                range
                    .clone()
                    .map(|i| (stats.count[i] > 0).then(|| stats.sum[i] / stats.count[i] as f64))
                    .collect(),
            ),
            Column::I64Lists(
                range
                    .map(|i| stats.histogram[i * bins..(i + 1) * bins].to_vec())
                    .collect(),
            ),
        ])?;
    }
    table.close()
}

fn write_examples(path: &Path, stats: &SaeStats, token_text: &dyn Fn(i64) -> String) -> Result<()> {
    let rows: Vec<(usize, usize, &crate::stats::Example)> = stats
        .top
        .iter()
        .enumerate()
        .flat_map(|(latent, best)| {
            best.iter()
                .enumerate()
                .map(move |(rank, e)| (latent, rank, e))
        })
        .collect();
    let mut table = Table::create(path, EXAMPLES_SCHEMA)?;
    for chunk in rows.chunks(ROW_GROUP) {
        let ints = |f: &dyn Fn(&(usize, usize, &crate::stats::Example)) -> i64| {
            Column::I64(chunk.iter().map(f).collect())
        };
        table.row_group(vec![
            ints(&|r| r.0 as i64),
            ints(&|r| r.1 as i64),
            Column::F32(chunk.iter().map(|r| r.2.value).collect()),
            ints(&|r| r.2.doc as i64),
            ints(&|r| r.2.position as i64),
            ints(&|r| r.2.token_id),
            Column::Text(chunk.iter().map(|r| token_text(r.2.token_id)).collect()),
            ints(&|r| r.2.context_start as i64),
            Column::I64Lists(chunk.iter().map(|r| r.2.context.clone()).collect()),
            Column::TextLists(
                chunk
                    .iter()
                    .map(|r| r.2.context.iter().map(|&id| token_text(id)).collect())
                    .collect(),
            ),
        ])?;
    }
    // An SAE none of whose latents fired still gets a (row-less) table.
    if rows.is_empty() {
        table.row_group(vec![
            Column::I64(vec![]),
            Column::I64(vec![]),
            Column::F32(vec![]),
            Column::I64(vec![]),
            Column::I64(vec![]),
            Column::I64(vec![]),
            Column::Text(vec![]),
            Column::I64(vec![]),
            Column::I64Lists(vec![]),
            Column::TextLists(vec![]),
        ])?;
    }
    table.close()
}

/// Reads `latents.parquet`.
pub fn read_latents(path: &Path) -> Result<Vec<LatentRow>> {
    read_rows(path, |row| {
        Ok(LatentRow {
            latent: row.long("latent")?,
            count: row.long("count")?,
            density: row.double("density")?,
            max: row.float("max")?,
            mean: row.optional_double("mean")?,
            histogram: row.longs("histogram")?,
        })
    })
}

/// Reads `examples.parquet`.
pub fn read_examples(path: &Path) -> Result<Vec<ExampleRow>> {
    read_rows(path, |row| {
        Ok(ExampleRow {
            latent: row.long("latent")?,
            rank: row.long("rank")?,
            value: row.float("value")?,
            doc: row.long("doc")?,
            position: row.long("position")?,
            token_id: row.long("token_id")?,
            token: row.text("token")?,
            context_start: row.long("context_start")?,
            context_ids: row.longs("context_ids")?,
            context_tokens: row.texts("context_tokens")?,
        })
    })
}

/// Reads `summary.json`.
pub fn read_summary(path: &Path) -> Result<Summary> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    serde_json::from_str(&text).map_err(|e| Error::State {
        path: path.to_path_buf(),
        message: format!("not a sweep summary: {e}"),
    })
}

fn read_rows<T>(
    path: &Path,
    convert: impl FnMut(&Fields<'_>) -> std::result::Result<T, String>,
) -> Result<Vec<T>> {
    crate::corpus::guarded(path, || read_rows_unguarded(path, convert))
}

fn read_rows_unguarded<T>(
    path: &Path,
    mut convert: impl FnMut(&Fields<'_>) -> std::result::Result<T, String>,
) -> Result<Vec<T>> {
    let reader = crate::corpus::parquet_reader(path)?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| parquet_error(path, e))?;
    rows.enumerate()
        .map(|(i, row)| {
            let row = row.map_err(|e| parquet_error(path, e))?;
            let fields = Fields(row.get_column_iter().collect());
            convert(&fields).map_err(|message| Error::Parquet {
                path: path.to_path_buf(),
                message: format!("row {i}: {message}"),
            })
        })
        .collect()
}

/// One row's fields by name.
struct Fields<'r>(Vec<(&'r String, &'r Field)>);

impl Fields<'_> {
    fn get(&self, name: &str) -> std::result::Result<&Field, String> {
        self.0
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, f)| *f)
            .ok_or_else(|| format!("no column `{name}`"))
    }

    fn long(&self, name: &str) -> std::result::Result<i64, String> {
        match self.get(name)? {
            Field::Long(v) => Ok(*v),
            other => Err(format!("`{name}` is {other:?}, not an int64")),
        }
    }

    fn double(&self, name: &str) -> std::result::Result<f64, String> {
        self.optional_double(name)?
            .ok_or_else(|| format!("`{name}` is null"))
    }

    fn optional_double(&self, name: &str) -> std::result::Result<Option<f64>, String> {
        match self.get(name)? {
            Field::Double(v) => Ok(Some(*v)),
            Field::Null => Ok(None),
            other => Err(format!("`{name}` is {other:?}, not a double")),
        }
    }

    fn float(&self, name: &str) -> std::result::Result<f32, String> {
        match self.get(name)? {
            Field::Float(v) => Ok(*v),
            other => Err(format!("`{name}` is {other:?}, not a float")),
        }
    }

    fn text(&self, name: &str) -> std::result::Result<String, String> {
        match self.get(name)? {
            Field::Str(v) => Ok(v.clone()),
            other => Err(format!("`{name}` is {other:?}, not a string")),
        }
    }

    fn list(&self, name: &str) -> std::result::Result<&parquet::record::List, String> {
        match self.get(name)? {
            Field::ListInternal(list) => Ok(list),
            other => Err(format!("`{name}` is {other:?}, not a list")),
        }
    }

    fn longs(&self, name: &str) -> std::result::Result<Vec<i64>, String> {
        let list = self.list(name)?;
        (0..list.len())
            .map(|i| list.get_long(i).map_err(|e| format!("`{name}`[{i}]: {e}")))
            .collect()
    }

    fn texts(&self, name: &str) -> std::result::Result<Vec<String>, String> {
        let list = self.list(name)?;
        (0..list.len())
            .map(|i| {
                list.get_string(i)
                    .cloned()
                    .map_err(|e| format!("`{name}`[{i}]: {e}"))
            })
            .collect()
    }
}
