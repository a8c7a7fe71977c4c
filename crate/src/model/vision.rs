//! The CLIP ViT image tower: full passes with projected patch tokens, hidden states and the
//! value-to-value ("surgery") dense path, and token-subset passes for WinCLIP windows. Its
//! weights are read by [`super::weights`]; the GPU accelerator it can hand passes to is `crate::gpu`.
use super::checkpoint::TensorSource;
use super::config::ClipConfig;
use super::ops::interpolate_pos_embedding;
use super::weights::VisionWeights;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use std::sync::Arc;

/// An accelerator for the image tower (the GPU, `crate::gpu::GpuVision`). When a tower has one,
/// its passes run there after the tower has validated the inputs; when a call fails (device lost,
/// out of memory), the accelerator is disabled and that call and all later ones run on the CPU,
/// with a message on stderr.
pub trait VisionAccel: std::fmt::Debug + Send + Sync {
    /// What runs, for messages (e.g. the adapter's name).
    fn name(&self) -> String;
    /// [`VisionTower::forward`] on validated inputs.
    fn forward(&self, pixels: &Tensor, grid: (usize, usize), opts: &EncodeOptions) -> Result<VisionOutput>;
    /// [`VisionTower::forward_embedded`] on validated inputs.
    fn forward_embedded(&self, embeddings: &Tensor, grid: (usize, usize), opts: &EncodeOptions)
        -> Result<VisionOutput>;
    /// [`VisionTower::forward_subsets`] on validated inputs (at least one subset).
    fn forward_subsets(&self, embeddings: &Tensor, subsets: &[Vec<usize>]) -> Result<Tensor>;
    /// Whether an earlier failure disabled it.
    fn disabled(&self) -> bool;
    /// Disables it for good.
    fn disable(&self);
}

/// An accelerator whose passes are asynchronous: the browser's WebGPU, where results arrive on the
/// event loop and cannot be waited for. The detection modes reach it through
/// [`crate::detect::passes::Accelerated`] ([`VisionTower::forward_on`] and its siblings): inputs
/// are validated by the tower, a failed pass is redone on the CPU and the accelerator is told
/// ([`AsyncVisionAccel::fail`]) so that it stays off.
#[allow(async_fn_in_trait)] // used on one thread (the page's worker); no Send bound wanted
pub trait AsyncVisionAccel {
    /// [`VisionTower::forward`] on validated inputs.
    async fn forward(&self, pixels: &Tensor, grid: (usize, usize), opts: &EncodeOptions) -> Result<VisionOutput>;
    /// [`VisionTower::forward_embedded`] on validated inputs.
    async fn forward_embedded(
        &self,
        embeddings: &Tensor,
        grid: (usize, usize),
        opts: &EncodeOptions,
    ) -> Result<VisionOutput>;
    /// [`VisionTower::forward_subsets`] on validated inputs (at least one subset).
    async fn forward_subsets(&self, embeddings: &Tensor, subsets: &[Vec<usize>]) -> Result<Tensor>;
    /// Whether an earlier failure disabled it.
    fn disabled(&self) -> bool;
    /// Disables it for good after `error` (a pass failed; the call is redone on the CPU). The
    /// accelerator reports the error as it sees fit.
    fn fail(&self, error: &anyhow::Error);
}

/// What a full pass returns besides the projected image embedding and patch tokens.
#[derive(Clone, Debug, Default)]
pub struct EncodeOptions {
    /// Hidden states to return, transformers' indexing: 0 = the embeddings after `ln_pre`,
    /// `i` = the output of block `i` (1-based).
    pub hidden_layers: Vec<usize>,
    /// Number of final blocks that run the extra v-v attention path (0 = off).
    pub surgery_layers: usize,
}

/// Outputs of a full pass over a batch of `B` images with an `gh × gw` patch grid (N = gh·gw).
#[derive(Clone, Debug)]
pub struct VisionOutput {
    /// `[B, P]`: `proj(ln_post(class token))`, not L2-normalised.
    pub image_embeds: Tensor,
    /// `[B, N, P]`: every patch token through `ln_post` and the projection.
    pub patch_tokens: Tensor,
    /// `[B, 1+N, D]`: output of the last block, before `ln_post`.
    pub last_hidden_state: Tensor,
    /// The requested hidden states, `[B, 1+N, D]` each, in request order.
    pub hidden_states: Vec<(usize, Tensor)>,
    /// `[B, N, P]`: the v-v path's patch tokens through `ln_post` and the projection.
    pub surgery_tokens: Option<Tensor>,
    /// Patch grid `(rows, columns)`.
    pub grid: (usize, usize),
}

