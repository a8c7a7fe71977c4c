//! Detection from JS: `ClipModel.detect`, `ClipModel.references`, `ClipModel.batch` and their
//! result types. Images are preprocessed exactly as `anoscope detect` does (Pillow-exact bicubic
//! resize to the checkpoint's square input), then scored by [`crate::detect::score_image`] or
//! [`crate::detect::musc`].
use super::{js_err, ClipModel, Image, MAX_BATCH, MAX_REFERENCES};
use crate::detect::passes::{self, Passes};
use crate::detect::{self as det, adaptclip, fast, musc, winclip, Mode, TextPair};
use crate::model::Clip;
use crate::preprocess::{self, Normalize};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use wasm_bindgen::prelude::*;

/// The result for one image: score, map and the model's input picture.
#[wasm_bindgen]
#[derive(Clone)]
pub struct Detection {
    score: f32,
    width: usize,
    height: usize,
    map: Vec<f32>,
    input: Vec<u8>,
}

#[wasm_bindgen]
impl Detection {
    /// Image anomaly score in `[0, 1]`.
    #[wasm_bindgen(getter)]
    pub fn score(&self) -> f32 {
        self.score
    }

    /// Map width (the model's input size).
    #[wasm_bindgen(getter)]
    pub fn width(&self) -> usize {
        self.width
    }

    /// Map height (the model's input size).
    #[wasm_bindgen(getter)]
    pub fn height(&self) -> usize {
        self.height
    }

    /// The anomaly map, `Float32Array [height·width]` row-major, values in `[0, 1]`.
    pub fn map(&self) -> Vec<f32> {
        self.map.clone()
    }

    /// The picture the model saw (the resized input), `Uint8Array` RGBA `[height·width·4]`.
    pub fn input(&self) -> Vec<u8> {
        self.input.clone()
    }
}

impl Detection {
    pub(super) fn new(d: det::Detection, input: &RgbImage) -> Self {
        Self {
            score: d.score,
            width: d.width,
            height: d.height,
            map: d.map,
            input: input.pixels().flat_map(|p| [p[0], p[1], p[2], 255]).collect(),
        }
    }
}

/// Few-shot reference features, kept in wasm under a handle so that `detect` can borrow them
/// from an optional argument (wasm-bindgen can only move optional class arguments).
pub(super) struct RefSet {
    model: u32,
    /// WinCLIP+'s features (`references`, few-shot mode).
    pub refs: Option<winclip::References>,
    /// AdaptCLIP's (`adaptReferences`, few-shot adaptclip).
    pub adapt: Option<adaptclip::References>,
}

thread_local! {
    static REF_SETS: RefCell<HashMap<u32, Rc<RefSet>>> = RefCell::new(HashMap::new());
}
static NEXT_REF_SET: AtomicU32 = AtomicU32::new(1);

/// Normal reference images for few-shot mode (WinCLIP+), embedded once by
/// `ClipModel.references`; pass it to every `detect("fewshot", …)` call. Few-shot AdaptCLIP's,
/// from `ClipModel.adaptReferences`, go to `detect("adaptclip", …)`. `free()` releases it.
#[wasm_bindgen]
pub struct References {
    handle: u32,
    count: usize,
}

impl Drop for References {
    fn drop(&mut self) {
        REF_SETS.with(|r| r.borrow_mut().remove(&self.handle));
    }
}

#[wasm_bindgen]
impl References {
    /// The number of reference images.
    #[wasm_bindgen(getter)]
    pub fn length(&self) -> usize {
        self.count
    }

    /// The handle `detect` looks the features up by.
    #[wasm_bindgen(getter)]
    pub fn handle(&self) -> u32 {
        self.handle
    }
}

/// The reference set behind a JS `References` object (`undefined` / `null` → `None`).
fn ref_set(refs: &JsValue) -> Result<Option<Rc<RefSet>>> {
    if refs.is_undefined() || refs.is_null() {
        return Ok(None);
    }
    // The getter throws for a freed object.
    let handle = js_sys::Reflect::get(refs, &JsValue::from_str("handle"))
        .map_err(|_| anyhow!("these reference images were released (free()); call references(images) again"))?
        .as_f64()
        .context("the references argument must be a References object made by references(images)")?;
    let set = REF_SETS.with(|r| r.borrow().get(&(handle as u32)).cloned());
    set.map(Some)
        .context("these reference images were released (free()); call references(images) again")
}

