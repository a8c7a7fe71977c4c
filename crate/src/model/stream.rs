//! Loading a checkpoint from a stream of byte chunks (a fetch body, slices of a dropped file),
//! never holding the whole file: the safetensors header is parsed and validated once its bytes
//! are in (with the same limits and messages as [`super::SafetensorsSource`]), then each tensor is
//! decoded to f32 as its bytes arrive, so only the tensor being received is buffered (as f32
//! values, plus at most 7 bytes of a split element). Tensors of a tower that is not wanted are
//! skipped without being buffered.
//!
//! The image tower is built as soon as its last tensor is in: with a checkpoint whose data
//! section holds the image tower first ([`serialize_vision_first`], what `anoscope convert` and
//! `random-weights` write), images can be scored while the text tower is still arriving.
//!
//! The size limits, the image-tower test and the vision-first writer are shared with the
//! whole-file reader ([`super::weights`]) and live in [`super::checkpoint`] (the last two are
//! re-exported here under their old paths).
use super::checkpoint::{
    decode_floats, dequantize_q8, q8_scales_shape, TensorSource, MAX_CHECKPOINT_BYTES, MAX_SAFETENSORS_HEADER_BYTES,
    Q8_SCALES_SUFFIX,
};
pub use super::checkpoint::{is_image_tower_tensor, serialize_vision_first};
use super::config::ClipConfig;
use super::{Clip, TextTower, VisionTower};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use safetensors::tensor::{Metadata, SafeTensorError};
use safetensors::{Dtype, SafeTensors};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

/// The safetensors error of a file whose size does not match its header (truncated, or bytes
/// after the last tensor): today's message for the same file read whole.
fn invalid(origin: &str, e: SafeTensorError) -> anyhow::Error {
    anyhow!("{origin}: not a valid safetensors file (truncated or corrupt?): {e}")
}

/// Which towers a [`StreamLoader`] builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Towers {
    /// Build the image tower (otherwise its tensors are skipped without being buffered).
    pub vision: bool,
    /// Build the text tower (otherwise its tensors are skipped without being buffered).
    pub text: bool,
}

impl Towers {
    /// Both towers.
    pub const ALL: Towers = Towers {
        vision: true,
        text: true,
    };
}

/// One tensor of the header, in data order.
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    start: u64,
    end: u64,
    vision: bool,
}

/// A decoded tensor waiting to be taken by a tower, or why it cannot be.
enum Slot {
    Ready(Vec<f32>),
    /// The error `get` reports (unsupported dtype, non-finite value): an optional context, then
    /// the message, as the whole-file reader words it.
    Bad(Option<String>, String),
}

/// The tensor being received.
struct Partial {
    values: Vec<f32>,
    carry: [u8; 8],
    carry_len: usize,
    /// Element size in bytes; 0 = skip the bytes (unwanted tower, or a dtype that is not read).
    elem: usize,
    dtype: Dtype,
    first_bad: Option<(usize, f32)>,
}

