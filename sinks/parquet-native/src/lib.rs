//! The Parquet sink's native engine: a Node addon over arrow-rs's public APIs.
//!
//! One `ParquetFileWriter` is one Parquet file. JS hands it each batch's Arrow IPC stream
//! as the host already holds it; the bytes are copied once into Rust memory and queued
//! (bounded) to the file's own thread, which decodes them (arrow-ipc, zero-copy over that
//! copy), appends the constant lineage columns, and encodes them with parquet's
//! `ArrowColumnWriter`s: one writer per leaf column, spread over up to
//! `available_parallelism` threads, so that one file is encoded on every core. Row groups
//! are assembled with `SerializedRowGroupWriter` in column order; statistics, page indexes
//! and the `ARROW:schema` key are parquet's own. Each call answers with a promise, settled
//! by the file's thread once the batch is encoded: the caller's awaits are the
//! backpressure. Nothing here panics across the boundary: a panic inside arrow-rs (a
//! malformed frame) is caught and becomes the file's error.

use std::fs::File;
use std::os::fd::{BorrowedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;

use arrow_array::{make_array, Array, ArrayRef, Int64Array, RecordBatch, UInt64Array};
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use napi::bindgen_prelude::Uint8Array;
use napi::{Env, Error, JsDeferred, JsObject, Result, Status};
use napi_derive::napi;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory, ArrowWriterOptions};
use parquet::arrow::ArrowWriter;
use parquet::basic::{BrotliLevel, Compression, Encoding, GzipLevel, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

const LINEAGE_JOB_ID: &str = "_job_id";
const LINEAGE_FILE_VERSION_ID: &str = "_file_version_id";
/// The schema key our guest shim names the topic with; a file never carries it.
const TOPIC_METADATA_KEY: &str = "casparian.topic";
/// Batches queued for the file's thread; the sink keeps fewer in flight, so a full queue is a caller bug.
const QUEUE_DEPTH: usize = 8;
/// Below this many rows a batch is encoded on the file's thread alone: starting threads would cost more.
const PARALLEL_MIN_ROWS: usize = 4096;

/// A key-value pair of the file's footer.
#[napi(object)]
pub struct MetadataEntry {
  pub key: String,
  pub value: String,
}

/// What the writer needs besides the data (sinks/parquet-settings.ts WriterSettings).
#[napi(object)]
pub struct WriterOptions {
  /// snappy, zstd, gzip, brotli, lz4, lz4_raw, uncompressed, none.
  pub compression: String,
  pub row_group_size: u32,
  pub metadata: Vec<MetadataEntry>,
  /// Columns written without dictionary encoding.
  pub plain_columns: Vec<String>,
  pub created_by: String,
  /// The lineage values, as decimal text (u64 and i64 do not fit a JS number).
  pub job_id: String,
  pub file_version_id: String,
  /// Encoding threads for this file; 0 = one per core.
  pub threads: u32,
}

/// What a finished file reports.
#[napi(object)]
pub struct FileReport {
  pub bytes: f64,
  pub rows: f64,
  pub row_groups: u32,
  pub threads: u32,
}

type Deferred<T> = JsDeferred<T, Box<dyn FnOnce(Env) -> Result<T> + Send>>;

enum Command {
  Write(Vec<u8>, Deferred<()>),
  Finish(Deferred<FileReport>),
  Abort(Deferred<()>),
}

/// Version of the parquet crate this addon was built with (its `created_by` names it).
#[napi]
pub fn engine_version() -> String {
  "parquet-rs 60.1.0".to_string()
}

#[napi]
pub struct ParquetFileWriter {
  commands: Option<SyncSender<Command>>,
}

#[napi]
impl ParquetFileWriter {
  /// Starts writing into `fd` (the caller keeps and closes its own descriptor; this one is
  /// a duplicate), in the schema of `schema_ipc` (an IPC stream with at least the schema
  /// message) plus the lineage columns.
  #[napi(constructor)]
  pub fn new(fd: i32, schema_ipc: Uint8Array, options: WriterOptions) -> Result<Self> {
    let started = catch_unwind(AssertUnwindSafe(|| -> std::result::Result<SyncSender<Command>, String> {
      let data_schema = decode_schema(&schema_ipc)?;
      let file = duplicate(fd)?;
      let mut state = FileState::create(file, data_schema, &options)?;
      let (commands, queue) = sync_channel::<Command>(QUEUE_DEPTH);
      on_writer_thread(Box::new(move || state.serve(queue)))?;
      Ok(commands)
    }));
    match started {
      Ok(Ok(commands)) => Ok(Self { commands: Some(commands) }),
      Ok(Err(message)) => Err(Error::new(Status::GenericFailure, message)),
      Err(panic) => Err(Error::new(Status::GenericFailure, format!("arrow-rs panicked: {}", panic_text(&panic)))),
    }
  }

  /// Queues one Arrow IPC stream (copied now: the caller may reuse `ipc` once this returns);
  /// resolves once its rows are encoded.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn write(&self, env: Env, ipc: Uint8Array) -> Result<JsObject> {
    let (deferred, promise) = env.create_deferred::<(), Box<dyn FnOnce(Env) -> Result<()> + Send>>()?;
    self.send(Command::Write(ipc.to_vec(), deferred))?;
    Ok(promise)
  }

  /// Writes the last row group and the footer, fsyncs and closes the file.
  #[napi(ts_return_type = "Promise<FileReport>")]
  pub fn finish(&mut self, env: Env) -> Result<JsObject> {
    let (deferred, promise) = env.create_deferred::<FileReport, Box<dyn FnOnce(Env) -> Result<FileReport> + Send>>()?;
    self.send(Command::Finish(deferred))?;
    self.commands = None;
    Ok(promise)
  }

  /// Stops writing and closes the file (the caller removes it); resolves once it is closed.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn abort(&mut self, env: Env) -> Result<JsObject> {
    let (deferred, promise) = env.create_deferred::<(), Box<dyn FnOnce(Env) -> Result<()> + Send>>()?;
    match self.commands.take() {
      Some(commands) => {
        if let Err(err) = commands.send(Command::Abort(deferred)) {
          // The thread has already ended (after a failure): the file is closed.
          if let Command::Abort(deferred) = err.0 {
            deferred.resolve(Box::new(|_| Ok(())));
          }
        }
      }
      None => deferred.resolve(Box::new(|_| Ok(()))),
    }
    Ok(promise)
  }

  fn send(&self, command: Command) -> Result<()> {
    let Some(commands) = &self.commands else {
      return Err(Error::new(Status::GenericFailure, "the Parquet file is already finished or aborted".to_string()));
    };
    match commands.try_send(command) {
      Ok(()) => Ok(()),
      Err(TrySendError::Full(_)) => Err(Error::new(Status::GenericFailure, format!("more than {QUEUE_DEPTH} batches in flight for one Parquet file"))),
      Err(TrySendError::Disconnected(command)) => {
        // Only after a panic that escaped the thread's own guard: answer instead of hanging.
        reject_command(command, "the Parquet writer thread has stopped".to_string());
        Ok(())
      }
    }
  }
}

