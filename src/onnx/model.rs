//! Loading and saving ONNX models: protobuf decoding with one clear error per kind of bad file,
//! external tensor data (read next to the model, written next to the output), atomic writes.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use prost::Message;

use crate::onnx::tensor;
use crate::proto::tensor_proto::DataLocation;
use crate::proto::{GraphProto, ModelProto, StringStringEntryProto, TensorProto};

/// Protobuf's hard limit for one message; larger models must keep their tensors outside.
pub const PROTOBUF_LIMIT: usize = i32::MAX as usize;

/// A model as read from disk: the protobuf, and the folder its external data is relative to.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    pub proto: ModelProto,
    pub path: PathBuf,
    pub base_dir: PathBuf,
}

/// Reads and decodes `path`, refusing anything that is not an ONNX model with a graph.
pub fn load(path: &Path) -> Result<OnnxModel> {
    let shown = path.display();
    let meta = fs::metadata(path).with_context(|| format!("cannot read model file {shown}"))?;
    ensure!(
        !meta.is_dir(),
        "{shown} is a directory, expected an ONNX model file"
    );
    let bytes = fs::read(path).with_context(|| format!("cannot read model file {shown}"))?;
    let proto = decode(&bytes).with_context(|| format!("cannot load {shown}"))?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base_dir = if base_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base_dir
    };
    Ok(OnnxModel {
        proto,
        path: path.to_path_buf(),
        base_dir,
    })
}

/// Decodes model bytes and checks the minimum that makes them an ONNX model.
pub fn decode(bytes: &[u8]) -> Result<ModelProto> {
    ensure!(
        !bytes.is_empty(),
        "the file is empty, expected an ONNX model"
    );
    // prost checks every length against the bytes left before allocating, so a lying length
    // field gives an error here rather than a huge allocation.
    let proto = ModelProto::decode(bytes).map_err(|e| {
        anyhow::anyhow!("not an ONNX model (protobuf decoding failed: {e}); the file may be truncated or of another format")
    })?;
    let ir = proto.ir_version.unwrap_or(0);
    ensure!(
        ir > 0,
        "not an ONNX model: no `ir_version` (a protobuf of another kind, or not a protobuf at all)"
    );
    ensure!(
        proto.graph.is_some(),
        "the model (IR version {ir}) has no graph"
    );
    Ok(proto)
}

impl OnnxModel {
    pub fn graph(&self) -> &GraphProto {
        self.proto.graph.as_ref().expect("checked at load")
    }

    pub fn graph_mut(&mut self) -> &mut GraphProto {
        self.proto.graph.as_mut().expect("checked at load")
    }

    /// Opset of the default (`ai.onnx`) domain; IR 1–2 models had no opset list and mean 1.
    pub fn default_opset(&self) -> i64 {
        self.proto
            .opset_import
            .iter()
            .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
            .and_then(|o| o.version)
            .unwrap_or(1)
    }

    pub fn initializer(&self, name: &str) -> Option<&TensorProto> {
        self.graph()
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(name))
    }

    pub fn tensor_f32(&self, t: &TensorProto) -> Result<ndarray::ArrayD<f32>> {
        tensor::to_f32(t, &self.base_dir)
    }

    pub fn tensor_i64(&self, t: &TensorProto) -> Result<Vec<i64>> {
        tensor::to_i64(t, &self.base_dir)
    }

    /// The model's proto with every external tensor's bytes read in: for an engine given the
    /// model from memory, which has no folder to resolve external files against.
    pub fn proto_inline(&self) -> Result<ModelProto> {
        let mut proto = self.proto.clone();
        if !self.has_external_data() {
            return Ok(proto);
        }
        let graph = proto.graph.as_mut().expect("checked at load");
        visit_tensors_mut(graph, &mut |t| {
            if tensor::is_external(t) {
                let bytes = tensor::raw_bytes(t, &self.base_dir)?.into_owned();
                t.raw_data = Some(bytes);
                t.data_location = None;
                t.external_data.clear();
            }
            Ok(())
        })?;
        Ok(proto)
    }

    /// True when any tensor of the model keeps its bytes in another file.
    pub fn has_external_data(&self) -> bool {
        let mut found = false;
        visit_tensors(self.graph(), &mut |t| found |= tensor::is_external(t));
        found
    }
}