impl Partial {
    fn decode(&mut self, bytes: &[u8]) {
        let base = self.values.len();
        decode_floats(self.dtype, bytes, &mut self.values).expect("only float dtypes are decoded");
        if self.first_bad.is_none() {
            if let Some(i) = self.values[base..].iter().position(|v| !v.is_finite()) {
                self.first_bad = Some((base + i, self.values[base + i]));
            }
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        let e = self.elem;
        if e == 0 {
            return;
        }
        if self.carry_len > 0 {
            let take = (e - self.carry_len).min(bytes.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&bytes[..take]);
            self.carry_len += take;
            bytes = &bytes[take..];
            if self.carry_len < e {
                return;
            }
            let carry = self.carry;
            self.decode(&carry[..e]);
            self.carry_len = 0;
        }
        let whole = bytes.len() / e * e;
        self.decode(&bytes[..whole]);
        let rest = &bytes[whole..];
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carry_len = rest.len();
    }
}

/// The tensors received so far, taken (moved out) by the tower loaders.
struct Received {
    origin: String,
    /// Every tensor name of the header, with its shape.
    shapes: HashMap<String, Vec<usize>>,
    /// The tensors stored as int8 (scaled by their block scales when read).
    int8: HashSet<String>,
    slots: RefCell<HashMap<String, Slot>>,
}

impl TensorSource for Received {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let origin = &self.origin;
        let Some(stored) = self.shapes.get(name) else {
            bail!("{origin}: missing tensor `{name}`");
        };
        if stored != shape {
            bail!("{origin}: tensor `{name}` has shape {stored:?} but the configuration implies {shape:?}");
        }
        let mut slots = self.slots.borrow_mut();
        match slots.remove(name) {
            Some(Slot::Ready(mut values)) => {
                drop(slots);
                if self.int8.contains(name) {
                    let want = q8_scales_shape(shape).with_context(|| format!("{origin}: tensor `{name}` (I8)"))?;
                    let scales_name = format!("{name}{Q8_SCALES_SUFFIX}");
                    if !self.shapes.contains_key(&scales_name) {
                        bail!(
                            "{origin}: tensor `{name}`: unsupported dtype I8 without its block scales \
                             `{scales_name}` (int8 tensors are read only as anoscope's q8 format)"
                        );
                    }
                    let scales = self.get(&scales_name, &want)?.flatten_all()?.to_vec1::<f32>()?;
                    dequantize_q8(&mut values, &scales);
                }
                Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
            }
            Some(Slot::Bad(Some(context), cause)) => Err(anyhow!(cause).context(context)),
            Some(Slot::Bad(None, message)) => Err(anyhow!(message)),
            None => bail!("{origin}: tensor `{name}` was not loaded (internal error: read twice or not streamed)"),
        }
    }
    fn contains(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }
}

/// The parsed header: tensors in data order and where each tower ends.
struct Plan {
    entries: Vec<Entry>,
    /// Offset of the data section in the file (8 + header length).
    data_start: u64,
    /// File size the header implies.
    file_len: u64,
    /// Data offset after which every image-tower tensor is in.
    vision_end: u64,
    /// Data offset after which every text-tower tensor is in.
    text_end: u64,
    /// Whether the file holds a text tower.
    has_text: bool,
}

/// Builds a [`Clip`] from a checkpoint pushed in chunks. See the module documentation.
pub struct StreamLoader {
    cfg: ClipConfig,
    origin: String,
    towers: Towers,
    declared_len: Option<u64>,
    received: u64,
    /// The 8-byte length and the header, while they are being received.
    head: Vec<u8>,
    plan: Option<Plan>,
    /// Index (in `plan.entries`) of the tensor being received.
    next: usize,
    partial: Option<Partial>,
    src: Option<Received>,
    vision: Option<VisionTower>,
    logit_scale: Option<f32>,
    text: Option<TextTower>,
    /// Set once a tower was built (or the stream failed): which are done.
    vision_built: bool,
    text_built: bool,
    /// The first error: every later call returns it again.
    failed: Option<String>,
}