/// The image tower of a CLIP model.
#[derive(Clone, Debug)]
pub struct VisionTower {
    /// The model configuration (its vision hyper-parameters, `embed_dim` and `pos_interp`).
    pub cfg: ClipConfig,
    /// The tower's weights (on the CPU; an accelerator keeps its own copy).
    pub w: VisionWeights,
    /// Runs the passes when set (see [`VisionAccel`]); `None` = CPU.
    pub accel: Option<Arc<dyn VisionAccel>>,
}

impl VisionTower {
    /// Reads the image tower's weights from `src` in the layout of `cfg`, with no accelerator.
    pub fn load(src: &dyn TensorSource, cfg: &ClipConfig) -> Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            w: VisionWeights::load(src, cfg)?,
            accel: None,
        })
    }

    /// Runs `f` on the accelerator when there is a working one; on failure, disables it, says so
    /// on stderr and returns `None` (the caller then runs the CPU path).
    fn accelerated<T>(&self, f: impl FnOnce(&dyn VisionAccel) -> Result<T>) -> Option<T> {
        let a = self.accel.as_deref().filter(|a| !a.disabled())?;
        match f(a) {
            Ok(v) => Some(v),
            Err(e) => {
                a.disable();
                eprintln!("anoscope: {} failed ({e:#}); falling back to the CPU", a.name());
                None
            }
        }
    }

    fn check_options(&self, opts: &EncodeOptions) -> Result<()> {
        let layers = self.cfg.vision.layers;
        if opts.surgery_layers > layers {
            bail!(
                "surgery layers {} exceeds the {layers} layers of the image tower",
                opts.surgery_layers
            );
        }
        if let Some(&bad) = opts.hidden_layers.iter().find(|&&l| l > layers) {
            bail!("hidden layer {bad} does not exist (valid: 0..={layers})");
        }
        Ok(())
    }

    /// Checks `pixels: [B, 3, H, W]` and returns its patch grid.
    fn pixel_grid(&self, pixels: &Tensor) -> Result<(usize, usize)> {
        let (_, c, h, w) = pixels
            .dims4()
            .map_err(|_| anyhow::anyhow!("pixels must be [B, 3, H, W], got {:?}", pixels.dims()))?;
        if c != 3 {
            bail!("pixels must have 3 channels, got {c}");
        }
        self.grid_for(h, w)
    }

    /// Patch grid for an input of `h × w` pixels (a remainder smaller than a patch is ignored,
    /// as a strided convolution does).
    pub fn grid_for(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let p = self.cfg.vision.patch_size;
        if h < p || w < p {
            bail!("input {h}×{w} is smaller than one {p}×{p} patch");
        }
        Ok((h / p, w / p))
    }

    /// Token embeddings before `ln_pre`: `[B, 1+N, D]` = [class, patches] + position embeddings
    /// (resampled when the grid differs from the checkpoint's).
    pub fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let (gh, gw) = self.pixel_grid(pixels)?;
        let b = pixels.dim(0)?;
        let v = &self.cfg.vision;
        let p = v.patch_size;
        let d = v.width;
        let x = pixels.narrow(2, 0, gh * p)?.narrow(3, 0, gw * p)?;
        // im2col: [B, 3, gh, p, gw, p] -> [B, gh, gw, 3, p, p] -> [B·N, 3·p·p]
        let cols = x
            .reshape((b, 3, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * gh * gw, 3 * p * p))?;
        let patches = cols.matmul(&self.w.patch_w_t)?.reshape((b, gh * gw, d))?;
        let cls = self.w.class_embedding.reshape((1, 1, d))?.broadcast_as((b, 1, d))?;
        let tokens = Tensor::cat(&[&cls.contiguous()?, &patches], 1)?;
        let pos = interpolate_pos_embedding(&self.w.pos_embedding, v.grid(), gh, gw, self.cfg.pos_interp)?;
        Ok(tokens.broadcast_add(&pos)?)
    }

    /// `ln_post` then the visual projection, over the last dimension.
    pub fn project(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.w.ln_post.forward(x)?;
        let dims = y.dims().to_vec();
        let d = dims[dims.len() - 1];
        let rows = y.elem_count() / d;
        let out = y.reshape((rows, d))?.matmul(&self.w.proj)?;
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.cfg.embed_dim;
        Ok(out.reshape(out_dims)?)
    }

    /// A full pass over `pixels: [B, 3, H, W]` (already normalised).
    pub fn forward(&self, pixels: &Tensor, opts: &EncodeOptions) -> Result<VisionOutput> {
        let grid = self.pixel_grid(pixels)?;
        self.check_options(opts)?;
        if let Some(out) = self.accelerated(|a| a.forward(pixels, grid, opts)) {
            return Ok(out);
        }
        self.forward_cpu(&self.embed(pixels)?, grid, opts)
    }

    /// A full pass from token embeddings `[B, 1+N, D]` ([`VisionTower::embed`]) on a
    /// `grid = (rows, columns)` patch grid, for callers that also need the embeddings
    /// (WinCLIP's token subsets) and should not compute them twice.
    pub fn forward_embedded(
        &self,
        embeddings: &Tensor,
        grid: (usize, usize),
        opts: &EncodeOptions,
    ) -> Result<VisionOutput> {
        self.check_options(opts)?;
        let n = grid.0 * grid.1;
        let (_, t, d) = embeddings.dims3()?;
        if t != n + 1 || d != self.cfg.vision.width {
            bail!(
                "embeddings are {:?}, a {grid:?} grid needs [B, {}, {}]",
                embeddings.dims(),
                n + 1,
                self.cfg.vision.width
            );
        }
        if let Some(out) = self.accelerated(|a| a.forward_embedded(embeddings, grid, opts)) {
            return Ok(out);
        }
        self.forward_cpu(embeddings, grid, opts)
    }

    /// The CPU (candle) pass behind [`VisionTower::forward_embedded`], on validated inputs.
    pub fn forward_cpu(&self, embeddings: &Tensor, grid: (usize, usize), opts: &EncodeOptions) -> Result<VisionOutput> {
        let v = &self.cfg.vision;
        let layers = v.layers;
        let n = grid.0 * grid.1;
        let mut x = self.w.ln_pre.forward(embeddings)?;
        let mut hidden: Vec<Option<Tensor>> = vec![None; layers + 1];
        let keep = |i: usize| opts.hidden_layers.contains(&i);
        if keep(0) {
            hidden[0] = Some(x.clone());
        }
        let first_vv = layers - opts.surgery_layers;
        let mut surgery: Option<Tensor> = None;
        for (i, blk) in self.w.blocks.iter().enumerate() {
            let vv = opts.surgery_layers > 0 && i >= first_vv;
            if vv && surgery.is_none() {
                surgery = Some(x.clone());
            }
            let out = blk.forward(&x, v.heads, v.act, None, vv)?;
            super::interrupt::check()?;
            if let (Some(s), Some(a)) = (surgery.as_mut(), out.vv) {
                *s = (&*s + a)?;
            }
            x = out.x;
            if keep(i + 1) {
                hidden[i + 1] = Some(x.clone());
            }
        }
        let image_embeds = self.project(&x.narrow(1, 0, 1)?.squeeze(1)?)?;
        let patch_tokens = self.project(&x.narrow(1, 1, n)?)?;
        let surgery_tokens = match surgery {
            Some(s) => Some(self.project(&s.narrow(1, 1, n)?)?),
            None => None,
        };
        let hidden_states = opts
            .hidden_layers
            .iter()
            .map(|&l| (l, hidden[l].clone().expect("kept")))
            .collect();
        Ok(VisionOutput {
            image_embeds,
            patch_tokens,
            last_hidden_state: x,
            hidden_states,
            surgery_tokens,
            grid,
        })
    }

    /// Checks token subsets over `n` patches; returns their common length (`None`: no subsets).
    fn subset_len(&self, n: usize, subsets: &[Vec<usize>]) -> Result<Option<usize>> {
        let Some(k) = subsets.first().map(Vec::len) else {
            return Ok(None);
        };
        if k == 0 {
            bail!("token subsets must not be empty");
        }
        for s in subsets {
            if s.len() != k {
                bail!(
                    "all token subsets must have the same length ({k}), got one of {}",
                    s.len()
                );
            }
            if let Some(&bad) = s.iter().find(|&&i| i >= n) {
                bail!("patch index {bad} is out of range for {n} patches");
            }
        }
        Ok(Some(k))
    }

    /// [`VisionTower::forward`] on an asynchronous accelerator: validated here, run there, redone
    /// on the CPU (this tower's own path) when it fails.
    pub async fn forward_on<A: AsyncVisionAccel + ?Sized>(
        &self,
        accel: &A,
        pixels: &Tensor,
        opts: &EncodeOptions,
    ) -> Result<VisionOutput> {
        let grid = self.pixel_grid(pixels)?;
        self.check_options(opts)?;
        if !accel.disabled() {
            match accel.forward(pixels, grid, opts).await {
                Ok(out) => return Ok(out),
                Err(e) => accel.fail(&e),
            }
        }
        self.forward(pixels, opts)
    }

    /// [`VisionTower::forward_embedded`] on an asynchronous accelerator (see
    /// [`VisionTower::forward_on`]).
    pub async fn forward_embedded_on<A: AsyncVisionAccel + ?Sized>(
        &self,
        accel: &A,
        embeddings: &Tensor,
        grid: (usize, usize),
        opts: &EncodeOptions,
    ) -> Result<VisionOutput> {
        self.check_options(opts)?;
        let (_, t, d) = embeddings.dims3()?;
        if !accel.disabled() && t == grid.0 * grid.1 + 1 && d == self.cfg.vision.width {
            match accel.forward_embedded(embeddings, grid, opts).await {
                Ok(out) => return Ok(out),
                Err(e) => accel.fail(&e),
            }
        }
        // Also the error for embeddings that do not fit the grid.
        self.forward_embedded(embeddings, grid, opts)
    }

    /// [`VisionTower::forward_subsets`] on an asynchronous accelerator (see
    /// [`VisionTower::forward_on`]).
    pub async fn forward_subsets_on<A: AsyncVisionAccel + ?Sized>(
        &self,
        accel: &A,
        embeddings: &Tensor,
        subsets: &[Vec<usize>],
        batch_size: usize,
    ) -> Result<Tensor> {
        let (one, t, _) = embeddings.dims3()?;
        if one == 1 && !accel.disabled() && self.subset_len(t - 1, subsets)?.is_some() {
            match accel.forward_subsets(embeddings, subsets).await {
                Ok(out) => return Ok(out),
                Err(e) => accel.fail(&e),
            }
        }
        self.forward_subsets(embeddings, subsets, batch_size)
    }

    /// Token-subset passes (WinCLIP's windows): for each subset of patch indices (0-based,
    /// row-major over the grid; all subsets the same length), the class token and those patch
    /// tokens of `embeddings: [1, 1+N, D]` (from [`VisionTower::embed`]) go through
    /// `ln_pre` → all blocks → `ln_post` (class token) → projection. Subsets are run
    /// `batch_size` at a time. Returns `[M, P]`.
    pub fn forward_subsets(&self, embeddings: &Tensor, subsets: &[Vec<usize>], batch_size: usize) -> Result<Tensor> {
        let (one, t, _) = embeddings.dims3()?;
        if one != 1 {
            bail!("token-subset passes take the embeddings of one image, got a batch of {one}");
        }
        let Some(k) = self.subset_len(t - 1, subsets)? else {
            return Ok(Tensor::zeros(
                (0, self.cfg.embed_dim),
                candle_core::DType::F32,
                &Device::Cpu,
            )?);
        };
        if let Some(out) = self.accelerated(|a| a.forward_subsets(embeddings, subsets)) {
            return Ok(out);
        }
        let v = &self.cfg.vision;
        let emb = embeddings.squeeze(0)?;
        let mut outs = Vec::new();
        for chunk in subsets.chunks(batch_size.max(1)) {
            let ids: Vec<u32> = chunk
                .iter()
                .flat_map(|s| std::iter::once(0u32).chain(s.iter().map(|&i| i as u32 + 1)))
                .collect();
            let ids = Tensor::from_vec(ids, chunk.len() * (k + 1), &Device::Cpu)?;
            let mut x = emb.index_select(&ids, 0)?.reshape((chunk.len(), k + 1, v.width))?;
            x = self.w.ln_pre.forward(&x)?;
            for blk in &self.w.blocks {
                x = blk.forward(&x, v.heads, v.act, None, false)?.x;
                super::interrupt::check()?;
            }
            outs.push(self.project(&x.narrow(1, 0, 1)?.squeeze(1)?)?);
        }
        Ok(Tensor::cat(&outs, 0)?)
    }
}
