//! Prompt ensembles: WinCLIP's compositional ensemble exactly as anomalib builds it (so that
//! parity holds), fine-grained per-category defect descriptions, and the bundled prompt file.
//!
//! * [`winclip_ensemble`]: 7 normal and 4 anomalous states × 21 templates (147 / 84 prompts).
//! * [`descriptions_ensemble`]: WinCLIP's ensemble plus `"{object} with {defect}"` states for
//!   fine-grained defect descriptions (the training-free half of FiLo), 21 prompts per defect.
//!   The descriptions ship in `weights/prompts/descriptions.json` (see [`categories`]).
//! * [`PromptBundle`]: text embeddings precomputed for one model, stored as safetensors, so
//!   that the browser need not load the text tower.

use super::TextPair;
use crate::model::Clip;
use crate::tokenizer::ClipTokenizer;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

/// Normal states (`{}` is the object name).
pub const NORMAL_STATES: [&str; 7] = [
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
];

/// Anomalous states.
pub const ANOMALOUS_STATES: [&str; 4] = ["damaged {}", "{} with flaw", "{} with defect", "{} with damage"];

/// anomalib's 21 templates. "a jpeg corrupted photo of the {}." is listed twice there; it is
/// kept twice here so that the ensemble averages match.
pub const TEMPLATES: [&str; 21] = [
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
];

fn fill(pattern: &str, value: &str) -> String {
    pattern.replacen("{}", value, 1)
}

/// Every template applied to every state, state-major (anomalib's order).
pub fn expand(states: &[String]) -> Vec<String> {
    states
        .iter()
        .flat_map(|s| TEMPLATES.iter().map(move |t| fill(t, s)))
        .collect()
}

/// WinCLIP's normal and anomalous prompts for an object name: 147 and 84 prompts.
pub fn winclip_ensemble(object: &str) -> (Vec<String>, Vec<String>) {
    let normal: Vec<String> = NORMAL_STATES.iter().map(|s| fill(s, object)).collect();
    let anomalous: Vec<String> = ANOMALOUS_STATES.iter().map(|s| fill(s, object)).collect();
    (expand(&normal), expand(&anomalous))
}

/// WinCLIP's ensemble plus fine-grained defect descriptions: the normal side is WinCLIP's 147
/// normal prompts; the anomalous side is WinCLIP's 84 anomalous prompts followed by the 21
/// templates applied to `"{object} with {defect}"` for each defect (84 + 21·k prompts).
pub fn descriptions_ensemble(object: &str, defects: &[String]) -> (Vec<String>, Vec<String>) {
    let (normal, mut anomalous) = winclip_ensemble(object);
    let states: Vec<String> = defects.iter().map(|d| format!("{object} with {d}")).collect();
    anomalous.extend(expand(&states));
    (normal, anomalous)
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// Most prompts one side of an ensemble may have (bounds text-tower work: 84 + 21·k ≤ 4096
/// allows up to 191 defect descriptions per category).
pub const MAX_PROMPTS_PER_SIDE: usize = 4096;

/// Longest object name, defect description or model id accepted, in characters. CLIP's
/// tokenizer truncates to 77 tokens anyway; this only rejects absurd input early.
pub const MAX_PROMPT_CHARS: usize = 1000;

/// Most categories in the descriptions file or in one prompt bundle (a bundle may hold each
/// category once per [`EnsembleKind`]).
pub const MAX_CATEGORIES: usize = 256;

/// Longest category name, in characters. Category names also name bundle tensors
/// (`"{category}/{kind}"`), so they are restricted to ASCII letters, digits, `_`, `-` and `.`.
pub const MAX_CATEGORY_NAME_CHARS: usize = 128;

/// Checks a category name: 1..=[`MAX_CATEGORY_NAME_CHARS`] ASCII letters, digits, `_`, `-`, `.`.
pub fn check_category_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().count() > MAX_CATEGORY_NAME_CHARS {
        bail!(
            "category name must have 1 to {MAX_CATEGORY_NAME_CHARS} characters (got {})",
            name.chars().count()
        );
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        bail!("category name {name:?} contains {c:?}; only ASCII letters, digits, '_', '-' and '.' are allowed");
    }
    Ok(())
}