fn reject_command(command: Command, message: String) {
  let error = Error::new(Status::GenericFailure, message);
  match command {
    Command::Write(_, d) => d.reject(error),
    Command::Finish(d) => d.reject(error),
    Command::Abort(d) => d.resolve(Box::new(|_| Ok(()))),
  }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
  if let Some(s) = panic.downcast_ref::<&str>() {
    (*s).to_string()
  } else if let Some(s) = panic.downcast_ref::<String>() {
    s.clone()
  } else {
    "unknown panic".to_string()
  }
}

/// An OS error's message with its errno name in front (ENOSPC, EACCES...), which the JS
/// side turns into a hint (core/kernel/errors.ts systemErrorHint).
fn describe(error: impl std::fmt::Display) -> String {
  let text = error.to_string();
  let code = text.split("os error ").nth(1).and_then(|rest| rest.trim_end_matches(|c: char| !c.is_ascii_digit()).parse::<i32>().ok());
  let name = match code {
    Some(28) => Some("ENOSPC"),
    Some(122) => Some("EDQUOT"),
    Some(13) => Some("EACCES"),
    Some(1) => Some("EPERM"),
    Some(30) => Some("EROFS"),
    Some(5) => Some("EIO"),
    _ => None,
  };
  match name {
    Some(name) => format!("{name}: {text}"),
    None => text,
  }
}