impl StreamLoader {
    /// A loader for the checkpoint described by `cfg`. `declared_len` is the file size when known
    /// (a dropped file, a Content-Length): the size limits are then checked before any byte.
    /// `origin` names the file in errors.
    pub fn new(cfg: ClipConfig, origin: &str, declared_len: Option<u64>, towers: Towers) -> Result<Self> {
        if let Some(n) = declared_len {
            if n == 0 {
                bail!("{origin}: the file is empty (0 bytes), not a safetensors checkpoint");
            }
            if n > MAX_CHECKPOINT_BYTES {
                bail!("{origin}: {n} bytes is over the checkpoint size limit of {MAX_CHECKPOINT_BYTES} bytes");
            }
        }
        Ok(Self {
            cfg,
            origin: origin.to_string(),
            towers,
            declared_len,
            received: 0,
            head: Vec::new(),
            plan: None,
            next: 0,
            partial: None,
            src: None,
            vision: None,
            logit_scale: None,
            text: None,
            vision_built: !towers.vision,
            text_built: !towers.text,
            failed: None,
        })
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The file size the header implies, once the header is in.
    pub fn expected_len(&self) -> Option<u64> {
        self.plan.as_ref().map(|p| p.file_len)
    }

    /// Whether the image tower (when wanted) is built.
    pub fn vision_ready(&self) -> bool {
        self.towers.vision && self.vision_built && self.failed.is_none()
    }

    /// Whether the text tower (when wanted) is built, or known to be absent from the file.
    pub fn text_ready(&self) -> bool {
        self.towers.text && self.text_built && self.failed.is_none()
    }

    /// Whether the file holds a text tower (known once the header is in).
    pub fn has_text(&self) -> Option<bool> {
        self.plan.as_ref().map(|p| p.has_text)
    }

    fn check_failed(&self) -> Result<()> {
        match &self.failed {
            Some(e) => Err(anyhow!("{e}")),
            None => Ok(()),
        }
    }

    /// Feeds the next bytes of the file. Errors are final: later calls return the same error.
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        self.check_failed()?;
        let r = self.push_inner(chunk);
        if let Err(e) = &r {
            self.fail(e);
        }
        r
    }

    fn fail(&mut self, e: &anyhow::Error) {
        self.failed = Some(format!("{e:#}"));
        self.partial = None;
        self.src = None;
        self.vision = None;
        self.text = None;
    }

    fn push_inner(&mut self, mut chunk: &[u8]) -> Result<()> {
        if let Some(len) = self.declared_len {
            if self.received + chunk.len() as u64 > len {
                if self.plan.is_some() {
                    // The header matched the announced size: bytes after its last tensor.
                    return Err(invalid(&self.origin, SafeTensorError::MetadataIncompleteBuffer));
                }
                bail!("{}: got more than the {len} bytes announced for the file", self.origin);
            }
        }
        while !chunk.is_empty() {
            if self.plan.is_none() {
                let n = self.take_header(chunk)?;
                chunk = &chunk[n..];
            } else {
                let n = self.take_data(chunk)?;
                chunk = &chunk[n..];
            }
        }
        Ok(())
    }

    /// Header phase: consumes up to the end of the header; returns the bytes used.
    fn take_header(&mut self, chunk: &[u8]) -> Result<usize> {
        let want = if self.head.len() < 8 {
            8
        } else {
            let n = u64::from_le_bytes(self.head[..8].try_into().expect("8 bytes"));
            8 + n as usize
        };
        let take = (want - self.head.len()).min(chunk.len());
        self.head.extend_from_slice(&chunk[..take]);
        self.received += take as u64;
        if self.head.len() == 8 && want == 8 {
            let n = u64::from_le_bytes(self.head[..8].try_into().expect("8 bytes"));
            if n > MAX_SAFETENSORS_HEADER_BYTES {
                return Err(invalid(&self.origin, SafeTensorError::HeaderTooLarge));
            }
            if let Some(len) = self.declared_len {
                if 8 + n > len {
                    return Err(invalid(&self.origin, SafeTensorError::InvalidHeaderLength));
                }
            }
            if n == 0 {
                self.parse_header()?;
            }
        } else if self.head.len() == want {
            self.parse_header()?;
        }
        Ok(take)
    }