/// Calls `f` on every dense tensor of a graph: initializers, sparse initializers' parts and
/// tensor attributes, recursing into subgraphs.
pub fn visit_tensors(graph: &GraphProto, f: &mut dyn FnMut(&TensorProto)) {
    graph.initializer.iter().for_each(&mut *f);
    for s in &graph.sparse_initializer {
        s.values.iter().chain(s.indices.iter()).for_each(&mut *f);
    }
    for node in &graph.node {
        for a in &node.attribute {
            a.t.iter().chain(a.tensors.iter()).for_each(&mut *f);
            for g in a.g.iter().chain(a.graphs.iter()) {
                visit_tensors(g, f);
            }
        }
    }
}

fn visit_tensors_mut(
    graph: &mut GraphProto,
    f: &mut dyn FnMut(&mut TensorProto) -> Result<()>,
) -> Result<()> {
    for t in &mut graph.initializer {
        f(t)?;
    }
    for s in &mut graph.sparse_initializer {
        for t in s.values.iter_mut().chain(s.indices.iter_mut()) {
            f(t)?;
        }
    }
    for node in &mut graph.node {
        for a in &mut node.attribute {
            for t in a.t.iter_mut().chain(a.tensors.iter_mut()) {
                f(t)?;
            }
            for g in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                visit_tensors_mut(g, f)?;
            }
        }
    }
    Ok(())
}

/// Where tensor bytes go when saving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExternalData {
    /// Tensors that were external stay external; all go external if the model would pass the
    /// protobuf limit otherwise.
    #[default]
    Auto,
    /// Every tensor of at least this many bytes goes to the data file.
    Always { threshold: usize },
}

/// What a save wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveReport {
    pub model_bytes: u64,
    /// The data file and its size, when tensors were written outside the model.
    pub external: Option<(PathBuf, u64)>,
}

/// The smallest tensor moved out when the model is too large for one protobuf message, when
/// the user asks for external data, or when the input model had some.
pub const EXTERNAL_THRESHOLD: usize = 1024;
/// Tensors in the data file start at multiples of this, so runtimes can map them directly.
const EXTERNAL_ALIGNMENT: u64 = 4096;

/// Writes `model` to `out` atomically (a temporary file in the same folder, renamed into place),
/// with external data in `<out file name>.data` when `policy` asks for it. Never overwrites the
/// input model or the data files it reads from.
pub fn save(model: &OnnxModel, out: &Path, policy: ExternalData) -> Result<SaveReport> {
    refuse_overwriting_inputs(model, out)?;
    let out_name = out
        .file_name()
        .with_context(|| format!("output path {} names no file", out.display()))?
        .to_string_lossy()
        .into_owned();
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    ensure!(
        dir.is_dir(),
        "cannot write {}: folder {} does not exist",
        out.display(),
        dir.display()
    );

    let mut proto = model.proto.clone();
    let threshold = match policy {
        ExternalData::Always { threshold } => Some(threshold),
        ExternalData::Auto if proto.encoded_len() > PROTOBUF_LIMIT - (1 << 20) => {
            Some(EXTERNAL_THRESHOLD)
        }
        ExternalData::Auto => None,
    };
    let data_name = format!("{out_name}.data");
    let mut data = ExternalWriter::default();
    let graph = proto.graph.as_mut().expect("checked at load");
    visit_tensors_mut(graph, &mut |t| {
        let size = tensor::raw_bytes_len_hint(t);
        let wants_external = tensor::is_external(t) || threshold.is_some_and(|th| size >= th);
        if !wants_external {
            return Ok(());
        }
        if t.data_type == Some(crate::proto::tensor_proto::DataType::String as i32) {
            return Ok(()); // strings cannot live outside the protobuf
        }
        let bytes = tensor::raw_bytes(t, &model.base_dir)?.into_owned();
        let (offset, length) = data.append(&bytes);
        t.raw_data = None;
        t.float_data.clear();
        t.int32_data.clear();
        t.int64_data.clear();
        t.double_data.clear();
        t.uint64_data.clear();
        t.data_location = Some(DataLocation::External as i32);
        t.external_data = vec![
            entry("location", &data_name),
            entry("offset", &offset.to_string()),
            entry("length", &length.to_string()),
        ];
        Ok(())
    })?;
    let encoded = proto.encode_to_vec();
    ensure!(
        encoded.len() <= PROTOBUF_LIMIT,
        "the model would be {} bytes, above protobuf's 2 GiB limit; save with external data",
        encoded.len()
    );
    let external = if data.bytes.is_empty() && !data.used {
        None
    } else {
        let data_path = dir.join(&data_name);
        refuse_overwriting_inputs(model, &data_path)?;
        write_atomically(&data_path, &data.bytes)?;
        Some((data_path, data.bytes.len() as u64))
    };
    write_atomically(out, &encoded)?;
    Ok(SaveReport {
        model_bytes: encoded.len() as u64,
        external,
    })
}

fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(key.to_string()),
        value: Some(value.to_string()),
    }
}

#[derive(Default)]
struct ExternalWriter {
    bytes: Vec<u8>,
    used: bool,
}

impl ExternalWriter {
    fn append(&mut self, payload: &[u8]) -> (u64, u64) {
        self.used = true;
        let aligned = (self.bytes.len() as u64).div_ceil(EXTERNAL_ALIGNMENT) * EXTERNAL_ALIGNMENT;
        self.bytes.resize(aligned as usize, 0);
        self.bytes.extend_from_slice(payload);
        (aligned, payload.len() as u64)
    }
}

/// The input model and its data files are never a target of a write.
fn refuse_overwriting_inputs(model: &OnnxModel, target: &Path) -> Result<()> {
    let mut inputs: BTreeMap<PathBuf, String> = BTreeMap::new();
    inputs.insert(model.path.clone(), "the input model".to_string());
    visit_tensors(model.graph(), &mut |t| {
        if tensor::is_external(t) {
            if let Ok(r) = tensor::external_ref(t, &model.base_dir) {
                inputs.insert(
                    r.path,
                    "an external data file of the input model".to_string(),
                );
            }
        }
    });
    for (path, what) in inputs {
        if same_file(&path, target) {
            bail!(
                "refusing to write {}: it is {what}; choose another output path",
                target.display()
            );
        }
    }
    Ok(())
}

/// True when both paths name the same file (the second may not exist yet).
pub fn same_file(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| -> Option<PathBuf> {
        if let Ok(c) = fs::canonicalize(p) {
            return Some(c);
        }
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        Some(fs::canonicalize(parent).ok()?.join(p.file_name()?))
    };
    match (canon(a), canon(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over `path`, so a
/// reader sees the old file or the whole new one, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_with(path, |f| f.write_all(bytes))
}

/// [`write_atomically`] with the content written by `write`: whatever it fails with (a full
/// disk midway, say), the temporary file is removed and `path` keeps its previous content.
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let shown = path.display();
    let mut tmp = temp_file_beside(path)?;
    write(tmp.as_file_mut()).with_context(|| format!("cannot write {shown}"))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot write {shown}"))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {shown}"))?;
    Ok(())
}

/// A temporary file in `path`'s folder (removed when dropped), or an error naming `path`.
fn temp_file_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let shown = path.display();
    ensure!(
        dir.is_dir(),
        "cannot write {shown}: {} {}",
        dir.display(),
        if dir.exists() {
            "is not a folder"
        } else {
            "does not exist"
        }
    );
    let mut builder = tempfile::Builder::new();
    builder.prefix(".onnx-dlq-").suffix(".tmp");
    // A temporary file is private (0600); the output is an ordinary file, created like any other
    // (0666 minus the user's umask, which the OS applies at creation).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir).with_context(|| {
        format!(
            "cannot write {shown}: cannot create a file in {}",
            dir.display()
        )
    })
}

/// Fails now, rather than after minutes of work, when `path` could not be written: its folder
/// is missing, read-only or not a folder. Leaves nothing behind.
pub fn check_writable(path: &Path) -> Result<()> {
    temp_file_beside(path).map(drop)
}

/// What `model` occupies on disk: its file (at `model.path`) and the external data files its
/// tensors read from (each counted once). Files that cannot be read count 0.
pub fn stored_bytes(model: &OnnxModel) -> u64 {
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut files = std::collections::BTreeSet::<PathBuf>::new();
    visit_tensors(model.graph(), &mut |t| {
        if let Ok(r) = tensor::external_ref(t, &model.base_dir) {
            files.insert(r.path);
        }
    });
    size(&model.path) + files.iter().map(|p| size(p)).sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that fails halfway (a full disk, simulated): the previous output is intact and
    /// no temporary file is left beside it.
    #[test]
    fn a_write_failing_midway_keeps_the_previous_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.onnx");
        fs::write(&out, b"previous model").unwrap();
        let e = write_atomically_with(&out, |f| {
            f.write_all(b"half of the new")?;
            Err(std::io::Error::other("No space left on device (simulated)"))
        })
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("cannot write") && msg.contains("No space left"),
            "{msg}"
        );
        assert!(msg.contains(&out.display().to_string()), "{msg}");
        assert_eq!(fs::read(&out).unwrap(), b"previous model");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // And a write that succeeds replaces it whole.
        write_atomically(&out, b"new model").unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"new model");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
