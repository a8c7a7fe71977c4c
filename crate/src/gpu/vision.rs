//! The image tower on the GPU: the same passes as [`VisionTower`] (full passes with hidden
//! states and the value-to-value path, WinCLIP token subsets), as a sequence of WGSL dispatches
//! per call: im2col + patch matmul, class/position embedding, then per block LayerNorm → QKV
//! matmul → attention → output matmul (+ residual) → LayerNorm → fc1 (+ activation) → fc2
//! (+ residual), and finally `ln_post` + projection of the class and patch tokens.
//!
//! Weights are uploaded once: f32, or the matrices in f16 where the adapter has `shader-f16`
//! (see [`WeightStorage`]; arithmetic stays f32). Scratch buffers are kept by name and reused across calls
//! (grown when a larger input needs more); interpolated position embeddings are cached per grid.
use super::{GpuContext, WeightStorage};
use crate::model::ops::interpolate_pos_embedding;
use crate::model::weights::{Linear, Norm};
use crate::model::{Activation, ClipConfig, EncodeOptions, VisionOutput, VisionTower};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

const MATMUL: &str = include_str!("kernels/matmul.wgsl");
const LAYERNORM: &str = include_str!("kernels/layernorm.wgsl");
const ATTENTION: &str = include_str!("kernels/attention.wgsl");
const IM2COL: &str = include_str!("kernels/im2col.wgsl");
const EMBED: &str = include_str!("kernels/embed.wgsl");
const GATHER: &str = include_str!("kernels/gather.wgsl");

#[derive(Clone, Copy, Debug)]
enum Kernel {
    Matmul = 0,
    LayerNorm,
    Attention,
    Im2col,
    Embed,
    Gather,
    /// The matmul with f16 weights (compiled only when the weights are stored in f16).
    MatmulF16,
}

/// Workgroups along x per row of the grid for 1-D dispatches (under the 65535 limit).
const ROW: usize = 32768;
/// Largest head dimension the attention kernel holds in workgroup memory.
const MAX_HEAD_DIM: usize = 256;

#[derive(Debug)]
struct GNorm {
    w: wgpu::Buffer,
    b: wgpu::Buffer,
    eps: f32,
}

#[derive(Debug)]
struct GLinear {
    w: wgpu::Buffer,
    b: Option<wgpu::Buffer>,
    k: usize,
    n: usize,
}

#[derive(Debug)]
struct GBlock {
    ln_1: GNorm,
    qkv: GLinear,
    out: GLinear,
    ln_2: GNorm,
    fc1: GLinear,
    fc2: GLinear,
}

#[derive(Debug)]
struct Weights {
    patch: GLinear,
    cls: wgpu::Buffer,
    ln_pre: GNorm,
    blocks: Vec<GBlock>,
    ln_post: GNorm,
    proj: GLinear,
}

/// Scratch buffers by name, and position embeddings by grid.
#[derive(Debug, Default)]
struct State {
    pool: HashMap<String, wgpu::Buffer>,
    pos: HashMap<(usize, usize), wgpu::Buffer>,
}

/// One recorded step of a pass.
enum Op {
    Dispatch {
        kernel: Kernel,
        params: (u64, u64),
        bufs: Vec<wgpu::Buffer>,
        groups: [u32; 3],
    },
    Copy {
        src: wgpu::Buffer,
        dst: wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    },
}

/// The steps of a pass and their parameter block (one uniform buffer, 256-byte aligned slots).
#[derive(Default)]
struct Recording {
    params: Vec<u8>,
    ops: Vec<Op>,
}

impl Recording {
    fn dispatch(&mut self, kernel: Kernel, words: &[u32], bufs: Vec<wgpu::Buffer>, groups: [u32; 3]) {
        let off = self.params.len().next_multiple_of(256);
        self.params.resize(off, 0);
        self.params.extend(words.iter().flat_map(|w| w.to_le_bytes()));
        self.ops.push(Op::Dispatch {
            kernel,
            params: (off as u64, 4 * words.len() as u64),
            bufs,
            groups,
        });
    }

    /// A 1-D dispatch of `total` invocations in workgroups of 256.
    fn dispatch_1d(&mut self, kernel: Kernel, words: &[u32], bufs: Vec<wgpu::Buffer>, total: usize) {
        let groups = total.div_ceil(256);
        let g = [groups.min(ROW) as u32, groups.div_ceil(ROW) as u32, 1];
        self.dispatch(kernel, words, bufs, g);
    }