    fn parse_header(&mut self) -> Result<()> {
        // The crate's own validation (UTF-8, JSON, dtypes, contiguous offsets, sizes); with the
        // data still to come its last check, that the buffer ends with the data, fails.
        match SafeTensors::read_metadata(&self.head) {
            Ok(_) | Err(SafeTensorError::MetadataIncompleteBuffer) => {}
            Err(e) => return Err(invalid(&self.origin, e)),
        }
        let text = std::str::from_utf8(&self.head[8..]).expect("checked by read_metadata");
        let meta: Metadata = serde_json::from_str(text).map_err(|e| anyhow!("{}: {e}", self.origin))?;
        let data_start = self.head.len() as u64;
        self.head = Vec::new();
        let infos = meta.tensors();
        let mut entries: Vec<Entry> = infos
            .iter()
            .map(|(name, info)| Entry {
                name: name.clone(),
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: info.data_offsets.0 as u64,
                end: info.data_offsets.1 as u64,
                vision: is_image_tower_tensor(name),
            })
            .collect();
        entries.sort_by_key(|e| (e.start, e.end));
        let data_len = meta.data_len() as u64;
        let file_len = data_start + data_len;
        let end_of = |vision: bool| {
            entries
                .iter()
                .filter(|e| e.vision == vision)
                .map(|e| e.end)
                .max()
                .unwrap_or(0)
        };
        let (vision_end, text_end) = (end_of(true), end_of(false));
        let shapes = entries.iter().map(|e| (e.name.clone(), e.shape.clone())).collect();
        let int8 = entries
            .iter()
            .filter(|e| e.dtype == Dtype::I8)
            .map(|e| e.name.clone())
            .collect();
        let src = Received {
            origin: self.origin.clone(),
            shapes,
            int8,
            slots: RefCell::new(HashMap::new()),
        };
        let has_text = super::weights::TextWeights::present(&src, self.cfg.layout);
        if file_len > MAX_CHECKPOINT_BYTES {
            bail!(
                "{}: {file_len} bytes is over the checkpoint size limit of {MAX_CHECKPOINT_BYTES} bytes",
                self.origin
            );
        }
        if let Some(len) = self.declared_len {
            if len != file_len {
                return Err(invalid(&self.origin, SafeTensorError::MetadataIncompleteBuffer));
            }
        }
        self.cfg.check_weights_size(file_len, &self.origin)?;
        self.plan = Some(Plan {
            entries,
            data_start,
            file_len,
            vision_end,
            text_end,
            has_text,
        });
        self.src = Some(src);
        self.build_ready_towers()
    }

    /// Data phase: consumes bytes of the current tensor; returns the bytes used.
    fn take_data(&mut self, chunk: &[u8]) -> Result<usize> {
        let plan = self.plan.as_ref().expect("data phase");
        let pos = self.received - plan.data_start;
        let Some(entry) = plan.entries.get(self.next) else {
            // Past the last tensor: more bytes than the header describes.
            return Err(invalid(&self.origin, SafeTensorError::MetadataIncompleteBuffer));
        };
        if self.partial.is_none() {
            let wanted = if entry.vision {
                self.towers.vision
            } else {
                self.towers.text
            };
            let elem = match entry.dtype {
                Dtype::F32 => 4,
                Dtype::F16 | Dtype::BF16 => 2,
                Dtype::F64 => 8,
                Dtype::I8 => 1,
                _ => 0,
            };
            let elem = if wanted { elem } else { 0 };
            let count = ((entry.end - entry.start) as usize).checked_div(elem).unwrap_or(0);
            self.partial = Some(Partial {
                values: Vec::with_capacity(count),
                carry: [0; 8],
                carry_len: 0,
                elem,
                dtype: entry.dtype,
                first_bad: None,
            });
        }
        let take = ((entry.end - pos) as usize).min(chunk.len());
        let partial = self.partial.as_mut().expect("set above");
        partial.feed(&chunk[..take]);
        self.received += take as u64;
        if pos + take as u64 == entry.end {
            let partial = self.partial.take().expect("set above");
            let wanted = if entry.vision {
                self.towers.vision
            } else {
                self.towers.text
            };
            if wanted {
                let context = format!("{}: tensor `{}`", self.origin, entry.name);
                let slot = if partial.elem == 0 {
                    Slot::Bad(
                        Some(context),
                        format!("unsupported dtype {:?} (expected F32, F16 or BF16)", entry.dtype),
                    )
                } else if let Some((i, v)) = partial.first_bad {
                    Slot::Bad(
                        None,
                        format!("{context} contains a non-finite value ({v}) at flat index {i}"),
                    )
                } else {
                    Slot::Ready(partial.values)
                };
                let name = entry.name.clone();
                let src = self.src.as_ref().expect("data phase");
                src.slots.borrow_mut().insert(name, slot);
            }
            self.next += 1;
            self.build_ready_towers()?;
        }
        Ok(take)
    }