/// What a per-image detection needs besides the pixels ([`ClipModel::score_args`]).
pub(super) struct ScoreArgs {
    pub mode: Mode,
    pub pair: TextPair,
    pub refs: Option<Rc<RefSet>>,
    pub surgery_layers: usize,
    /// The side the image is resized to: the checkpoint's input, or the learned mode's size.
    pub size: usize,
    /// AdaptCLIP's adapters and class pairs (the adaptclip mode).
    pub adapt: Option<Rc<adaptclip::AdaptClip>>,
}

impl ScoreArgs {
    /// Scores normalised `pixels: [1, 3, H, W]` with the image tower's passes run by `tower`:
    /// [`det::score_image_on`], or AdaptCLIP's zero-shot detection.
    pub async fn score_on(&self, clip: &Clip, tower: &impl Passes, pixels: &Tensor) -> Result<det::Detection> {
        let Some(ready) = &self.adapt else {
            let refs = self.refs.as_ref().and_then(|s| s.refs.as_ref());
            let cfg = winclip::WinClipConfig::default();
            let k = self.surgery_layers;
            return det::score_image_on(clip, tower, pixels, self.mode, &self.pair, refs, k, &cfg).await;
        };
        adaptclip::detect_one_on(clip, tower, ready, pixels, self.adapt_refs()).await
    }

    /// What a tiled run scores each pass with (the same mode, class pair, references and
    /// AdaptCLIP adapters as [`ScoreArgs::score_on`]).
    pub fn tile_scoring<'a>(&'a self, cfg: &'a winclip::WinClipConfig) -> crate::detect::tiles::TileScoring<'a> {
        crate::detect::tiles::TileScoring {
            mode: self.mode,
            text: &self.pair,
            refs: self.refs.as_ref().and_then(|s| s.refs.as_ref()),
            surgery_layers: self.surgery_layers,
            cfg,
            adapt: self.adapt.as_deref().map(|ready| crate::detect::tiles::AdaptScoring {
                ready,
                refs: self.adapt_refs(),
            }),
        }
    }

    /// AdaptCLIP's references, when this is a few-shot adaptclip detection.
    fn adapt_refs(&self) -> Option<&adaptclip::References> {
        self.refs.as_ref().and_then(|s| s.adapt.as_ref())
    }
}

/// Keeps few-shot features under a new handle for model `model`.
pub(super) fn register(model: u32, refs: winclip::References, count: usize) -> References {
    let handle = NEXT_REF_SET.fetch_add(1, Ordering::Relaxed);
    let set = Rc::new(RefSet {
        model,
        refs: Some(refs),
        adapt: None,
    });
    REF_SETS.with(|r| r.borrow_mut().insert(handle, set));
    References { handle, count }
}

/// Keeps few-shot AdaptCLIP features under a new handle for model `model`.
pub(super) fn register_adapt(model: u32, refs: adaptclip::References, count: usize) -> References {
    let handle = NEXT_REF_SET.fetch_add(1, Ordering::Relaxed);
    let set = Rc::new(RefSet {
        model,
        refs: None,
        adapt: Some(refs),
    });
    REF_SETS.with(|r| r.borrow_mut().insert(handle, set));
    References { handle, count }
}

/// MuSc's progress callback calling the page's `progress(done, total, stage)`, if any.
pub(super) fn batch_progress(progress: Option<&js_sys::Function>) -> impl FnMut(usize, usize, &str) -> Result<()> + '_ {
    move |done, total, stage| {
        if let Some(f) = progress {
            f.call3(
                &JsValue::NULL,
                &JsValue::from(done as u32),
                &JsValue::from(total as u32),
                &JsValue::from_str(stage),
            )
            .map_err(|e| anyhow!("batch stopped: {}", super::js_message(&e)))?;
        }
        Ok(())
    }
}

/// The results of one batch (MuSc) run.
#[wasm_bindgen]
pub struct BatchResult {
    detections: Vec<Detection>,
}

impl BatchResult {
    /// The page's result: maps on one range for the batch, with the pictures the model saw.
    pub(super) fn new(mut out: musc::MuscOutput, inputs: &[RgbImage]) -> Self {
        musc::unit_range_maps(&mut out.detections);
        Self {
            detections: out
                .detections
                .into_iter()
                .zip(inputs)
                .map(|(d, input)| Detection::new(d, input))
                .collect(),
        }
    }
}

#[wasm_bindgen]
impl BatchResult {
    /// The number of images.
    #[wasm_bindgen(getter)]
    pub fn length(&self) -> usize {
        self.detections.len()
    }