/// Checks one piece of prompt text (object name, defect description, model id): non-blank,
/// at most [`MAX_PROMPT_CHARS`] characters, no control characters.
fn check_text(what: &str, text: &str) -> Result<()> {
    let n = text.chars().count();
    if n > MAX_PROMPT_CHARS {
        bail!("{what} is too long: {n} characters (at most {MAX_PROMPT_CHARS})");
    }
    if text.trim().is_empty() {
        bail!("{what} must not be empty");
    }
    if text.chars().any(char::is_control) {
        bail!("{what} {text:?} contains control characters");
    }
    Ok(())
}

/// Checks the sizes of a prompt ensemble: 1..=[`MAX_PROMPTS_PER_SIDE`] prompts per side.
pub fn check_ensemble(normal: &[String], anomalous: &[String]) -> Result<()> {
    for (side, prompts) in [("normal", normal), ("anomalous", anomalous)] {
        if prompts.is_empty() {
            bail!("the {side} prompt ensemble is empty");
        }
        if prompts.len() > MAX_PROMPTS_PER_SIDE {
            bail!(
                "the {side} prompt ensemble has {} prompts (at most {MAX_PROMPTS_PER_SIDE})",
                prompts.len()
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Categories and their defect descriptions
// ---------------------------------------------------------------------------------------------

/// The bundled descriptions (`weights/prompts/descriptions.json`).
pub const DESCRIPTIONS_JSON: &str = include_str!("../../../weights/prompts/descriptions.json");

/// Most defect descriptions one category may have so that its descriptions ensemble stays
/// within [`MAX_PROMPTS_PER_SIDE`].
pub const MAX_DEFECTS: usize = (MAX_PROMPTS_PER_SIDE - ANOMALOUS_STATES.len() * TEMPLATES.len()) / TEMPLATES.len();

// MAX_DEFECTS is the largest k with 84 + 21·k ≤ MAX_PROMPTS_PER_SIDE.
const _: () = assert!(ANOMALOUS_STATES.len() * TEMPLATES.len() + TEMPLATES.len() * MAX_DEFECTS <= MAX_PROMPTS_PER_SIDE);
const _: () =
    assert!(ANOMALOUS_STATES.len() * TEMPLATES.len() + TEMPLATES.len() * (MAX_DEFECTS + 1) > MAX_PROMPTS_PER_SIDE);

/// A category: its name (a dataset folder name such as `metal_nut`), the natural-language
/// object name used in prompts (`metal nut`) and its fine-grained defect descriptions, phrased
/// to fit `"a photo of a {object} with {defect}"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Category {
    /// Category name, as a dataset folder names it (`metal_nut`); see [`check_category_name`].
    pub name: String,
    /// Object name substituted into the prompt templates (`metal nut`).
    pub object: String,
    /// Defect descriptions (at most [`MAX_DEFECTS`]); may be empty.
    pub defects: Vec<String>,
}

impl Category {
    /// A validated custom category (see [`Category::validate`]).
    pub fn new(name: &str, object: &str, defects: &[String]) -> Result<Self> {
        let cat = Self {
            name: name.to_string(),
            object: object.to_string(),
            defects: defects.to_vec(),
        };
        cat.validate()?;
        Ok(cat)
    }

    /// Checks the name ([`check_category_name`]), the object name and every description
    /// (non-blank, ≤ [`MAX_PROMPT_CHARS`] characters), no duplicate descriptions, and at most
    /// [`MAX_DEFECTS`] of them. An empty defect list is allowed (the descriptions ensemble then
    /// equals WinCLIP's).
    pub fn validate(&self) -> Result<()> {
        check_category_name(&self.name)?;
        check_text(&format!("object name of category {:?}", self.name), &self.object)?;
        if self.defects.len() > MAX_DEFECTS {
            bail!(
                "category {:?} has {} defect descriptions (at most {MAX_DEFECTS}, so that an ensemble side stays \
                 within {MAX_PROMPTS_PER_SIDE} prompts)",
                self.name,
                self.defects.len()
            );
        }
        let mut seen = HashSet::new();
        for d in &self.defects {
            check_text(&format!("a defect description of category {:?}", self.name), d)?;
            if !seen.insert(d.as_str()) {
                bail!("category {:?} lists the defect description {d:?} twice", self.name);
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptionsFile {
    version: u32,
    categories: BTreeMap<String, DescriptionsEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptionsEntry {
    object: String,
    defects: Vec<String>,
}

/// Parses and validates a descriptions file (the format of `weights/prompts/descriptions.json`):
/// `{"version": 1, "categories": {NAME: {"object": ..., "defects": [...]}}}`. Categories come
/// back sorted by name.
pub fn parse_descriptions(json: &str) -> Result<Vec<Category>> {
    let file: DescriptionsFile = serde_json::from_str(json).context("invalid descriptions file")?;
    if file.version != 1 {
        bail!(
            "unsupported descriptions file version {} (this build reads version 1)",
            file.version
        );
    }
    if file.categories.len() > MAX_CATEGORIES {
        bail!(
            "the descriptions file has {} categories (at most {MAX_CATEGORIES})",
            file.categories.len()
        );
    }
    file.categories
        .into_iter()
        .map(|(name, e)| {
            let cat = Category {
                name,
                object: e.object,
                defects: e.defects,
            };
            cat.validate().context("invalid descriptions file")?;
            Ok(cat)
        })
        .collect()
}

/// The bundled categories (15 MVTec AD, 12 VisA and the generic `object`), sorted by name.
pub fn categories() -> Result<Vec<Category>> {
    parse_descriptions(DESCRIPTIONS_JSON)
}

/// One bundled category by name (`None` when there is no such category).
pub fn category(name: &str) -> Result<Option<Category>> {
    Ok(categories()?.into_iter().find(|c| c.name == name))
}

// ---------------------------------------------------------------------------------------------
// Ensemble kinds
// ---------------------------------------------------------------------------------------------

/// Which prompt ensemble a text pair was built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EnsembleKind {
    /// [`winclip_ensemble`]: 147 normal / 84 anomalous prompts.
    WinClip,
    /// [`descriptions_ensemble`]: WinCLIP's plus the category's defect descriptions.
    Descriptions,
}

impl EnsembleKind {
    /// Every kind: what [`EnsembleKind::parse`] accepts and a bundle may hold per category.
    pub const ALL: [EnsembleKind; 2] = [EnsembleKind::WinClip, EnsembleKind::Descriptions];

    /// `"winclip"` or `"descriptions"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EnsembleKind::WinClip => "winclip",
            EnsembleKind::Descriptions => "descriptions",
        }
    }

    /// Parses `"winclip"` or `"descriptions"` (case-insensitive).
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| anyhow!("unknown prompt ensemble {s:?} (expected \"winclip\" or \"descriptions\")"))
    }
}

impl FromStr for EnsembleKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for EnsembleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The normal and anomalous prompts of a category for an ensemble kind.
pub fn ensemble(cat: &Category, kind: EnsembleKind) -> (Vec<String>, Vec<String>) {
    match kind {
        EnsembleKind::WinClip => winclip_ensemble(&cat.object),
        EnsembleKind::Descriptions => descriptions_ensemble(&cat.object, &cat.defects),
    }
}

// ---------------------------------------------------------------------------------------------
// The bundled prompt file
// ---------------------------------------------------------------------------------------------

/// Metadata key of the bundle's JSON index.
pub const BUNDLE_METADATA_KEY: &str = "anoscope_prompts";

/// Version of the bundle format written by [`PromptBundle::to_bytes`].
pub const BUNDLE_FORMAT: u32 = 1;

/// Largest embedding dimension a bundle may declare.
const MAX_EMBED_DIM: usize = 1 << 16;

/// Largest prompt file accepted (bytes), checked before it is read: 64 MiB. A bundle of all
/// bundled categories for a 768-dimensional model is about 0.3 MB.
pub const MAX_BUNDLE_BYTES: u64 = 64 << 20;

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn check_sha256(what: &str, s: &str) -> Result<String> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        let shown: String = s.chars().take(80).collect();
        bail!("{what} must be 64 hex digits (a sha256), got {shown:?}");
    }
    Ok(s.to_ascii_lowercase())
}

/// Text embeddings of one category and ensemble kind.
#[derive(Clone, Debug, PartialEq)]
pub struct BundleEntry {
    /// Name of the category the prompts were built for ([`Category::name`]).
    pub category: String,
    /// Object name the prompts used ([`Category::object`]).
    pub object: String,
    /// The ensemble the prompts came from.
    pub kind: EnsembleKind,
    /// Number of normal prompts averaged (1 to [`MAX_PROMPTS_PER_SIDE`]).
    pub n_normal: usize,
    /// Number of anomalous prompts averaged (1 to [`MAX_PROMPTS_PER_SIDE`]).
    pub n_anomalous: usize,
    /// The averaged class embeddings, unit vectors of length [`PromptBundle::embed_dim`].
    pub text: TextPair,
}

impl BundleEntry {
    /// The safetensors tensor name: `"{category}/{kind}"`.
    pub fn tensor_name(&self) -> String {
        format!("{}/{}", self.category, self.kind.as_str())
    }
}

/// Precomputed text embeddings for one model: a safetensors file with one F32 tensor
/// `"{category}/{kind}"` of shape `[2, embed_dim]` per entry (row 0 normal, row 1 anomalous,
/// unit vectors), and a JSON index under the metadata key [`BUNDLE_METADATA_KEY`].
#[derive(Clone, Debug, PartialEq)]
pub struct PromptBundle {
    /// Free-form name of the model it was built for (`prompts build` uses the model folder's
    /// name); informational, not checked.
    pub model_id: String,
    /// Lowercase hex SHA-256 of the model's weights file; checked on load when the caller knows
    /// the model's hash.
    pub model_sha256: String,
    /// Dimension P of every embedding (the model's joint image-text space).
    pub embed_dim: usize,
    /// One entry per category and ensemble kind (no duplicates).
    pub entries: Vec<BundleEntry>,
}

#[derive(Serialize, Deserialize)]
struct BundleIndex {
    format: u32,
    model_id: String,
    model_sha256: String,
    embed_dim: usize,
    entries: Vec<IndexEntry>,
}

#[derive(Serialize, Deserialize)]
struct IndexEntry {
    category: String,
    object: String,
    kind: String,
    tensor: String,
    n_normal: usize,
    n_anomalous: usize,
}

/// Encodes every category × kind with the model's text tower (see [`TextPair::from_prompts`]).
/// `progress(done, total)` is called after each entry. `model_sha256` is the hex SHA-256 of the
/// model's weights file (see [`sha256_hex`]).
pub fn build_bundle(
    clip: &Clip,
    tok: &ClipTokenizer,
    model_id: &str,
    model_sha256: &str,
    cats: &[Category],
    kinds: &[EnsembleKind],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PromptBundle> {
    check_text("model id", model_id)?;
    let model_sha256 = check_sha256("model sha256", model_sha256)?;
    if cats.is_empty() || kinds.is_empty() {
        bail!("a prompt bundle needs at least one category and one ensemble kind");
    }
    if cats.len() > MAX_CATEGORIES {
        bail!(
            "too many categories for one prompt bundle: {} (at most {MAX_CATEGORIES})",
            cats.len()
        );
    }
    let mut seen = HashSet::new();
    for c in cats {
        c.validate()?;
        if !seen.insert(c.name.as_str()) {
            bail!("category {:?} is listed twice", c.name);
        }
    }
    let mut seen_kinds = HashSet::new();
    for k in kinds {
        if !seen_kinds.insert(*k) {
            bail!("ensemble kind {k} is listed twice");
        }
    }
    if clip.text.is_none() {
        bail!("this checkpoint has no text tower; cannot build a prompt bundle");
    }
    let embed_dim = clip.cfg.embed_dim;
    let total = cats.len() * kinds.len();
    let mut entries = Vec::with_capacity(total);
    for cat in cats {
        for &kind in kinds {
            let (normal, anomalous) = ensemble(cat, kind);
            check_ensemble(&normal, &anomalous)?;
            let text = TextPair::from_prompts(clip, tok, &normal, &anomalous)
                .with_context(|| format!("encoding the {kind} prompts of category {:?}", cat.name))?;
            if text.dim() != embed_dim {
                bail!(
                    "text embeddings have dimension {}, the model's embed_dim is {embed_dim}",
                    text.dim()
                );
            }
            entries.push(BundleEntry {
                category: cat.name.clone(),
                object: cat.object.clone(),
                kind,
                n_normal: normal.len(),
                n_anomalous: anomalous.len(),
                text,
            });
            progress(entries.len(), total);
        }
    }
    let bundle = PromptBundle {
        model_id: model_id.to_string(),
        model_sha256,
        embed_dim,
        entries,
    };
    bundle.validate()?;
    Ok(bundle)
}

/// Checks that a row is finite and of unit length (within 1e-3).
fn check_unit_row(what: &str, row: &[f32]) -> Result<()> {
    if let Some(i) = row.iter().position(|v| !v.is_finite()) {
        bail!("{what} contains a non-finite value ({}) at index {i}", row[i]);
    }
    let norm = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt();
    if (norm - 1.0).abs() > 1e-3 {
        bail!("{what} is not a unit vector (norm {norm:.6})");
    }
    Ok(())
}

impl PromptBundle {
    /// The entry of a category and kind.
    pub fn get(&self, category: &str, kind: EnsembleKind) -> Option<&BundleEntry> {
        self.entries.iter().find(|e| e.category == category && e.kind == kind)
    }

    /// Checks the invariants [`PromptBundle::from_bytes`] relies on.
    pub fn validate(&self) -> Result<()> {
        check_text("model id", &self.model_id)?;
        check_sha256("model sha256", &self.model_sha256)?;
        if self.embed_dim == 0 || self.embed_dim > MAX_EMBED_DIM {
            bail!("embed_dim {} is out of range (1 to {MAX_EMBED_DIM})", self.embed_dim);
        }
        let max_entries = MAX_CATEGORIES * EnsembleKind::ALL.len();
        if self.entries.is_empty() || self.entries.len() > max_entries {
            bail!(
                "a prompt bundle must have 1 to {max_entries} entries (got {})",
                self.entries.len()
            );
        }
        let mut seen = HashSet::new();
        for e in &self.entries {
            check_category_name(&e.category)?;
            let name = e.tensor_name();
            check_text(&format!("object name of {name}"), &e.object)?;
            if !seen.insert((e.category.as_str(), e.kind)) {
                bail!("prompt bundle lists {name} twice");
            }
            for (side, n) in [("n_normal", e.n_normal), ("n_anomalous", e.n_anomalous)] {
                if n == 0 || n > MAX_PROMPTS_PER_SIDE {
                    bail!("{name}: {side} = {n} is out of range (1 to {MAX_PROMPTS_PER_SIDE})");
                }
            }
            for (side, row) in [("normal", &e.text.normal), ("anomalous", &e.text.anomalous)] {
                if row.len() != self.embed_dim {
                    bail!(
                        "{name}: {side} embedding has dimension {}, the bundle's embed_dim is {}",
                        row.len(),
                        self.embed_dim
                    );
                }
                check_unit_row(&format!("{name}: {side} embedding"), row)?;
            }
        }
        Ok(())
    }

    /// Serialises the bundle to safetensors bytes (validates first).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let index = BundleIndex {
            format: BUNDLE_FORMAT,
            model_id: self.model_id.clone(),
            model_sha256: self.model_sha256.clone(),
            embed_dim: self.embed_dim,
            entries: self
                .entries
                .iter()
                .map(|e| IndexEntry {
                    category: e.category.clone(),
                    object: e.object.clone(),
                    kind: e.kind.as_str().to_string(),
                    tensor: e.tensor_name(),
                    n_normal: e.n_normal,
                    n_anomalous: e.n_anomalous,
                })
                .collect(),
        };
        let data: Vec<(String, Vec<u8>)> = self
            .entries
            .iter()
            .map(|e| {
                let bytes = e
                    .text
                    .normal
                    .iter()
                    .chain(&e.text.anomalous)
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                (e.tensor_name(), bytes)
            })
            .collect();
        let views = data
            .iter()
            .map(|(name, bytes)| {
                let view =
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, self.embed_dim], bytes)?;
                Ok((name.clone(), view))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = HashMap::from([(BUNDLE_METADATA_KEY.to_string(), serde_json::to_string(&index)?)]);
        Ok(safetensors::serialize(views, Some(metadata))?)
    }

    /// Reads and validates the prompt file at `path` ([`PromptBundle::from_bytes`]); its size is
    /// checked against [`MAX_BUNDLE_BYTES`] before it is read. Errors name the file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_file(path: &std::path::Path, expected_model_sha256: Option<&str>) -> Result<PromptBundle> {
        let p = path.display();
        let size = std::fs::metadata(path)
            .map_err(|e| anyhow!("cannot read prompt file {p}: {e}"))?
            .len();
        if size > MAX_BUNDLE_BYTES {
            bail!("prompt file {p} is {size} bytes, over the limit of {MAX_BUNDLE_BYTES} bytes");
        }
        let bytes = std::fs::read(path).map_err(|e| anyhow!("cannot read prompt file {p}: {e}"))?;
        Self::from_bytes(&bytes, expected_model_sha256).with_context(|| format!("prompt file {p}"))
    }

    /// Reads and validates a bundle. With `expected_model_sha256`, a bundle built for another
    /// model is rejected. Never panics on malformed input; every failure is a descriptive error.
    pub fn from_bytes(bytes: &[u8], expected_model_sha256: Option<&str>) -> Result<PromptBundle> {
        use safetensors::SafeTensors;
        if bytes.is_empty() {
            bail!("not a valid safetensors prompt file: it is empty (0 bytes)");
        }
        if bytes.len() as u64 > MAX_BUNDLE_BYTES {
            bail!(
                "the prompt file is {} bytes, over the limit of {MAX_BUNDLE_BYTES} bytes",
                bytes.len()
            );
        }
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| anyhow!("not a valid safetensors prompt file (truncated or corrupt?): {e}"))?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| anyhow!("not a valid safetensors prompt file (truncated or corrupt?): {e}"))?;
        let index_json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(BUNDLE_METADATA_KEY))
            .ok_or_else(|| anyhow!("not an anoscope prompt file: metadata key {BUNDLE_METADATA_KEY:?} is missing"))?;
        let index: BundleIndex = serde_json::from_str(index_json)
            .map_err(|e| anyhow!("invalid prompt file index ({BUNDLE_METADATA_KEY:?}): {e}"))?;
        if index.format != BUNDLE_FORMAT {
            bail!(
                "unsupported prompt file format {} (this build reads format {BUNDLE_FORMAT})",
                index.format
            );
        }
        let model_sha256 = check_sha256("prompt file index: model_sha256", &index.model_sha256)?;
        if let Some(expected) = expected_model_sha256 {
            let expected = check_sha256("expected model sha256", expected)?;
            if expected != model_sha256 {
                bail!("prompt file was built for model sha256 {model_sha256}, this model is {expected}");
            }
        }
        let dim = index.embed_dim;
        if dim == 0 || dim > MAX_EMBED_DIM {
            bail!("prompt file index: embed_dim {dim} is out of range (1 to {MAX_EMBED_DIM})");
        }
        let max_entries = MAX_CATEGORIES * EnsembleKind::ALL.len();
        if index.entries.is_empty() || index.entries.len() > max_entries {
            bail!(
                "prompt file index must list 1 to {max_entries} entries (got {})",
                index.entries.len()
            );
        }
        if st.len() != index.entries.len() {
            let listed: HashSet<&str> = index.entries.iter().map(|e| e.tensor.as_str()).collect();
            if let Some(extra) = st.names().into_iter().find(|n| !listed.contains(n)) {
                bail!("prompt file has tensor {extra:?}, which its index does not list");
            }
        }
        let mut entries = Vec::with_capacity(index.entries.len());
        for ie in &index.entries {
            let kind = EnsembleKind::parse(&ie.kind).context("prompt file index")?;
            check_category_name(&ie.category).context("prompt file index")?;
            let name = format!("{}/{}", ie.category, kind.as_str());
            if ie.tensor != name {
                bail!(
                    "prompt file index: entry {name} names tensor {:?} (expected {name:?})",
                    ie.tensor
                );
            }
            let view = st
                .tensor(&name)
                .map_err(|_| anyhow!("prompt file: tensor {name:?} listed in the index is missing"))?;
            if view.dtype() != safetensors::Dtype::F32 {
                bail!(
                    "prompt file: tensor {name:?} has dtype {:?} (expected F32)",
                    view.dtype()
                );
            }
            match view.shape() {
                [2, d] if *d == dim => {}
                [2, d] => {
                    bail!("prompt file: tensor {name:?} has embedding dimension {d}, the index says embed_dim {dim}")
                }
                s => bail!("prompt file: tensor {name:?} has shape {s:?} (expected [2, {dim}])"),
            }
            let data = view.data();
            if data.len() != 2 * dim * 4 {
                bail!(
                    "prompt file: tensor {name:?} has {} bytes (expected {})",
                    data.len(),
                    2 * dim * 4
                );
            }
            let values: Vec<f32> = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let (normal, anomalous) = values.split_at(dim);
            entries.push(BundleEntry {
                category: ie.category.clone(),
                object: ie.object.clone(),
                kind,
                n_normal: ie.n_normal,
                n_anomalous: ie.n_anomalous,
                text: TextPair {
                    normal: normal.to_vec(),
                    anomalous: anomalous.to_vec(),
                },
            });
        }
        let bundle = PromptBundle {
            model_id: index.model_id,
            model_sha256,
            embed_dim: dim,
            entries,
        };
        bundle.validate().context("invalid prompt file")?;
        Ok(bundle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensemble_counts_and_order() {
        let (n, a) = winclip_ensemble("bottle");
        assert_eq!((n.len(), a.len()), (147, 84));
        assert_eq!(n[0], "a cropped photo of the bottle.");
        assert_eq!(n[21], "a cropped photo of the flawless bottle.");
        assert_eq!(a[0], "a cropped photo of the damaged bottle.");
        assert_eq!(a[83], "a photo of a bottle with damage for anomaly detection.");
    }

    #[test]
    fn descriptions_ensemble_appends_defects() {
        let defects = vec!["a crack".to_string(), "a broken rim".to_string()];
        let (n, a) = descriptions_ensemble("bottle", &defects);
        assert_eq!((n.len(), a.len()), (147, 84 + 42));
        assert_eq!(a[84], "a cropped photo of the bottle with a crack.");
        assert_eq!(a[125], "a photo of a bottle with a broken rim for anomaly detection.");
    }

    #[test]
    fn kinds_round_trip() {
        for k in EnsembleKind::ALL {
            assert_eq!(EnsembleKind::parse(k.as_str()).unwrap(), k);
            assert_eq!(k.to_string().parse::<EnsembleKind>().unwrap(), k);
        }
        assert!(EnsembleKind::parse("filo").is_err());
    }
}