fn duplicate(fd: RawFd) -> std::result::Result<File, String> {
  if fd < 0 {
    return Err(format!("invalid file descriptor {fd}"));
  }
  // SAFETY: the caller holds `fd` open for the duration of this call; we only duplicate it.
  let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
  borrowed.try_clone_to_owned().map(File::from).map_err(|e| describe(format!("cannot duplicate the staging file's descriptor: {e}")))
}

/// Every record batch of one IPC stream, decoded over `bytes` without copying them again.
fn decode_stream(bytes: Vec<u8>) -> std::result::Result<(Option<SchemaRef>, Vec<RecordBatch>), String> {
  let mut decoder = StreamDecoder::new();
  let mut buffer = Buffer::from_vec(bytes);
  let mut batches = Vec::new();
  while !buffer.is_empty() {
    match decoder.decode(&mut buffer) {
      Ok(Some(batch)) => batches.push(batch),
      Ok(None) => {}
      Err(e) => return Err(format!("malformed Arrow IPC stream: {e}")),
    }
  }
  decoder.finish().map_err(|e| format!("malformed Arrow IPC stream: {e}"))?;
  Ok((decoder.schema(), batches))
}

fn decode_schema(ipc: &[u8]) -> std::result::Result<Schema, String> {
  let (schema, _) = decode_stream(ipc.to_vec())?;
  let schema = schema.ok_or("the schema stream has no schema message")?;
  let mut metadata = schema.metadata().clone();
  metadata.remove(TOPIC_METADATA_KEY);
  Ok(Schema::new_with_metadata(schema.fields().clone(), metadata))
}

fn compression(name: &str) -> std::result::Result<Compression, String> {
  Ok(match name {
    "snappy" => Compression::SNAPPY,
    "zstd" => Compression::ZSTD(ZstdLevel::default()),
    "gzip" => Compression::GZIP(GzipLevel::default()),
    "brotli" => Compression::BROTLI(BrotliLevel::default()),
    "lz4" | "lz4_raw" => Compression::LZ4_RAW,
    "uncompressed" | "none" => Compression::UNCOMPRESSED,
    other => return Err(format!("unknown compression {other:?}")),
  })
}

fn properties(options: &WriterOptions) -> std::result::Result<WriterProperties, String> {
  let metadata = options.metadata.iter().map(|e| KeyValue::new(e.key.clone(), e.value.clone())).collect();
  let mut builder = WriterProperties::builder()
    .set_compression(compression(&options.compression)?)
    .set_key_value_metadata(Some(metadata))
    .set_created_by(options.created_by.clone());
  for column in &options.plain_columns {
    builder = builder.set_column_dictionary_enabled(ColumnPath::from(column.as_str()), false);
  }
  // Lineage columns hold one value: delta encoding stores it in a few bytes without
  // hashing every row into a dictionary first.
  for column in [LINEAGE_JOB_ID, LINEAGE_FILE_VERSION_ID] {
    builder = builder
      .set_column_dictionary_enabled(ColumnPath::from(column), false)
      .set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
  }
  Ok(builder.build())
}

/// The columns of one row group being encoded, in groups that threads take one each.
struct RowGroup {
  /// (leaf index, writer), per thread.
  shares: Vec<Vec<(usize, ArrowColumnWriter)>>,
  rows: usize,
}

struct FileState {
  writer: Option<SerializedFileWriter<File>>,
  factory: ArrowRowGroupWriterFactory,
  schema: SchemaRef,
  row_group_size: usize,
  /// Which thread encodes each leaf column: decided once, from the first batch's sizes.
  assignment: Option<Vec<usize>>,
  threads: usize,
  group: Option<RowGroup>,
  row_groups: u32,
  rows: u64,
  job_ids: UInt64Array,
  file_version_ids: Int64Array,
  job_id: u64,
  file_version_id: i64,
}