    /// `Float32Array` of the image scores (RsCIN), in input order.
    pub fn scores(&self) -> Vec<f32> {
        self.detections.iter().map(|d| d.score).collect()
    }

    /// Image `i`'s detection. Batch maps are rescaled with one range for the whole batch (its
    /// smallest and largest patch distance become 0 and 1), so they compare across the batch.
    pub fn detection(&self, i: usize) -> Result<Detection, JsError> {
        self.detections.get(i).cloned().ok_or_else(|| {
            JsError::new(&format!(
                "no image {i} in this batch of {} (indices start at 0)",
                self.detections.len()
            ))
        })
    }
}

impl ClipModel {
    /// The model's input: the image resized to `size × size` (as the CLI does) and its
    /// normalised CHW pixels.
    fn model_input(&self, img: &RgbImage, size: usize) -> (RgbImage, Vec<f32>) {
        let size = size as u32;
        let resized = preprocess::resize_bicubic(img, size, size);
        let norm = Normalize {
            mean: self.clip.cfg.mean,
            std: self.clip.cfg.std,
        };
        let chw = preprocess::to_chw(&resized, &norm);
        (resized, chw)
    }

    /// Preprocesses `images` into one `[n, 3, S, S]` batch.
    fn batch_input(&self, images: &[Image]) -> Result<(Vec<RgbImage>, Tensor)> {
        let s = self.clip.cfg.vision.image_size;
        let mut data = Vec::with_capacity(images.len() * 3 * s * s);
        let mut inputs = Vec::with_capacity(images.len());
        for im in images {
            let (resized, chw) = self.model_input(&im.img, s);
            data.extend(chw);
            inputs.push(resized);
        }
        Ok((inputs, Tensor::from_vec(data, (images.len(), 3, s, s), &Device::Cpu)?))
    }

    /// Scores normalised pixels `[1, 3, H, W]` in a per-image mode.
    fn score(
        &self,
        mode: &str,
        pixels: &Tensor,
        text: &[f32],
        refs: &JsValue,
        surgery_layers: usize,
    ) -> Result<det::Detection> {
        let args = self.score_args(mode, text, refs, surgery_layers)?;
        passes::now(args.score_on(&self.clip, &self.clip.vision, pixels))
    }

    /// Checks and resolves the arguments of a per-image detection.
    pub(super) fn score_args(
        &self,
        mode: &str,
        text: &[f32],
        refs: &JsValue,
        surgery_layers: usize,
    ) -> Result<ScoreArgs> {
        let mode: Mode = mode.parse()?;
        if mode == Mode::Batch {
            bail!("batch mode scores several images together: call batch(images)");
        }
        if mode.learned() {
            // The class pair (or AdaptCLIP's adapters) is the learned file's; `text` is not used.
            let learned = self.learned.as_ref().with_context(|| {
                format!(
                    "the {mode} mode needs its learned file: load it first (loadLearned, anoscope convert --learned)"
                )
            })?;
            if learned.mode != mode {
                bail!("the loaded learned file is for the {} mode, not {mode}", learned.mode);
            }
            // AdaptCLIP with references (adaptReferences) is few-shot; without, zero-shot.
            let set = match ref_set(refs)? {
                Some(set) if mode == Mode::Adaptclip => {
                    if set.model != self.id {
                        bail!(
                            "these reference images were embedded by another model; call adaptReferences(images) again"
                        );
                    }
                    if set.adapt.is_none() {
                        bail!(
                            "few-shot AdaptCLIP needs references from adaptReferences(images), not references(images) \
                             (WinCLIP+'s)"
                        );
                    }
                    Some(set)
                }
                _ => None,
            };
            return Ok(ScoreArgs {
                mode,
                pair: learned.pair.clone(),
                refs: set,
                surgery_layers: 0,
                size: learned.size,
                adapt: learned.adapt.clone(),
            });
        }
        let p = self.clip.cfg.embed_dim;
        if text.len() != 2 * p {
            bail!(
                "the class pair must hold 2×{p} values (textPair's result for this checkpoint), got {}",
                text.len()
            );
        }
        let pair = TextPair::new(text[..p].to_vec(), text[p..].to_vec())?;
        let set = if mode == Mode::Fewshot {
            let set = ref_set(refs)?
                .context("few-shot mode needs normal reference images: call references(images) and pass the result")?;
            if set.model != self.id {
                bail!("these reference images were embedded by another model; call references(images) again");
            }
            if set.refs.is_none() {
                bail!("these references were embedded for AdaptCLIP (adaptReferences); call references(images) for few-shot mode");
            }
            Some(set)
        } else {
            None
        };
        let k = if surgery_layers == 0 {
            fast::default_surgery_layers(&self.clip)
        } else {
            surgery_layers
        };
        Ok(ScoreArgs {
            mode,
            pair,
            refs: set,
            surgery_layers: k,
            size: self.clip.cfg.vision.image_size,
            adapt: None,
        })
    }

