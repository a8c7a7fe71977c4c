//! The image tower on the browser's WebGPU (feature `gpu`, the single-threaded build): the
//! asynchronous twins of `detect`, `references` and `batch`. They run the same detection code as
//! the synchronous calls and the CLI ([`crate::detect`]'s `*_on` functions); only the image
//! tower's passes go to the GPU ([`GpuVision`]), whose results arrive on the event loop, hence
//! the promises. Any GPU failure (device lost, out of memory, a validation error, a failed pass)
//! switches the GPU off for the model and the pass is redone on the CPU; `gpuFailure()` then
//! says why, for the page to show.
use super::detect::{batch_progress, register, BatchResult, Detection};
use super::{js_err, ClipModel, Image};
use crate::detect::{musc, passes::Accelerated, winclip};
use crate::gpu::{GpuContext, GpuVision};
use crate::model::{AsyncVisionAccel, EncodeOptions, VisionOutput};
use anyhow::Result;
use candle_core::Tensor;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

/// A model's image tower on the GPU, and the failure that switched it off.
struct WebGpu {
    vision: GpuVision,
    failure: RefCell<Option<String>>,
}

impl AsyncVisionAccel for WebGpu {
    async fn forward(&self, pixels: &Tensor, _grid: (usize, usize), opts: &EncodeOptions) -> Result<VisionOutput> {
        self.vision.forward(pixels, opts).await
    }

    async fn forward_embedded(
        &self,
        embeddings: &Tensor,
        grid: (usize, usize),
        opts: &EncodeOptions,
    ) -> Result<VisionOutput> {
        self.vision.forward_embedded(embeddings, grid, opts).await
    }

    async fn forward_subsets(&self, embeddings: &Tensor, subsets: &[Vec<usize>]) -> Result<Tensor> {
        self.vision.forward_subsets(embeddings, subsets).await
    }

    fn disabled(&self) -> bool {
        self.vision.is_disabled()
    }

    fn fail(&self, error: &anyhow::Error) {
        self.vision.set_disabled();
        self.failure.borrow_mut().get_or_insert_with(|| format!("{error:#}"));
    }
}

thread_local! {
    /// The GPU towers by model id (a `ClipModel` cannot be borrowed by a pending promise).
    static GPUS: RefCell<HashMap<u32, Rc<WebGpu>>> = RefCell::new(HashMap::new());
}

/// Releases model `id`'s GPU tower (when the model is freed).
pub(super) fn forget(id: u32) {
    GPUS.with(|g| g.borrow_mut().remove(&id));
}

/// Test hook, as the CLI's `ANOSCOPE_GPU_FAIL`: `"adapter"` makes `useGpu` fail as without an
/// adapter, `"forward"` makes every GPU pass fail as a lost device would; `""` clears.
#[wasm_bindgen(js_name = setGpuFailure)]
pub fn set_gpu_failure(what: &str) {
    crate::gpu::force_failure(what);
}

fn js_result<T: Into<JsValue>>(r: Result<T>) -> Result<JsValue, JsValue> {
    r.map(Into::into).map_err(|e| js_err(e).into())
}

impl ClipModel {
    fn gpu(&self) -> Option<Rc<WebGpu>> {
        GPUS.with(|g| g.borrow().get(&self.id).cloned())
    }
}

#[wasm_bindgen]
impl ClipModel {
    /// Opens the browser's WebGPU device and uploads the image tower to it; resolves to the
    /// adapter's description. From then on the `*Async` calls run the image tower there. Rejects
    /// (and the model stays on the CPU) without WebGPU, an adapter or enough GPU memory.
    #[wasm_bindgen(js_name = useGpu, unchecked_return_type = "Promise<string>")]
    pub fn use_gpu(&self) -> js_sys::Promise {
        let tower = self.clip.vision.clone();
        let id = self.id;
        future_to_promise(async move {
            let run = async {
                let ctx = GpuContext::new().await?;
                // An int8 tower holds only its int8 weights here: the GPU gets them scaled back.
                let mut tower = tower.clone();
                tower.w.restore_f32()?;
                let vision = GpuVision::new(ctx, &tower).await?;
                let name = vision.ctx().describe();
                let gpu = Rc::new(WebGpu {
                    vision,
                    failure: RefCell::new(None),
                });
                GPUS.with(|g| g.borrow_mut().insert(id, gpu));
                Ok(name)
            };
            js_result(run.await)
        })
    }

    /// Whether the `*Async` calls run the image tower on the GPU (attached by `useGpu` and not
    /// switched off by a failure).
    #[wasm_bindgen(js_name = gpuActive)]
    pub fn gpu_active(&self) -> bool {
        self.gpu().is_some_and(|g| !g.disabled())
    }

    /// How the GPU stores the image tower's matrices: `"f16"` (where the adapter has
    /// `shader-f16` and that loses nothing) or `"f32"`; `undefined` before `useGpu`.
    #[wasm_bindgen(js_name = gpuWeights)]
    pub fn gpu_weights(&self) -> Option<String> {
        self.gpu()
            .map(|g| if g.vision.half() { "f16" } else { "f32" }.to_string())
    }

    /// The error that switched the GPU off (the call was redone on the CPU), if any.
    #[wasm_bindgen(js_name = gpuFailure)]
    pub fn gpu_failure(&self) -> Option<String> {
        self.gpu().and_then(|g| g.failure.borrow().clone())
    }