impl FileState {
  fn create(file: File, data_schema: Schema, options: &WriterOptions) -> std::result::Result<Self, String> {
    let job_id: u64 = options.job_id.parse().map_err(|_| format!("job id {:?} is not a u64", options.job_id))?;
    let file_version_id: i64 = options.file_version_id.parse().map_err(|_| format!("file version id {:?} is not an i64", options.file_version_id))?;
    let mut fields: Vec<Arc<Field>> = data_schema.fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(LINEAGE_JOB_ID, DataType::UInt64, false)));
    fields.push(Arc::new(Field::new(LINEAGE_FILE_VERSION_ID, DataType::Int64, false)));
    let schema = Arc::new(Schema::new_with_metadata(fields, data_schema.metadata().clone()));
    let options_ = ArrowWriterOptions::new().with_properties(properties(options)?);
    let arrow_writer = ArrowWriter::try_new_with_options(file, schema.clone(), options_).map_err(describe)?;
    let (writer, factory) = arrow_writer.into_serialized_writer().map_err(describe)?;
    let leaves = writer.schema_descr().num_columns();
    let wanted = if options.threads == 0 { cores() } else { options.threads as usize };
    Ok(Self {
      writer: Some(writer),
      factory,
      schema,
      row_group_size: options.row_group_size.max(1) as usize,
      assignment: None,
      threads: wanted.clamp(1, leaves.max(1)),
      group: None,
      row_groups: 0,
      rows: 0,
      job_ids: UInt64Array::from_value(job_id, 0),
      file_version_ids: Int64Array::from_value(file_version_id, 0),
      job_id,
      file_version_id,
    })
  }

  fn serve(&mut self, queue: Receiver<Command>) {
    let mut failure: Option<String> = None;
    for command in queue {
      match command {
        Command::Write(bytes, deferred) => {
          if failure.is_none() {
            if let Err(message) = guarded(|| self.write_stream(bytes)) {
              failure = Some(message);
              self.writer = None; // closes the file; the caller removes it
            }
          }
          match &failure {
            None => deferred.resolve(Box::new(|_| Ok(()))),
            Some(message) => deferred.reject(Error::new(Status::GenericFailure, message.clone())),
          }
        }
        Command::Finish(deferred) => {
          let result = match &failure {
            Some(message) => Err(message.clone()),
            None => guarded(|| self.finish()),
          };
          match result {
            Ok(report) => deferred.resolve(Box::new(move |_| Ok(report))),
            Err(message) => deferred.reject(Error::new(Status::GenericFailure, message)),
          }
          return;
        }
        Command::Abort(deferred) => {
          self.writer = None;
          self.group = None;
          deferred.resolve(Box::new(|_| Ok(())));
          return;
        }
      }
    }
  }

  fn write_stream(&mut self, bytes: Vec<u8>) -> std::result::Result<(), String> {
    let (_, batches) = decode_stream(bytes)?;
    for batch in batches {
      let batch = self.conform(batch)?;
      let mut offset = 0;
      while offset < batch.num_rows() {
        let filled = self.group.as_ref().map_or(0, |g| g.rows);
        let take = (self.row_group_size - filled).min(batch.num_rows() - offset);
        let piece = if offset == 0 && take == batch.num_rows() { batch.clone() } else { batch.slice(offset, take) };
        self.encode(&piece)?;
        offset += take;
        if self.group.as_ref().is_some_and(|g| g.rows >= self.row_group_size) {
          self.flush_group()?;
        }
      }
    }
    Ok(())
  }

  /// The batch in the file's schema, lineage appended. The sink has checked that its
  /// columns conform (sinks/schema.ts conformsTo); nested field names may still differ.
  fn conform(&mut self, batch: RecordBatch) -> std::result::Result<RecordBatch, String> {
    let data_fields = self.schema.fields().len() - 2;
    if batch.num_columns() != data_fields {
      return Err(format!("batch has {} columns, the file has {}", batch.num_columns(), data_fields));
    }
    let n = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(data_fields + 2);
    for (column, field) in batch.columns().iter().zip(self.schema.fields().iter()) {
      if column.data_type() == field.data_type() {
        columns.push(column.clone());
      } else if column.data_type().equals_datatype(field.data_type()) {
        let data = column.to_data().into_builder().data_type(field.data_type().clone()).build().map_err(describe)?;
        columns.push(make_array(data));
      } else {
        return Err(format!("column {:?} is {} in this batch, {} in the file", field.name(), column.data_type(), field.data_type()));
      }
    }
    if self.job_ids.len() < n {
      self.job_ids = UInt64Array::from_value(self.job_id, n);
      self.file_version_ids = Int64Array::from_value(self.file_version_id, n);
    }
    columns.push(Arc::new(self.job_ids.slice(0, n)));
    columns.push(Arc::new(self.file_version_ids.slice(0, n)));
    RecordBatch::try_new(self.schema.clone(), columns).map_err(describe)
  }

  fn encode(&mut self, batch: &RecordBatch) -> std::result::Result<(), String> {
    let mut leaves: Vec<ArrowLeafColumn> = Vec::new();
    let mut weights: Vec<usize> = Vec::new();
    for (field, column) in self.schema.fields().iter().zip(batch.columns()) {
      let parts = compute_leaves(field, column).map_err(describe)?;
      let share = column.get_array_memory_size() / parts.len().max(1);
      weights.extend(std::iter::repeat(share.max(1)).take(parts.len()));
      leaves.extend(parts);
    }
    if self.assignment.is_none() {
      self.assignment = Some(balance(&weights, self.threads));
    }
    if self.group.is_none() {
      let writers = self.factory.create_column_writers(self.row_groups as usize).map_err(describe)?;
      let assignment = self.assignment.as_ref().unwrap();
      let mut shares: Vec<Vec<(usize, ArrowColumnWriter)>> = (0..self.threads).map(|_| Vec::new()).collect();
      for (index, writer) in writers.into_iter().enumerate() {
        shares[assignment[index]].push((index, writer));
      }
      self.group = Some(RowGroup { shares, rows: 0 });
    }
    let group = self.group.as_mut().unwrap();
    let leaves = &leaves;
    let encode_share = |share: &mut Vec<(usize, ArrowColumnWriter)>| -> parquet::errors::Result<()> {
      for (index, writer) in share.iter_mut() {
        writer.write(&leaves[*index])?;
      }
      Ok(())
    };
    if batch.num_rows() < PARALLEL_MIN_ROWS || group.shares.len() == 1 {
      for share in group.shares.iter_mut() {
        encode_share(share).map_err(describe)?;
      }
    } else {
      in_parallel(&mut group.shares, |share| encode_share(share))?;
    }
    group.rows += batch.num_rows();
    Ok(())
  }

  fn flush_group(&mut self) -> std::result::Result<(), String> {
    let Some(mut group) = self.group.take() else { return Ok(()) };
    let mut chunks: Vec<(usize, ArrowColumnChunk)> = Vec::new();
    let close_share = |share: &mut Vec<(usize, ArrowColumnWriter)>| {
      std::mem::take(share).into_iter().map(|(index, writer)| writer.close().map(|chunk| (index, chunk))).collect::<parquet::errors::Result<Vec<_>>>()
    };
    // A small row group closes on this thread alone, as it was encoded (see encode): a thread
    // started per file to close a few pages would cost more than the pages.
    let closed = if group.rows < PARALLEL_MIN_ROWS || group.shares.len() == 1 {
      group.shares.iter_mut().map(|share| close_share(share).map_err(describe)).collect::<std::result::Result<Vec<_>, String>>()?
    } else {
      in_parallel(&mut group.shares, close_share)?
    };
    for part in closed {
      chunks.extend(part);
    }
    chunks.sort_by_key(|(index, _)| *index);
    let writer = self.writer.as_mut().ok_or("the Parquet file is closed")?;
    let mut row_group = writer.next_row_group().map_err(describe)?;
    for (_, chunk) in chunks {
      chunk.append_to_row_group(&mut row_group).map_err(describe)?;
    }
    row_group.close().map_err(describe)?;
    self.row_groups += 1;
    self.rows += group.rows as u64;
    Ok(())
  }

  fn finish(&mut self) -> std::result::Result<FileReport, String> {
    self.flush_group()?;
    let mut writer = self.writer.take().ok_or("the Parquet file is closed")?;
    writer.finish().map_err(describe)?;
    let bytes = writer.bytes_written();
    writer.inner().sync_all().map_err(|e| describe(format!("fsync: {e}")))?;
    Ok(FileReport { bytes: bytes as f64, rows: self.rows as f64, row_groups: self.row_groups, threads: self.threads as u32 })
  }
}

