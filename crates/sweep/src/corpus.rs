//! The corpus: text files read one document at a time, in a fixed order, so that a document's
//! index names the same text in every shard and every run.
//!
//! | file | a document is |
//! |---|---|
//! | `.txt` | a line (an empty line is a document with no tokens) |
//! | `.jsonl` | the string field `text_field` of a non-blank line's object |
//! | `.parquet` | the string column `text_field` of a row (what Hugging Face `datasets` saves) |
//! | a directory | its files of those kinds, by name, recursively; others are skipped |

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::RowAccessor;
use parquet::schema::types::Type;

use crate::error::{Error, Result};

/// The kinds of corpus file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One document a line.
    Text,
    /// One JSON object a line.
    JsonLines,
    /// A Parquet table.
    Parquet,
}

impl Format {
    /// The format a file's extension says, if it is one of the corpus formats.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "txt" => Some(Format::Text),
            "jsonl" => Some(Format::JsonLines),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }
}

/// One document: its index in corpus order and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// 0-based, over all files in corpus order.
    pub index: usize,
    /// The text.
    pub text: String,
}

/// The files of a corpus, in the order their documents are numbered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corpus {
    files: Vec<PathBuf>,
    text_field: String,
}

impl Corpus {
    /// The corpus of `paths` (files and directories, in the order given; a directory's files
    /// by name), reading `text_field` from JSON lines and Parquet.
    pub fn open(paths: &[PathBuf], text_field: &str) -> Result<Corpus> {
        let mut files = Vec::new();
        for path in paths {
            if path.is_dir() {
                let before = files.len();
                collect_dir(path, &mut files)?;
                if files.len() == before {
                    return Err(Error::Corpus {
                        path: path.clone(),
                        message: "the directory holds no .txt, .jsonl or .parquet file".into(),
                    });
                }
            } else if Format::of(path).is_none() {
                return Err(Error::Corpus {
                    path: path.clone(),
                    message: "not a corpus file: expected .txt, .jsonl, .parquet or a directory"
                        .into(),
                });
            } else if !path.is_file() {
                return Err(Error::Corpus {
                    path: path.clone(),
                    message: "no such file".into(),
                });
            } else {
                files.push(path.clone());
            }
        }
        if files.is_empty() {
            return Err(Error::Input("the corpus names no file".into()));
        }
        Ok(Corpus {
            files,
            text_field: text_field.to_string(),
        })
    }

    /// The files, in corpus order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The field or column that holds the text.
    pub fn text_field(&self) -> &str {
        &self.text_field
    }

    /// Every document in corpus order, read as they are asked for.
    pub fn documents(&self) -> Documents<'_> {
        Documents {
            corpus: self,
            file: 0,
            reader: None,
            next_index: 0,
        }
    }

    /// The number of documents (reads every text file once; Parquet from its footer).
    pub fn count(&self) -> Result<usize> {
        let mut total = 0usize;
        for path in &self.files {
            let documents = match Format::of(path) {
                Some(Format::Parquet) => {
                    let (reader, _) = footer_reader(path)?;
                    let rows = reader.metadata().file_metadata().num_rows();
                    usize::try_from(rows).map_err(|_| Error::Parquet {
                        path: path.to_path_buf(),
                        message: format!("its footer claims {rows} rows"),
                    })?
                }
                _ => FileDocuments::open(path, &self.text_field)?.count_lines()?,
            };
            total = total.saturating_add(documents);
        }
        Ok(total)
    }
}

fn collect_dir(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths = entries
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    paths.sort();
    for path in paths {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_dir(&path, files)?;
        } else if Format::of(&path).is_some() {
            files.push(path);
        }
    }
    Ok(())
}

/// The documents of a [`Corpus`], in order.
pub struct Documents<'c> {
    corpus: &'c Corpus,
    file: usize,
    reader: Option<FileDocuments>,
    next_index: usize,
}