    /// `detect`, with the image tower on the GPU when `useGpu` attached one (else the CPU).
    #[wasm_bindgen(js_name = detectAsync, unchecked_return_type = "Promise<Detection>")]
    pub fn detect_async(
        &self,
        mode: &str,
        image: &Image,
        text: &[f32],
        #[wasm_bindgen(unchecked_param_type = "References | undefined")] refs: JsValue,
    ) -> js_sys::Promise {
        let prepared = self.score_args(mode, text, &refs, 0).and_then(|args| {
            let input = self.image_input(image, args.size)?;
            Ok((args, input))
        });
        let (clip, gpu) = (self.clip.clone(), self.gpu());
        future_to_promise(async move {
            let run = async {
                let (args, (resized, pixels)) = prepared?;
                let d = match &gpu {
                    Some(g) => {
                        let tower = Accelerated {
                            tower: &clip.vision,
                            accel: &**g,
                        };
                        args.score_on(&clip, &tower, &pixels).await?
                    }
                    None => args.score_on(&clip, &clip.vision, &pixels).await?,
                };
                Ok(Detection::new(d, &resized))
            };
            js_result(run.await)
        })
    }

    /// `detectTiled`, with the image tower on the GPU when `useGpu` attached one (else the CPU):
    /// the same plan, stitching and score; `progress(done, total)` after each pass, a throw stops
    /// the run between passes.
    #[wasm_bindgen(js_name = detectTiledAsync, unchecked_return_type = "Promise<TiledResult>")]
    #[allow(clippy::too_many_arguments)] // detectTiled's positional JS signature
    pub fn detect_tiled_async(
        &self,
        mode: &str,
        image: &Image,
        text: &[f32],
        #[wasm_bindgen(unchecked_param_type = "References | undefined")] refs: JsValue,
        tiles: &str,
        max_side: usize,
        progress: Option<js_sys::Function>,
    ) -> js_sys::Promise {
        use crate::detect::tiles;
        let prepared = self.tiled_args(mode, image, text, &refs, tiles);
        let photo = image.img.clone();
        let (clip, gpu) = (self.clip.clone(), self.gpu());
        future_to_promise(async move {
            let run = async {
                let (args, plan) = prepared?;
                let size = args.size;
                let cfg = winclip::WinClipConfig::default();
                let scoring = args.tile_scoring(&cfg);
                let norm = crate::preprocess::Normalize {
                    mean: clip.cfg.mean,
                    std: clip.cfg.std,
                };
                let mut report = super::photo::tile_progress(progress.as_ref());
                let bound = super::photo::bound(max_side);
                let size32 = size as u32;
                let td = match &gpu {
                    Some(g) => {
                        let tower = Accelerated {
                            tower: &clip.vision,
                            accel: &**g,
                        };
                        tiles::detect_tiled_on(
                            &clip,
                            &tower,
                            &photo,
                            &plan,
                            size32,
                            &norm,
                            &scoring,
                            bound,
                            &mut report,
                            &|| false,
                        )
                        .await?
                    }
                    None => tiles::detect_tiled(
                        &clip,
                        &photo,
                        &plan,
                        size32,
                        &norm,
                        &scoring,
                        bound,
                        &mut report,
                        &|| false,
                    )?,
                };
                super::photo::TiledResult::new(td, size)
            };
            js_result(run.await)
        })
    }

    /// `references`, with the image tower on the GPU when `useGpu` attached one. Takes the images
    /// over.
    #[wasm_bindgen(js_name = referencesAsync, unchecked_return_type = "Promise<References>")]
    pub fn references_async(&self, images: Vec<Image>) -> js_sys::Promise {
        let prepared = self.references_input(&images).map(|t| (t, images.len()));
        let (clip, gpu, id) = (self.clip.clone(), self.gpu(), self.id);
        future_to_promise(async move {
            let run = async {
                let (pixels, count) = prepared?;
                let cfg = winclip::WinClipConfig::default();
                let refs = match &gpu {
                    Some(g) => {
                        let tower = Accelerated {
                            tower: &clip.vision,
                            accel: &**g,
                        };
                        winclip::references_on(&clip, &tower, &pixels, &cfg).await?
                    }
                    None => winclip::references(&clip, &pixels, &cfg)?,
                };
                Ok(register(id, refs, count))
            };
            js_result(run.await)
        })
    }

    /// `batch` (MuSc), with the image tower on the GPU when `useGpu` attached one. Takes the
    /// images over.
    #[wasm_bindgen(js_name = batchAsync, unchecked_return_type = "Promise<BatchResult>")]
    pub fn batch_async(&self, images: Vec<Image>, progress: Option<js_sys::Function>) -> js_sys::Promise {
        let prepared = self.batch_images(&images);
        let (clip, gpu) = (self.clip.clone(), self.gpu());
        future_to_promise(async move {
            let run = async {
                let (inputs, pixels) = prepared?;
                let mut report = batch_progress(progress.as_ref());
                let cfg = musc::MuscConfig::default();
                let out = match &gpu {
                    Some(g) => {
                        let tower = Accelerated {
                            tower: &clip.vision,
                            accel: &**g,
                        };
                        musc::detect_with_progress_on(&clip, &tower, &pixels, &cfg, &mut report).await?
                    }
                    None => musc::detect_with_progress(&clip, &pixels, &cfg, &mut report)?,
                };
                Ok(BatchResult::new(out, &inputs))
            };
            js_result(run.await)
        })
    }
}