/// A file's whole life on its writer thread.
type FileTask = Box<dyn FnOnce() + Send>;

/// Writer threads whose file is done, kept for the next files: a file is often a few rows,
/// and starting a thread per file (a clone, a new stack, its affinity and cgroup quota
/// read again) cost more than writing them.
const IDLE_WRITERS: usize = 4;
static IDLE: Mutex<Vec<SyncSender<FileTask>>> = Mutex::new(Vec::new());

/// Runs `task` on an idle writer thread, or on a new one when none is idle.
fn on_writer_thread(task: FileTask) -> std::result::Result<(), String> {
  let mut task = task;
  loop {
    let idle = IDLE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
    let Some(thread) = idle else { break };
    match thread.send(task) {
      Ok(()) => return Ok(()),
      // That thread is gone (it cannot be, short of an abort): try the next.
      Err(returned) => task = returned.0,
    }
  }
  let (me, tasks) = sync_channel::<FileTask>(1);
  me.send(task).map_err(|_| "cannot queue the Parquet writer's first file".to_string())?;
  thread::Builder::new()
    .name("casparian-parquet".into())
    .spawn(move || writer_thread(me, tasks))
    .map_err(|e| format!("cannot start the Parquet writer thread: {e}"))?;
  Ok(())
}

/// Serves files one after another; after each, offers itself for the next, or ends when enough threads are idle.
fn writer_thread(me: SyncSender<FileTask>, tasks: Receiver<FileTask>) {
  while let Ok(task) = tasks.recv() {
    // FileState::serve guards its own work; this keeps the thread alive if anything else panics.
    let _ = catch_unwind(AssertUnwindSafe(task));
    let mut idle = IDLE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if idle.len() >= IDLE_WRITERS {
      return;
    }
    idle.push(me.clone());
  }
}