impl Iterator for Documents<'_> {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Result<Document>> {
        loop {
            if self.reader.is_none() {
                let path = self.corpus.files.get(self.file)?;
                self.file += 1;
                match FileDocuments::open(path, &self.corpus.text_field) {
                    Ok(reader) => self.reader = Some(reader),
                    Err(e) => return Some(Err(e)),
                }
            }
            let reader = self.reader.as_mut()?;
            match reader.next_text() {
                Ok(Some(text)) => {
                    let index = self.next_index;
                    self.next_index += 1;
                    return Some(Ok(Document { index, text }));
                }
                Ok(None) => self.reader = None,
                Err(e) => {
                    // One error ends the corpus: a later call does not skip past it.
                    self.file = self.corpus.files.len();
                    self.reader = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The documents of one file.
enum FileDocuments {
    Lines {
        path: PathBuf,
        lines: std::io::Lines<BufReader<File>>,
        line: usize,
        json_field: Option<String>,
    },
    Parquet {
        path: PathBuf,
        rows: parquet::record::reader::RowIter<'static>,
        row: usize,
    },
}

impl FileDocuments {
    fn open(path: &Path, text_field: &str) -> Result<FileDocuments> {
        let format = Format::of(path).ok_or_else(|| Error::Corpus {
            path: path.to_path_buf(),
            message: "not a corpus file".into(),
        })?;
        match format {
            Format::Text | Format::JsonLines => {
                let file = File::open(path).map_err(|source| Error::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
                Ok(FileDocuments::Lines {
                    path: path.to_path_buf(),
                    lines: BufReader::new(file).lines(),
                    line: 0,
                    json_field: (format == Format::JsonLines).then(|| text_field.to_string()),
                })
            }
            Format::Parquet => {
                let reader = parquet_reader(path)?;
                let projection = text_column(&reader, path, text_field)?;
                let rows = guarded(path, || {
                    parquet::record::reader::RowIter::from_file_into(Box::new(reader))
                        .project(Some(projection))
                        .map_err(|e| parquet_error(path, e))
                })?;
                Ok(FileDocuments::Parquet {
                    path: path.to_path_buf(),
                    rows,
                    row: 0,
                })
            }
        }
    }

    fn next_text(&mut self) -> Result<Option<String>> {
        match self {
            FileDocuments::Lines {
                path,
                lines,
                line,
                json_field,
            } => loop {
                let Some(next) = lines.next() else {
                    return Ok(None);
                };
                *line += 1;
                let text = next.map_err(|e| Error::Corpus {
                    path: path.clone(),
                    message: format!("line {line}: {e}"),
                })?;
                let Some(field) = json_field else {
                    return Ok(Some(text));
                };
                if text.trim().is_empty() {
                    continue;
                }
                return json_text(&text, field)
                    .map(Some)
                    .map_err(|message| Error::Corpus {
                        path: path.clone(),
                        message: format!("line {line}: {message}"),
                    });
            },
            FileDocuments::Parquet { path, rows, row } => {
                let Some(next) = guarded(path, || Ok(rows.next()))? else {
                    return Ok(None);
                };
                let at = *row;
                *row += 1;
                let record = next.map_err(|e| parquet_error(path, e))?;
                match record.get_string(0) {
                    Ok(text) => Ok(Some(text.clone())),
                    Err(_) => Err(Error::Corpus {
                        path: path.clone(),
                        message: format!("row {at}: the text is null or not a string"),
                    }),
                }
            }
        }
    }

    fn count_lines(mut self) -> Result<usize> {
        let mut n = 0;
        while self.next_text()?.is_some() {
            n += 1;
        }
        Ok(n)
    }
}

/// The string `field` of one JSON line, or what is wrong with it.
fn json_text(line: &str, field: &str) -> std::result::Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| "not a JSON object".to_string())?;
    match object.get(field) {
        Some(serde_json::Value::String(text)) => Ok(text.clone()),
        Some(other) => Err(format!(
            "`{field}` is not a string but {}",
            json_kind(other)
        )),
        None => Err(format!(
            "no `{field}` field (give the text's field with --text-field)"
        )),
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The one way scope opens a Parquet file to read its rows: [`footer_reader`], then every
/// page header checked before the reader reads a page ([`crate::pages`]).
pub(crate) fn parquet_reader(path: &Path) -> Result<SerializedFileReader<File>> {
    let (reader, mut file) = footer_reader(path)?;
    crate::pages::check_pages(&mut file, reader.metadata()).map_err(|message| Error::Parquet {
        path: path.to_path_buf(),
        message,
    })?;
    Ok(reader)
}

/// A Parquet file's reader for its footer alone (no page is read): the footer read strictly
/// and its schema checked first ([`crate::footer`]), then the reader behind the boundary that
/// turns its panics into errors. Also the file, for checks of its pages.
fn footer_reader(path: &Path) -> Result<(SerializedFileReader<File>, File)> {
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_error)?;
    crate::footer::check_schema(&mut file).map_err(|message| Error::Parquet {
        path: path.to_path_buf(),
        message,
    })?;
    let for_reader = file.try_clone().map_err(io_error)?;
    let reader = guarded(path, || {
        SerializedFileReader::new(for_reader).map_err(|e| parquet_error(path, e))
    })?;
    Ok((reader, file))
}

/// `read()` behind the boundary that turns the Parquet reader's panics into an error naming
/// `path` ([`gemma_model::guard`]).
pub(crate) fn guarded<T>(path: &Path, read: impl FnOnce() -> Result<T>) -> Result<T> {
    gemma_model::guard::catching_panics(read).unwrap_or_else(|panic| {
        Err(Error::Parquet {
            path: path.to_path_buf(),
            message: format!("the Parquet reader failed on it ({panic})"),
        })
    })
}

/// The schema with only the text column, for projection.
fn text_column(reader: &SerializedFileReader<File>, path: &Path, field: &str) -> Result<Type> {
    let schema = reader.metadata().file_metadata().schema();
    let columns = schema.get_fields();
    let Some(column) = columns.iter().find(|c| c.name() == field) else {
        let names: Vec<&str> = columns.iter().map(|c| c.name()).collect();
        return Err(Error::Corpus {
            path: path.to_path_buf(),
            message: format!(
                "no column `{field}` (it has {}); give the text's column with --text-field",
                names.join(", ")
            ),
        });
    };
    if !column.is_primitive() {
        return Err(Error::Corpus {
            path: path.to_path_buf(),
            message: format!("column `{field}` is not a string column"),
        });
    }
    Type::group_type_builder(schema.name())
        .with_fields(vec![column.clone()])
        .build()
        .map_err(|e| parquet_error(path, e))
}

pub(crate) fn parquet_error(path: &Path, error: parquet::errors::ParquetError) -> Error {
    let message = error.to_string();
    let message = match message.split_once("Disabled feature at compile time: ") {
        Some((_, codec)) => format!(
            "compressed with {codec}, which scope does not read (it reads snappy, gzip and \
             uncompressed files); rewrite it, e.g. pyarrow's \
             `pq.write_table(pq.read_table(path), new_path, compression=\"snappy\")`"
        ),
        None => message,
    };
    Error::Parquet {
        path: path.to_path_buf(),
        message,
    }
}