    /// The model's input for one image at side `size`: the resized picture and its
    /// `[1, 3, size, size]` pixels.
    pub(super) fn image_input(&self, image: &Image, size: usize) -> Result<(RgbImage, Tensor)> {
        let (resized, chw) = self.model_input(&image.img, size);
        let s = resized.width() as usize;
        Ok((resized, Tensor::from_vec(chw, (1, 3, s, s), &Device::Cpu)?))
    }

    fn detect_impl(&self, mode: &str, image: &Image, text: &[f32], refs: &JsValue) -> Result<Detection> {
        let args = self.score_args(mode, text, refs, 0)?;
        let (resized, t) = self.image_input(image, args.size)?;
        let d = passes::now(args.score_on(&self.clip, &self.clip.vision, &t))?;
        Ok(Detection::new(d, &resized))
    }

    fn pixels_tensor(&self, pixels: &[f32], count: usize, height: usize, width: usize) -> Result<Tensor> {
        let n = count.checked_mul(3 * height).and_then(|v| v.checked_mul(width));
        if n != Some(pixels.len()) || pixels.is_empty() {
            bail!(
                "pixels hold {} values, expected {count}×3×{height}×{width} (normalised CHW)",
                pixels.len()
            );
        }
        Ok(Tensor::from_slice(pixels, (count, 3, height, width), &Device::Cpu)?)
    }

    fn register(&self, refs: winclip::References, count: usize) -> References {
        register(self.id, refs, count)
    }

    /// Checks the number of reference images and preprocesses them into one batch.
    pub(super) fn references_input(&self, images: &[Image]) -> Result<Tensor> {
        if images.is_empty() || images.len() > MAX_REFERENCES {
            bail!(
                "few-shot mode takes 1 to {MAX_REFERENCES} normal reference images, got {}",
                images.len()
            );
        }
        Ok(self.batch_input(images)?.1)
    }

    fn adapt_references_impl(&self, images: &[Image]) -> Result<References> {
        let (ready, size) = match &self.learned {
            Some(l) if l.mode == Mode::Adaptclip => (l.adapt.as_ref().context("AdaptCLIP's adapters")?, l.size),
            _ => bail!("few-shot AdaptCLIP needs its learned file: load it first (loadLearned)"),
        };
        if ready.learned.pq.is_none() {
            bail!("this learned file has no prompt-query adapter (pq_learner): few-shot AdaptCLIP needs it");
        }
        if images.is_empty() || images.len() > MAX_REFERENCES {
            bail!(
                "few-shot AdaptCLIP takes 1 to {MAX_REFERENCES} normal reference images, got {}",
                images.len()
            );
        }
        let mut data = Vec::with_capacity(images.len() * 3 * size * size);
        for im in images {
            data.extend(self.model_input(&im.img, size).1);
        }
        let t = Tensor::from_vec(data, (images.len(), 3, size, size), &Device::Cpu)?;
        let refs = adaptclip::references(&self.clip, &t)?;
        Ok(register_adapt(self.id, refs, images.len()))
    }

    fn references_impl(&self, images: &[Image]) -> Result<References> {
        let t = self.references_input(images)?;
        let refs = winclip::references(&self.clip, &t, &winclip::WinClipConfig::default())?;
        Ok(self.register(refs, images.len()))
    }

    /// Checks the batch size and preprocesses the images (the resized pictures and one batch).
    pub(super) fn batch_images(&self, images: &[Image]) -> Result<(Vec<RgbImage>, Tensor)> {
        if images.len() < 2 || images.len() > MAX_BATCH {
            bail!(
                "batch mode (MuSc) scores 2 to {MAX_BATCH} images together, got {}",
                images.len()
            );
        }
        self.batch_input(images)
    }

    fn batch_impl(&self, images: &[Image], progress: Option<&js_sys::Function>) -> Result<BatchResult> {
        let (inputs, t) = self.batch_images(images)?;
        let mut report = batch_progress(progress);
        let out = musc::detect_with_progress(&self.clip, &t, &musc::MuscConfig::default(), &mut report)?;
        Ok(BatchResult::new(out, &inputs))
    }
}