/// The cores this process may use, asked once: the standard library reads the affinity mask
/// and the cgroup's CPU quota (a few system calls and files) on every call.
fn cores() -> usize {
  static CORES: OnceLock<usize> = OnceLock::new();
  *CORES.get_or_init(|| thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Runs `work` on every share at once, the first on this thread, the others on scoped threads.
fn in_parallel<T: Send>(
  shares: &mut [Vec<(usize, ArrowColumnWriter)>],
  work: impl Fn(&mut Vec<(usize, ArrowColumnWriter)>) -> parquet::errors::Result<T> + Sync,
) -> std::result::Result<Vec<T>, String> {
  let results: Vec<thread::Result<parquet::errors::Result<T>>> = thread::scope(|scope| {
    let mut shares = shares.iter_mut();
    let first = shares.next();
    let work = &work;
    let handles: Vec<_> = shares.map(|share| scope.spawn(move || work(share))).collect();
    let mut results = Vec::with_capacity(handles.len() + 1);
    if let Some(share) = first {
      results.push(catch_unwind(AssertUnwindSafe(|| work(share))));
    }
    results.extend(handles.into_iter().map(|h| h.join()));
    results
  });
  let mut out = Vec::with_capacity(results.len());
  for result in results {
    match result {
      Ok(Ok(value)) => out.push(value),
      Ok(Err(e)) => return Err(describe(e)),
      Err(panic) => return Err(format!("arrow-rs panicked: {}", panic_text(&panic))),
    }
  }
  Ok(out)
}

/// Leaf columns spread over `threads` groups of about equal weight (largest first into the lightest).
fn balance(weights: &[usize], threads: usize) -> Vec<usize> {
  let mut order: Vec<usize> = (0..weights.len()).collect();
  order.sort_by_key(|&i| std::cmp::Reverse(weights[i]));
  let mut load = vec![0usize; threads.max(1)];
  let mut assignment = vec![0usize; weights.len()];
  for i in order {
    let lightest = (0..load.len()).min_by_key(|&t| load[t]).unwrap_or(0);
    assignment[i] = lightest;
    load[lightest] += weights[i];
  }
  assignment
}

/// `work`, with a panic turned into an error.
fn guarded<T>(work: impl FnOnce() -> std::result::Result<T, String>) -> std::result::Result<T, String> {
  match catch_unwind(AssertUnwindSafe(work)) {
    Ok(result) => result,
    Err(panic) => Err(format!("arrow-rs panicked: {}", panic_text(&panic))),
  }
}