    fn copy(&mut self, src: &wgpu::Buffer, dst: &wgpu::Buffer, dst_offset: u64, floats: usize) {
        self.ops.push(Op::Copy {
            src: src.clone(),
            dst: dst.clone(),
            dst_offset,
            bytes: 4 * floats as u64,
        });
    }
}

/// How the A operand's rows map into its buffer (see `matmul.wgsl`).
#[derive(Clone, Copy)]
struct Rows {
    per_group: usize,
    group_stride: usize,
    offset: usize,
}

impl Rows {
    fn dense(m: usize) -> Self {
        Rows {
            per_group: m.max(1),
            group_stride: 0,
            offset: 0,
        }
    }
}

/// The image tower of one model on the GPU.
#[derive(Debug)]
pub struct GpuVision {
    ctx: GpuContext,
    cfg: ClipConfig,
    pos_embedding: Tensor,
    pipes: Vec<wgpu::ComputePipeline>,
    w: Weights,
    half: bool,
    dummy: wgpu::Buffer,
    state: Mutex<State>,
    disabled: AtomicBool,
}

fn f32_data(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// The matrices that [`WeightStorage`] applies to.
fn matrices(tower: &VisionTower) -> Vec<&Tensor> {
    let w = &tower.w;
    let mut m = vec![&w.patch_w_t, &w.proj];
    for b in &w.blocks {
        m.extend([&b.qkv.w_t, &b.out.w_t, &b.fc1.w_t, &b.fc2.w_t]);
    }
    m
}

/// Whether every value of `t` is exactly an f16 value (f16 storage then loses nothing).
fn exact_in_f16(t: &Tensor) -> Result<bool> {
    Ok(f32_data(t)?.iter().all(|&x| half::f16::from_f32(x).to_f32() == x))
}

impl GpuVision {
    /// Compiles the kernels and uploads the weights of `tower`, stored as [`WeightStorage::Auto`]
    /// decides.
    pub async fn new(ctx: GpuContext, tower: &VisionTower) -> Result<Self> {
        Self::with_storage(ctx, tower, WeightStorage::Auto).await
    }

    /// [`GpuVision::new`] with the matrix weights stored as `storage` says.
    pub async fn with_storage(ctx: GpuContext, tower: &VisionTower, storage: WeightStorage) -> Result<Self> {
        let v = &tower.cfg.vision;
        if !v.width.is_multiple_of(v.heads) || v.head_dim() > MAX_HEAD_DIM {
            bail!(
                "the GPU attention kernel needs a head dimension up to {MAX_HEAD_DIM} (width {} / {} heads)",
                v.width,
                v.heads
            );
        }
        let half = match storage {
            WeightStorage::F32 => false,
            WeightStorage::F16 if !ctx.has_f16() => bail!(
                "f16 weights need the `shader-f16` feature, which {} lacks",
                ctx.describe()
            ),
            WeightStorage::F16 => true,
            WeightStorage::Auto => {
                ctx.has_f16()
                    && matrices(tower)
                        .into_iter()
                        .try_fold(true, |all, t| Ok::<_, anyhow::Error>(all && exact_in_f16(t)?))?
            }
        };
        let device = &ctx.device;
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut sources = vec![
            ("matmul", MATMUL.replace("WT", "f32")),
            ("layernorm", LAYERNORM.into()),
            ("attention", ATTENTION.into()),
            ("im2col", IM2COL.into()),
            ("embed", EMBED.into()),
            ("gather", GATHER.into()),
        ];
        if half {
            sources.push(("matmul_f16", format!("enable f16;\n{}", MATMUL.replace("WT", "f16"))));
        }
        let pipes = sources
            .iter()
            .map(|(name, src)| {
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(name),
                    source: wgpu::ShaderSource::Wgsl(src.as_str().into()),
                });
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(name),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .collect::<Vec<_>>();
        let upload = |t: &Tensor, label: &str| -> Result<wgpu::Buffer> {
            let data = f32_data(t)?;
            let buf = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (4 * data.len().max(1)) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            ctx.queue.write_buffer(&buf, 0, bytemuck::cast_slice(&data));
            Ok(buf)
        };
        let norm = |n: &Norm, label: &str| -> Result<GNorm> {
            Ok(GNorm {
                w: upload(&n.weight, label)?,
                b: upload(&n.bias, label)?,
                eps: n.eps,
            })
        };
        // A matrix: f32, or f16 (two values per 32-bit word; padded to a whole word).
        let matrix = |t: &Tensor, label: &str| -> Result<wgpu::Buffer> {
            if !half {
                return upload(t, label);
            }
            let mut data: Vec<half::f16> = f32_data(t)?.into_iter().map(half::f16::from_f32).collect();
            if data.len() % 2 == 1 {
                data.push(half::f16::ZERO);
            }
            let bits: Vec<u16> = data.iter().map(|h| h.to_bits()).collect();
            let buf = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (2 * bits.len().max(2)) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            ctx.queue.write_buffer(&buf, 0, bytemuck::cast_slice(&bits));
            Ok(buf)
        };
        let linear = |l: &Linear, label: &str| -> Result<GLinear> {
            let (k, n) = l.w_t.dims2()?;
            Ok(GLinear {
                w: matrix(&l.w_t, label)?,
                b: l.bias.as_ref().map(|b| upload(b, label)).transpose()?,
                k,
                n,
            })
        };
        let tw = &tower.w;
        let (pk, pn) = tw.patch_w_t.dims2()?;
        let (jk, jn) = tw.proj.dims2()?;
        let w = Weights {
            patch: GLinear {
                w: matrix(&tw.patch_w_t, "patch")?,
                b: None,
                k: pk,
                n: pn,
            },
            cls: upload(&tw.class_embedding, "class")?,
            ln_pre: norm(&tw.ln_pre, "ln_pre")?,
            blocks: tw
                .blocks
                .iter()
                .map(|b| {
                    Ok(GBlock {
                        ln_1: norm(&b.ln_1, "ln_1")?,
                        qkv: linear(&b.qkv, "qkv")?,
                        out: linear(&b.out, "out")?,
                        ln_2: norm(&b.ln_2, "ln_2")?,
                        fc1: linear(&b.fc1, "fc1")?,
                        fc2: linear(&b.fc2, "fc2")?,
                    })
                })
                .collect::<Result<_>>()?,
            ln_post: norm(&tw.ln_post, "ln_post")?,
            proj: GLinear {
                w: matrix(&tw.proj, "proj")?,
                b: None,
                k: jk,
                n: jn,
            },
        };
        let dummy = upload(&Tensor::zeros(4, DType::F32, &Device::Cpu)?, "dummy")?;
        if let Some(e) = val.pop().await {
            bail!("GPU kernels or weights rejected: {e}");
        }
        if let Some(e) = oom.pop().await {
            bail!("out of GPU memory while uploading the weights: {e}");
        }
        ctx.check()?;
        Ok(Self {
            ctx,
            cfg: tower.cfg.clone(),
            pos_embedding: tower.w.pos_embedding.clone(),
            pipes,
            w,
            half,
            dummy,
            state: Mutex::new(State::default()),
            disabled: AtomicBool::new(false),
        })
    }

    /// The device this tower's weights live on.
    pub fn ctx(&self) -> &GpuContext {
        &self.ctx
    }

    /// Whether the matrix weights are stored in f16.
    pub fn half(&self) -> bool {
        self.half
    }

    /// Whether a failure marked this GPU unusable (callers then run the CPU path).
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    /// Marks this GPU unusable for good (after a device loss or out-of-memory error).
    pub fn set_disabled(&self) {
        self.disabled.store(true, Ordering::Relaxed);
    }

    fn check_alive(&self) -> Result<()> {
        if super::forced_failure("forward") {
            bail!("GPU device lost (forced by ANOSCOPE_GPU_FAIL=forward)");
        }
        self.ctx.check()
    }

    /// A full pass over normalised `pixels: [B, 3, H, W]` (same outputs as
    /// [`VisionTower::forward`]).
    pub async fn forward(&self, pixels: &Tensor, opts: &EncodeOptions) -> Result<VisionOutput> {
        let (_, c, h, w) = pixels.dims4()?;
        if c != 3 {
            bail!("pixels must have 3 channels, got {c}");
        }
        let p = self.cfg.vision.patch_size;
        if h < p || w < p {
            bail!("input {h}×{w} is smaller than one {p}×{p} patch");
        }
        self.full(Input::Pixels(pixels.clone()), (h / p, w / p), opts).await
    }

    /// A full pass from token embeddings `[B, 1+N, D]` (same outputs as
    /// [`VisionTower::forward_embedded`]).
    pub async fn forward_embedded(
        &self,
        embeddings: &Tensor,
        grid: (usize, usize),
        opts: &EncodeOptions,
    ) -> Result<VisionOutput> {
        let (_, t, d) = embeddings.dims3()?;
        if t != grid.0 * grid.1 + 1 || d != self.cfg.vision.width {
            bail!(
                "embeddings are {:?}, which does not fit a {grid:?} grid",
                embeddings.dims()
            );
        }
        self.full(Input::Embedded(embeddings.clone()), grid, opts).await
    }

    /// Images per submission so that no scratch buffer exceeds the binding limit.
    fn per_pass(&self, t: usize, rows_factor: usize) -> usize {
        let v = &self.cfg.vision;
        let per_image = [
            t * 3 * v.width,
            t * v.mlp_width,
            v.heads * t * t,
            rows_factor * 3 * v.patch_size * v.patch_size,
        ]
        .into_iter()
        .max()
        .unwrap_or(1) as u64
            * 4;
        ((self.ctx.max_binding().min(1 << 30) / per_image.max(1)) as usize).clamp(1, 65535)
    }

    async fn full(&self, input: Input, grid: (usize, usize), opts: &EncodeOptions) -> Result<VisionOutput> {
        self.check_alive()?;
        let layers = self.cfg.vision.layers;
        if opts.surgery_layers > layers || opts.hidden_layers.iter().any(|&l| l > layers) {
            bail!("encode options {opts:?} do not fit a tower of {layers} layers");
        }
        let t = grid.0 * grid.1 + 1;
        let b = input.tensor().dim(0)?;
        let chunk = self.per_pass(t, t);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < b {
            let len = chunk.min(b - start);
            let part = input.narrow(start, len)?;
            parts.push(self.full_pass(&part, grid, opts).await?);
            start += len;
        }
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one part"));
        }
        let cat = |f: &dyn Fn(&VisionOutput) -> Tensor| -> Result<Tensor> {
            Ok(Tensor::cat(&parts.iter().map(f).collect::<Vec<_>>(), 0)?)
        };
        Ok(VisionOutput {
            image_embeds: cat(&|o| o.image_embeds.clone())?,
            patch_tokens: cat(&|o| o.patch_tokens.clone())?,
            last_hidden_state: cat(&|o| o.last_hidden_state.clone())?,
            hidden_states: (0..opts.hidden_layers.len())
                .map(|i| Ok((opts.hidden_layers[i], cat(&|o| o.hidden_states[i].1.clone())?)))
                .collect::<Result<_>>()?,
            surgery_tokens: match opts.surgery_layers {
                0 => None,
                _ => Some(cat(&|o| o.surgery_tokens.clone().expect("surgery"))?),
            },
            grid,
        })
    }

    async fn full_pass(&self, input: &Input, grid: (usize, usize), opts: &EncodeOptions) -> Result<VisionOutput> {
        let v = &self.cfg.vision;
        let (d, pdim) = (v.width, self.cfg.embed_dim);
        let n = grid.0 * grid.1;
        let t = n + 1;
        let b = input.tensor().dim(0)?;
        let rows = b * t;
        let mut rec = Recording::default();
        let (readback, scopes) = {
            let scopes = self.scopes();
            let mut guard = self.state.lock().unwrap();
            let st = &mut *guard;
            let emb = self.buffer(st, "emb", rows * d);
            match input {
                Input::Pixels(px) => {
                    let (_, _, h, w) = px.dims4()?;
                    let p = v.patch_size;
                    let pixels = self.buffer(st, "pixels", b * 3 * h * w);
                    self.ctx
                        .queue
                        .write_buffer(&pixels, 0, bytemuck::cast_slice(&f32_data(px)?));
                    let cols = self.buffer(st, "cols", b * n * 3 * p * p);
                    let total = b * n * 3 * p * p;
                    let words = [total, h, w, p, grid.0, grid.1, 0, 0].map(|x| x as u32);
                    rec.dispatch_1d(Kernel::Im2col, &words, vec![pixels, cols.clone()], total);
                    let patches = self.buffer(st, "patches", b * n * d);
                    self.matmul(
                        &mut rec,
                        &cols,
                        Rows::dense(b * n),
                        b * n,
                        &self.w.patch,
                        0,
                        &patches,
                        false,
                    );
                    let pos = self.pos(st, grid)?;
                    let total = rows * d;
                    rec.dispatch_1d(
                        Kernel::Embed,
                        &[total as u32, n as u32, d as u32, 0],
                        vec![patches, self.w.cls.clone(), pos, emb.clone()],
                        total,
                    );
                }
                Input::Embedded(e) => {
                    self.ctx
                        .queue
                        .write_buffer(&emb, 0, bytemuck::cast_slice(&f32_data(e)?));
                }
            }
            let x = self.buffer(st, "x", rows * d);
            self.layernorm(&mut rec, &emb, &x, rows, &self.w.ln_pre);
            let mut hidden = Vec::new();
            let keep = |l: usize| -> bool { opts.hidden_layers.contains(&l) };
            let mut save = |rec: &mut Recording, st: &mut State, l: usize| {
                if keep(l) {
                    let buf = self.buffer(st, &format!("hidden{l}"), rows * d);
                    rec.copy(&x, &buf, 0, rows * d);
                    hidden.push((l, buf));
                }
            };
            save(&mut rec, st, 0);
            let surg = self.blocks(&mut rec, st, &x, b, t, opts.surgery_layers, &mut save);
            let h = self.buffer(st, "h", rows * d);
            self.layernorm(&mut rec, &x, &h, rows, &self.w.ln_post);
            let img = self.buffer(st, "img", b * pdim);
            let cls_rows = Rows {
                per_group: 1,
                group_stride: t * d,
                offset: 0,
            };
            self.matmul(&mut rec, &h, cls_rows, b, &self.w.proj, 0, &img, false);
            let patch_rows = Rows {
                per_group: n,
                group_stride: t * d,
                offset: d,
            };
            let patch = self.buffer(st, "patch", b * n * pdim);
            self.matmul(&mut rec, &h, patch_rows, b * n, &self.w.proj, 0, &patch, false);
            let mut outs: Vec<(wgpu::Buffer, Vec<usize>)> = vec![
                (img, vec![b, pdim]),
                (patch, vec![b, n, pdim]),
                (x.clone(), vec![b, t, d]),
            ];
            if let Some(s) = surg {
                self.layernorm(&mut rec, &s, &h, rows, &self.w.ln_post);
                let so = self.buffer(st, "surgery", b * n * pdim);
                self.matmul(&mut rec, &h, patch_rows, b * n, &self.w.proj, 0, &so, false);
                outs.push((so, vec![b, n, pdim]));
            }
            let order: Vec<usize> = opts
                .hidden_layers
                .iter()
                .map(|l| hidden.iter().position(|(k, _)| k == l).expect("kept"))
                .collect();
            for i in order {
                outs.push((hidden[i].1.clone(), vec![b, t, d]));
            }
            (self.submit(st, rec, &outs)?, scopes)
        };
        let mut tensors = self.finish(readback, scopes).await?.into_iter();
        let mut next = || tensors.next().expect("one tensor per output");
        let image_embeds = next();
        let patch_tokens = next();
        let last_hidden_state = next();
        let surgery_tokens = (opts.surgery_layers > 0).then(&mut next);
        let hidden_states = opts.hidden_layers.iter().map(|&l| (l, next())).collect();
        Ok(VisionOutput {
            image_embeds,
            patch_tokens,
            last_hidden_state,
            hidden_states,
            surgery_tokens,
            grid,
        })
    }

    /// WinCLIP's token-subset passes (same result as [`VisionTower::forward_subsets`]): for each
    /// subset of patch indices, the class token and those patches of `embeddings: [1, 1+N, D]`
    /// through `ln_pre`, all blocks, `ln_post` (class token) and the projection. Returns `[M, P]`.
    pub async fn forward_subsets(&self, embeddings: &Tensor, subsets: &[Vec<usize>]) -> Result<Tensor> {
        self.check_alive()?;
        let v = &self.cfg.vision;
        let (d, pdim) = (v.width, self.cfg.embed_dim);
        let (one, t_all, de) = embeddings.dims3()?;
        if one != 1 || de != d {
            bail!(
                "token-subset passes take [1, 1+N, {d}] embeddings, got {:?}",
                embeddings.dims()
            );
        }
        let Some(k) = subsets.first().map(Vec::len) else {
            return Ok(Tensor::zeros((0, pdim), DType::F32, &Device::Cpu)?);
        };
        if k == 0
            || subsets
                .iter()
                .any(|s| s.len() != k || s.iter().any(|&i| i + 1 >= t_all))
        {
            bail!(
                "token subsets must be non-empty, of one length, with patch indices below {}",
                t_all - 1
            );
        }
        let t = k + 1;
        let chunk = self.per_pass(t, 1);
        let mut outs = Vec::new();
        for part in subsets.chunks(chunk) {
            let m = part.len();
            let rows = m * t;
            let ids: Vec<u32> = part
                .iter()
                .flat_map(|s| std::iter::once(0u32).chain(s.iter().map(|&i| i as u32 + 1)))
                .collect();
            let mut rec = Recording::default();
            let (readback, scopes) = {
                let scopes = self.scopes();
                let mut guard = self.state.lock().unwrap();
                let st = &mut *guard;
                let emb = self.buffer(st, "emb", t_all * d);
                self.ctx
                    .queue
                    .write_buffer(&emb, 0, bytemuck::cast_slice(&f32_data(embeddings)?));
                let idx = self.buffer(st, "idx", rows);
                self.ctx.queue.write_buffer(&idx, 0, bytemuck::cast_slice(&ids));
                let gathered = self.buffer(st, "gathered", rows * d);
                let total = rows * d;
                rec.dispatch_1d(
                    Kernel::Gather,
                    &[total as u32, d as u32, 0, 0],
                    vec![emb, idx, gathered.clone()],
                    total,
                );
                let x = self.buffer(st, "x", rows * d);
                self.layernorm(&mut rec, &gathered, &x, rows, &self.w.ln_pre);
                self.blocks(&mut rec, st, &x, m, t, 0, &mut |_, _, _| {});
                let h = self.buffer(st, "h", rows * d);
                self.layernorm(&mut rec, &x, &h, rows, &self.w.ln_post);
                let out = self.buffer(st, "img", m * pdim);
                let cls_rows = Rows {
                    per_group: 1,
                    group_stride: t * d,
                    offset: 0,
                };
                self.matmul(&mut rec, &h, cls_rows, m, &self.w.proj, 0, &out, false);
                (self.submit(st, rec, &[(out, vec![m, pdim])])?, scopes)
            };
            outs.extend(self.finish(readback, scopes).await?);
        }
        Ok(Tensor::cat(&outs, 0)?)
    }

    /// The transformer blocks on `x: [b·t, D]` in place. With `surgery_layers > 0`, returns the
    /// buffer of the v-v path's residual stream. `save(l)` runs after block `l` (1-based).
    #[allow(clippy::too_many_arguments)]
    fn blocks(
        &self,
        rec: &mut Recording,
        st: &mut State,
        x: &wgpu::Buffer,
        b: usize,
        t: usize,
        surgery_layers: usize,
        save: &mut dyn FnMut(&mut Recording, &mut State, usize),
    ) -> Option<wgpu::Buffer> {
        let v = &self.cfg.vision;
        let (d, heads) = (v.width, v.heads);
        let hd = d / heads;
        let rows = b * t;
        let h = self.buffer(st, "h", rows * d);
        let qkv = self.buffer(st, "qkv", rows * 3 * d);
        let att = self.buffer(st, "att", rows * d);
        let probs = self.buffer(st, "probs", b * heads * t * t);
        let mlp = self.buffer(st, "mlp", rows * v.mlp_width);
        let vv = (surgery_layers > 0).then(|| (self.buffer(st, "att_vv", rows * d), self.buffer(st, "surg", rows * d)));
        let first_vv = v.layers - surgery_layers;
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        let attention = |rec: &mut Recording, qk_off: [usize; 2], out: &wgpu::Buffer| {
            let words = [t, heads, hd, d, qk_off[0], qk_off[1], 2 * d].map(|x| x as u32);
            let mut w = words.to_vec();
            w.push(scale.to_bits());
            rec.dispatch(
                Kernel::Attention,
                &w,
                vec![qkv.clone(), probs.clone(), out.clone()],
                [t as u32, heads as u32, b as u32],
            );
        };
        let act = match v.act {
            Activation::QuickGelu => 1,
            Activation::Gelu => 2,
            Activation::GeluTanh => 3,
        };
        for (i, blk) in self.w.blocks.iter().enumerate() {
            let on_vv = surgery_layers > 0 && i >= first_vv;
            if let (true, Some((_, surg))) = (on_vv && i == first_vv, &vv) {
                rec.copy(x, surg, 0, rows * d);
            }
            self.layernorm(rec, x, &h, rows, &blk.ln_1);
            self.matmul(rec, &h, Rows::dense(rows), rows, &blk.qkv, 0, &qkv, false);
            attention(rec, [0, d], &att);
            if let (true, Some((att_vv, _))) = (on_vv, &vv) {
                attention(rec, [2 * d, 2 * d], att_vv);
            }
            self.matmul(rec, &att, Rows::dense(rows), rows, &blk.out, 0, x, true);
            if let (true, Some((att_vv, surg))) = (on_vv, &vv) {
                self.matmul(rec, att_vv, Rows::dense(rows), rows, &blk.out, 0, surg, true);
            }
            self.layernorm(rec, x, &h, rows, &blk.ln_2);
            self.matmul(rec, &h, Rows::dense(rows), rows, &blk.fc1, act, &mlp, false);
            self.matmul(rec, &mlp, Rows::dense(rows), rows, &blk.fc2, 0, x, true);
            save(rec, st, i + 1);
        }
        vv.map(|(_, s)| s)
    }

    /// `out (+)= act(A @ W + bias)` with `m` rows of A.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        rec: &mut Recording,
        a: &wgpu::Buffer,
        rows: Rows,
        m: usize,
        lin: &GLinear,
        act: u32,
        out: &wgpu::Buffer,
        accumulate: bool,
    ) {
        let flags = lin.b.is_some() as u32 | ((accumulate as u32) << 1) | (act << 2);
        let words = [
            m as u32,
            lin.n as u32,
            lin.k as u32,
            flags,
            rows.per_group as u32,
            rows.group_stride as u32,
            rows.offset as u32,
            0,
        ];
        let bias = lin.b.clone().unwrap_or_else(|| self.dummy.clone());
        let kernel = if self.half { Kernel::MatmulF16 } else { Kernel::Matmul };
        rec.dispatch(
            kernel,
            &words,
            vec![a.clone(), lin.w.clone(), bias, out.clone()],
            [lin.n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1],
        );
    }

    fn layernorm(&self, rec: &mut Recording, x: &wgpu::Buffer, y: &wgpu::Buffer, rows: usize, n: &GNorm) {
        let words = [rows as u32, self.cfg.vision.width as u32, n.eps.to_bits(), 0];
        rec.dispatch(
            Kernel::LayerNorm,
            &words,
            vec![x.clone(), n.w.clone(), n.b.clone(), y.clone()],
            [rows.min(ROW) as u32, rows.div_ceil(ROW) as u32, 1],
        );
    }

    /// The scratch buffer `name` with room for `floats` values (reused, grown when too small).
    fn buffer(&self, st: &mut State, name: &str, floats: usize) -> wgpu::Buffer {
        let bytes = (4 * floats.max(1)) as u64;
        if let Some(b) = st.pool.get(name).filter(|b| b.size() >= bytes) {
            return b.clone();
        }
        let buf = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(name),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        st.pool.insert(name.to_string(), buf.clone());
        buf
    }

    /// Position embeddings for `grid` (resampled on the CPU once per grid, then cached).
    fn pos(&self, st: &mut State, grid: (usize, usize)) -> Result<wgpu::Buffer> {
        if let Some(b) = st.pos.get(&grid) {
            return Ok(b.clone());
        }
        let v = &self.cfg.vision;
        let pos = interpolate_pos_embedding(&self.pos_embedding, v.grid(), grid.0, grid.1, self.cfg.pos_interp)?;
        let data = f32_data(&pos)?;
        let buf = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("pos"),
            size: (4 * data.len()) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.ctx.queue.write_buffer(&buf, 0, bytemuck::cast_slice(&data));
        st.pos.insert(grid, buf.clone());
        Ok(buf)
    }

    fn scopes(&self) -> Scopes {
        Scopes {
            oom: self.ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory),
            val: self.ctx.device.push_error_scope(wgpu::ErrorFilter::Validation),
        }
    }

    /// Encodes and submits `rec`, then copies `outs` into one staging buffer for reading back.
    fn submit(&self, st: &mut State, rec: Recording, outs: &[(wgpu::Buffer, Vec<usize>)]) -> Result<Readback> {
        let device = &self.ctx.device;
        let params = {
            let bytes = rec.params.len().max(256) as u64;
            match st.pool.get("params").filter(|b| b.size() >= bytes) {
                Some(b) => b.clone(),
                None => {
                    let b = device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("params"),
                        size: bytes.next_multiple_of(4096),
                        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    st.pool.insert("params".into(), b.clone());
                    b
                }
            }
        };
        self.ctx.queue.write_buffer(&params, 0, &rec.params);
        let groups: Vec<Option<wgpu::BindGroup>> = rec
            .ops
            .iter()
            .map(|op| match op {
                Op::Dispatch {
                    kernel,
                    params: (off, size),
                    bufs,
                    ..
                } => {
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &params,
                            offset: *off,
                            size: wgpu::BufferSize::new(*size),
                        }),
                    }];
                    entries.extend(bufs.iter().enumerate().map(|(i, b)| wgpu::BindGroupEntry {
                        binding: i as u32 + 1,
                        resource: b.as_entire_binding(),
                    }));
                    Some(device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: None,
                        layout: &self.pipes[*kernel as usize].get_bind_group_layout(0),
                        entries: &entries,
                    }))
                }
                Op::Copy { .. } => None,
            })
            .collect();
        let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("anoscope"),
        });
        let mut i = 0;
        while i < rec.ops.len() {
            if let Op::Copy {
                src,
                dst,
                dst_offset,
                bytes,
            } = &rec.ops[i]
            {
                enc.copy_buffer_to_buffer(src, 0, dst, *dst_offset, *bytes);
                i += 1;
                continue;
            }
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            while let Some(Op::Dispatch { kernel, groups: g, .. }) = rec.ops.get(i) {
                pass.set_pipeline(&self.pipes[*kernel as usize]);
                pass.set_bind_group(0, groups[i].as_ref(), &[]);
                pass.dispatch_workgroups(g[0], g[1], g[2]);
                i += 1;
            }
        }
        let total: usize = outs.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: (4 * total.max(1)) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut off = 0u64;
        for (buf, shape) in outs {
            let bytes = 4 * shape.iter().product::<usize>() as u64;
            enc.copy_buffer_to_buffer(buf, 0, &staging, off, bytes);
            off += bytes;
        }
        self.ctx.queue.submit([enc.finish()]);
        Ok(Readback {
            staging,
            shapes: outs.iter().map(|(_, s)| s.clone()).collect(),
        })
    }

    /// Waits for the pass, checks for errors and reads the outputs back as CPU tensors.
    async fn finish(&self, rb: Readback, scopes: Scopes) -> Result<Vec<Tensor>> {
        let (tx, rx) = futures_channel::oneshot::channel();
        let slice = rb.staging.slice(..);
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.ctx
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow!("GPU wait failed: {e}"))?;
        let Scopes { oom, val } = scopes;
        if let Some(e) = val.pop().await {
            bail!("GPU validation error: {e}");
        }
        if let Some(e) = oom.pop().await {
            bail!("out of GPU memory: {e}");
        }
        rx.await
            .context("GPU readback was cancelled")?
            .map_err(|e| anyhow!("GPU readback failed: {e}"))?;
        self.ctx.check()?;
        let data: Vec<f32> = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| anyhow!("cannot read the GPU results: {e}"))?;
            bytemuck::cast_slice(&view).to_vec()
        };
        rb.staging.unmap();
        let mut off = 0;
        let mut out = Vec::with_capacity(rb.shapes.len());
        for shape in rb.shapes {
            let len: usize = shape.iter().product();
            out.push(Tensor::from_slice(&data[off..off + len], shape, &Device::Cpu)?);
            off += len;
        }
        Ok(out)
    }
}