    /// Builds each wanted tower whose tensors are all in, then frees what it did not use.
    fn build_ready_towers(&mut self) -> Result<()> {
        let plan = self.plan.as_ref().expect("header parsed");
        let pos = self.received - plan.data_start;
        let src = self.src.as_ref().expect("header parsed");
        if !self.vision_built && pos >= plan.vision_end {
            self.vision = Some(VisionTower::load(src, &self.cfg)?);
            self.logit_scale = if src.contains("logit_scale") {
                let t = src.get("logit_scale", &[]).or_else(|_| src.get("logit_scale", &[1]))?;
                Some(t.flatten_all()?.to_vec1::<f32>()?[0].exp())
            } else {
                None
            };
            self.vision_built = true;
            let names: HashSet<&str> = plan
                .entries
                .iter()
                .filter(|e| e.vision)
                .map(|e| e.name.as_str())
                .collect();
            src.slots.borrow_mut().retain(|k, _| !names.contains(k.as_str()));
        }
        if !self.text_built && pos >= plan.text_end {
            if plan.has_text {
                self.text = Some(TextTower::load(src, &self.cfg)?);
            }
            self.text_built = true;
            src.slots.borrow_mut().retain(|k, _| is_image_tower_tensor(k));
        }
        Ok(())
    }

    /// Ends the stream: the file must have been exactly as long as its header says.
    pub fn finish(&mut self) -> Result<()> {
        self.check_failed()?;
        let r = self.finish_inner();
        if let Err(e) = &r {
            self.fail(e);
        }
        r
    }

    fn finish_inner(&mut self) -> Result<()> {
        let origin = &self.origin;
        if self.received == 0 {
            bail!("{origin}: the file is empty (0 bytes), not a safetensors checkpoint");
        }
        let Some(plan) = &self.plan else {
            return Err(invalid(
                origin,
                if self.head.len() < 8 {
                    SafeTensorError::HeaderTooSmall
                } else {
                    SafeTensorError::InvalidHeaderLength
                },
            ));
        };
        if self.received != plan.file_len {
            return Err(invalid(origin, SafeTensorError::MetadataIncompleteBuffer));
        }
        debug_assert!(self.vision_built && self.text_built);
        self.src = None;
        Ok(())
    }

    /// Takes the image tower (once [`Self::vision_ready`]) as a model without a text tower.
    pub fn take_vision(&mut self) -> Result<Clip> {
        self.check_failed()?;
        let vision = self
            .vision
            .take()
            .context("the image tower is not loaded yet (or was taken already)")?;
        Ok(Clip {
            cfg: self.cfg.clone(),
            vision,
            text: None,
            logit_scale: self.logit_scale,
        })
    }

    /// Takes the text tower (once [`Self::text_ready`]); `None` when the file has none.
    pub fn take_text(&mut self) -> Result<Option<TextTower>> {
        self.check_failed()?;
        if !self.text_ready() {
            bail!("the text tower is not loaded yet");
        }
        Ok(self.text.take())
    }

    /// The whole model after [`Self::finish`] (both towers wanted).
    pub fn into_clip(mut self) -> Result<Clip> {
        let mut clip = self.take_vision()?;
        clip.text = self.take_text()?;
        Ok(clip)
    }
}

/// Loads a whole checkpoint held in memory through the streaming loader, in chunks of `chunk`
/// bytes (tests, and callers that want the streaming loader's memory profile).
pub fn load_chunked(cfg: &ClipConfig, bytes: &[u8], origin: &str, chunk: usize) -> Result<Clip> {
    let mut l = StreamLoader::new(cfg.clone(), origin, None, Towers::ALL)?;
    for c in bytes.chunks(chunk.max(1)) {
        l.push(c)?;
    }
    l.finish()?;
    l.into_clip()
}