#[wasm_bindgen]
impl ClipModel {
    /// Scores one image with `mode` = `fast`, `winclip` or `fewshot` against a class pair
    /// (`textPair`'s result), or `anomalyclip` / `adaptclip` with the learned file (`loadLearned`;
    /// `text` is then ignored). `refs` (from `references`) is required for `fewshot`; with
    /// `adaptclip`, refs from `adaptReferences` make it few-shot; ignored otherwise. The image is
    /// resized to the checkpoint's square input (the learned mode's size for the learned modes)
    /// as `anoscope detect` does; the map has that size.
    pub fn detect(
        &self,
        mode: &str,
        image: &Image,
        text: &[f32],
        #[wasm_bindgen(unchecked_param_type = "References | undefined")] refs: JsValue,
    ) -> Result<Detection, JsError> {
        self.detect_impl(mode, image, text, &refs).map_err(js_err)
    }

    /// [`ClipModel::detect`] on already normalised pixels `[1, 3, height, width]` (CHW), for
    /// fidelity tests against reference implementations. `surgeryLayers` is fast mode's K (0 =
    /// half the tower). `input()` is the pixels denormalised with the checkpoint's mean and std.
    #[wasm_bindgen(js_name = detectPixels)]
    #[allow(clippy::too_many_arguments)] // a positional JS signature, like `detect`'s
    pub fn detect_pixels(
        &self,
        mode: &str,
        pixels: &[f32],
        height: usize,
        width: usize,
        text: &[f32],
        surgery_layers: usize,
        #[wasm_bindgen(unchecked_param_type = "References | undefined")] refs: JsValue,
    ) -> Result<Detection, JsError> {
        let run = || -> Result<Detection> {
            let t = self.pixels_tensor(pixels, 1, height, width)?;
            let d = self.score(mode, &t, text, &refs, surgery_layers)?;
            let cfg = &self.clip.cfg;
            let input = crate::render::normalized_pixels_to_rgb(pixels, height, width, cfg.mean, cfg.std);
            Ok(Detection::new(d, &input))
        };
        run().map_err(js_err)
    }

    /// [`ClipModel::references`] from normalised pixels `[count, 3, height, width]`.
    #[wasm_bindgen(js_name = referencesPixels)]
    pub fn references_pixels(
        &self,
        pixels: &[f32],
        count: usize,
        height: usize,
        width: usize,
    ) -> Result<References, JsError> {
        let run = || -> Result<References> {
            if count == 0 || count > MAX_REFERENCES {
                bail!("few-shot mode takes 1 to {MAX_REFERENCES} normal reference images, got {count}");
            }
            let t = self.pixels_tensor(pixels, count, height, width)?;
            let refs = winclip::references(&self.clip, &t, &winclip::WinClipConfig::default())?;
            Ok(self.register(refs, count))
        };
        run().map_err(js_err)
    }

    /// Embeds 1..=`limits().maxReferences` normal reference images for few-shot AdaptCLIP
    /// (`detect("adaptclip", image, text, refs)`), resized to the learned size as the queries are;
    /// needs the AdaptCLIP learned file (`loadLearned`) with its prompt-query adapter. Runs on the
    /// CPU (few-shot AdaptCLIP reads four layers of the tower, which the GPU path does not
    /// return). Takes the images over.
    #[wasm_bindgen(js_name = adaptReferences)]
    pub fn adapt_references(&self, images: Vec<Image>) -> Result<References, JsError> {
        self.adapt_references_impl(&images).map_err(js_err)
    }

    /// Embeds 1..=`limits().maxReferences` normal reference images for few-shot mode. Takes the
    /// images over (their JS objects are spent).
    pub fn references(&self, images: Vec<Image>) -> Result<References, JsError> {
        self.references_impl(&images).map_err(js_err)
    }

    /// Batch mode (MuSc): 2..=`limits().maxBatch` images score each other (no text). Calls
    /// `progress(done, total, stage)` (stage `encoding`, then `scoring`) as it goes; if
    /// `progress` throws, the run stops with that message. Takes the images over.
    pub fn batch(&self, images: Vec<Image>, progress: Option<js_sys::Function>) -> Result<BatchResult, JsError> {
        self.batch_impl(&images, progress.as_ref()).map_err(js_err)
    }
}