struct Scopes {
    oom: wgpu::ErrorScopeGuard,
    val: wgpu::ErrorScopeGuard,
}

struct Readback {
    staging: wgpu::Buffer,
    shapes: Vec<Vec<usize>>,
}

enum Input {
    Pixels(Tensor),
    Embedded(Tensor),
}

impl Input {
    fn tensor(&self) -> &Tensor {
        match self {
            Input::Pixels(t) | Input::Embedded(t) => t,
        }
    }

    fn narrow(&self, start: usize, len: usize) -> Result<Input> {
        let t = self.tensor().narrow(0, start, len)?;
        Ok(match self {
            Input::Pixels(_) => Input::Pixels(t),
            Input::Embedded(_) => Input::Embedded(t),
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl crate::model::VisionAccel for GpuVision {
    fn name(&self) -> String {
        format!("the GPU ({})", self.ctx.describe())
    }

    fn forward(&self, pixels: &Tensor, _grid: (usize, usize), opts: &EncodeOptions) -> Result<VisionOutput> {
        pollster::block_on(GpuVision::forward(self, pixels, opts))
    }

    fn forward_embedded(
        &self,
        embeddings: &Tensor,
        grid: (usize, usize),
        opts: &EncodeOptions,
    ) -> Result<VisionOutput> {
        pollster::block_on(GpuVision::forward_embedded(self, embeddings, grid, opts))
    }

    fn forward_subsets(&self, embeddings: &Tensor, subsets: &[Vec<usize>]) -> Result<Tensor> {
        pollster::block_on(GpuVision::forward_subsets(self, embeddings, subsets))
    }

    fn disabled(&self) -> bool {
        self.is_disabled()
    }

    fn disable(&self) {
        self.set_disabled();
    }
}
