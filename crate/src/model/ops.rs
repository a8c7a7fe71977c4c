//! The building blocks both towers run: the forward passes of the weight structs ([`Norm`],
//! [`Linear`], a transformer [`Block`] with its optional v-v path), the MLP activation, the CPU
//! parallelism helpers ([`par_slices`], [`split_ranges`]), bicubic position-embedding resampling,
//! and the text tower's causal mask and end-of-text positions. The weight structs and their
//! loading are in [`super::weights`]; whole-tower passes are in [`super::vision`] and
//! [`super::text`].
use super::config::{Activation, PosInterp};
use super::weights::{Block, Linear, Norm};
use anyhow::Result;
use candle_core::{Device, Tensor};

impl Norm {
    /// LayerNorm over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(
            &x.contiguous()?,
            &self.weight,
            &self.bias,
            self.eps,
        )?)
    }
}

impl Linear {
    /// `x @ w_t + b` over the last dimension of `x` (any number of leading dimensions), in int8
    /// when the layer has its int8 form ([`Linear::quantize`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let last = dims[dims.len() - 1];
        let rows = x.elem_count() / last;
        let x = x.contiguous()?.reshape((rows, last))?;
        // Our int8 GEMMs (`f` fills `c[rows × n]`) on plain buffers.
        let int8 = |n: usize, f: &dyn Fn(&[f32], &mut [f32])| -> Result<Tensor> {
            let a = x.flatten_all()?.to_vec1::<f32>()?;
            let mut c = vec![0f32; rows * n];
            f(&a, &mut c);
            Ok(Tensor::from_vec(c, (rows, n), x.device())?)
        };
        let y = match (&self.x86, &self.packed, &self.q8) {
            (Some(v), _, _) => int8(v.n(), &|a, c| v.gemm_add(a, rows, c))?,
            (None, Some(p), _) => int8(p.n(), &|a, c| p.gemm(a, rows, c))?,
            (None, None, Some(q)) => candle_core::Module::forward(q, &x)?,
            (None, None, None) => matmul_2d(&x, &self.w_t)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.out_dim()?;
        Ok(y.reshape(out_dims)?)
    }
}

/// `x [M, K] @ w [K, N]`: candle's matmul, or in wasm (f32, both contiguous) the GEMM of
/// [`super::wasm_gemm`].
fn matmul_2d(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    #[cfg(target_arch = "wasm32")]
    {
        use candle_core::Storage;
        let ((m, k), (k2, n)) = (x.dims2()?, w.dims2()?);
        anyhow::ensure!(k == k2, "matmul: [{m}, {k}] @ [{k2}, {n}]");
        let (sa, la) = x.storage_and_layout();
        let (sb, lb) = w.storage_and_layout();
        if let (Storage::Cpu(ca), Storage::Cpu(cb), Some((a0, a1)), Some((b0, b1))) =
            (&*sa, &*sb, la.contiguous_offsets(), lb.contiguous_offsets())
        {
            if let (Ok(a), Ok(b)) = (ca.as_slice::<f32>(), cb.as_slice::<f32>()) {
                let mut c = vec![0f32; m * n];
                super::wasm_gemm::gemm(&a[a0..a1], &b[b0..b1], &mut c, m, k, n);
                return Ok(Tensor::from_vec(c, (m, n), x.device())?);
            }
        }
    }
    Ok(x.matmul(w)?)
}

/// Applies the MLP activation.
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::QuickGelu => (x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
    })
}

/// Result of one block: the new residual stream, and the v-v attention output (after the output
/// projection) when asked for.
pub struct BlockOut {
    /// The block's output residual stream, `[B, T, D]`.
    pub x: Tensor,
    /// The v-v attention output, `[B, T, D]`, when the block was asked for it (not added to `x`).
    pub vv: Option<Tensor>,
}

/// Splits `len` items into at most `parts` contiguous `(start, len)` ranges of near-equal size,
/// none shorter than `min` (fewer ranges when `len` is small). Always at least one range.
pub fn split_ranges(len: usize, parts: usize, min: usize) -> Vec<(usize, usize)> {
    let parts = parts.min(len / min.max(1)).max(1);
    let (q, r) = (len / parts, len % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let n = q + usize::from(i < r);
            let range = (start, n);
            start += n;
            range
        })
        .collect()
}

/// Threads of rayon's pool, or one in the single-threaded wasm build (whose pool is the
/// caller): what [`par_slices`] and the block path's GEMMs spread work over. In the browser's
/// threaded build (wasm atomics) candle's matmuls run on one thread, so this is all the
/// parallelism there is. Natively candle's matmuls use rayon's pool as well and the slices nest
/// around them; that is faster only when candle's own pool for element-wise ops is off (see
/// [`init_cpu_threads`]).
pub(super) fn pool_threads() -> usize {
    if cfg!(all(target_arch = "wasm32", not(target_feature = "atomics"))) {
        1
    } else {
        rayon::current_num_threads().max(1)
    }
}

/// Sets up the CPU threads of a native process for the encoders; call it first, before any
/// tensor op. It turns off candle's second thread pool, the one for element-wise ops (its
/// workers spin after each op while rayon's threads run the matmuls, and on a 2-core machine
/// they take turns with them), unless `CANDLE_NUM_THREADS` is set already. The blocks' row-wise
/// work (LayerNorm, bias, activation, softmax) is spread by [`par_slices`] on rayon's pool
/// instead. On a 2-core machine, `anoscope bench --threads 2`: ViT-B/16 encode in 0.77-0.86x the
/// time.
#[cfg(not(target_arch = "wasm32"))]
pub fn init_cpu_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Single-threaded at this point: nothing has started a thread yet.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Fewest rows (tokens) worth giving a thread of their own.
const MIN_ROWS_PER_TASK: usize = 32;

/// Runs `f` on contiguous slices of dimension `dim` of every tensor in `xs` (all equally long
/// along `dim`), in parallel on rayon's pool, and concatenates the results along `dim`. `f` must
/// treat slices independently (row-wise ops, or per-head attention). With one thread (or one
/// slice) it is `f(xs)`: the same arithmetic, since every op here is row-local.
///
/// candle parallelises only its matmuls; this also spreads LayerNorm, the activations, softmax
/// and the small per-head attention matmuls over the threads (natively, and in the browser's
/// threaded wasm build, whose candle matmuls are single-threaded).
pub fn par_slices<F>(xs: &[&Tensor], dim: usize, min: usize, f: F) -> Result<Tensor>
where
    F: Fn(&[Tensor]) -> Result<Tensor> + Sync,
{
    let len = xs[0].dim(dim)?;
    let ranges = split_ranges(len, pool_threads(), min);
    if ranges.len() == 1 {
        let owned: Vec<Tensor> = xs.iter().map(|t| (*t).clone()).collect();
        return f(&owned);
    }
    use rayon::prelude::*;
    let parts = ranges
        .par_iter()
        .map(|&(start, n)| {
            let slices = xs
                .iter()
                .map(|t| Ok(t.narrow(dim, start, n)?.contiguous()?))
                .collect::<Result<Vec<_>>>()?;
            f(&slices)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, dim)?)
}

impl Block {
    /// One pre-norm block on `x: [B, T, D]`. `mask` (broadcastable to `[B, H, T, T]`) is added to
    /// the attention logits (the text tower's causal mask). With `vv`, also computes the
    /// value-to-value ("CLIP Surgery") attention `softmax(v vᵀ / √d) v` through the output
    /// projection, from the same `ln_1` input.
    ///
    /// The token-wise parts (LayerNorms, projections, MLP) run on slices of the `B·T` rows and
    /// attention on slices of the `B·H` heads, in parallel (see [`par_slices`]).
    pub fn forward(
        &self,
        x: &Tensor,
        heads: usize,
        act: Activation,
        mask: Option<&Tensor>,
        vv: bool,
    ) -> Result<BlockOut> {
        // f32 or int8 weights on the CPU: the same block on plain buffers with direct GEMM calls.
        if let Some(out) = self.forward_plain(x, heads, act, mask, vv)? {
            return Ok(out);
        }
        let (b, t, d) = x.dims3()?;
        let hd = d / heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let rows = x.reshape((b * t, d))?;
        let qkv = par_slices(&[&rows], 0, MIN_ROWS_PER_TASK, |s| {
            self.qkv.forward(&self.ln_1.forward(&s[0])?)
        })?
        .reshape((b, t, 3, heads, hd))?
        .permute((2, 0, 3, 1, 4))?; // [3, B, H, T, hd]
        let q = (qkv.get(0)? * scale)?.contiguous()?.reshape((b * heads, t, hd))?;
        let k = qkv.get(1)?.contiguous()?.reshape((b * heads, t, hd))?;
        let v = qkv.get(2)?.contiguous()?.reshape((b * heads, t, hd))?;
        // The mask broadcasts over batch and heads ([T, T] or [1, 1, T, T]).
        let mask = match mask {
            Some(m) => Some(m.reshape((1, t, t))?),
            None => None,
        };
        // softmax(q kᵀ + mask) v per head, on slices of the B·H heads -> [B, T, D].
        let attend = |q: &Tensor, k: &Tensor| -> Result<Tensor> {
            let o = par_slices(&[q, k, &v], 0, 1, |s| {
                let logits = s[0].matmul(&s[1].t()?)?;
                let logits = match &mask {
                    Some(m) => logits.broadcast_add(m)?,
                    None => logits,
                };
                Ok(candle_nn::ops::softmax_last_dim(&logits)?.matmul(&s[2])?)
            })?; // [B·H, T, hd]
            Ok(o.reshape((b, heads, t, hd))?.transpose(1, 2)?.reshape((b * t, d))?)
        };
        let o = attend(&q, &k)?;
        // Residual, then the MLP with its residual, row-wise.
        let x = par_slices(&[&rows, &o], 0, MIN_ROWS_PER_TASK, |s| {
            let x = (&s[0] + self.out.forward(&s[1])?)?;
            let m = activation(&self.fc1.forward(&self.ln_2.forward(&x)?)?, act)?;
            Ok((&x + self.fc2.forward(&m)?)?)
        })?
        .reshape((b, t, d))?;
        let vv = if vv {
            let vs = (&v * scale)?;
            let o = attend(&vs, &v)?;
            let o = par_slices(&[&o], 0, MIN_ROWS_PER_TASK, |s| self.out.forward(&s[0]))?;
            Some(o.reshape((b, t, d))?)
        } else {
            None
        };
        Ok(BlockOut { x, vv })
    }
}

/// Torch's cubic convolution kernel with `A = -0.75` (non-antialiased bicubic).
fn cubic_075(x: f64) -> f64 {
    let a = -0.75;
    let x = x.abs();
    if x <= 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

/// PIL's / torch-antialias bicubic kernel (`a = -0.5`).
fn cubic_05(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// The `[out, in]` matrix of 1-D resampling weights of `F.interpolate(mode="bicubic",
/// align_corners=False, antialias=...)` (or `mode="bilinear"` for [`PosInterp::Bilinear`]) along
/// one axis (torch's `UpSampleKernel` arithmetic).
pub fn bicubic_matrix(input: usize, output: usize, mode: PosInterp) -> Vec<f64> {
    let mut m = vec![0f64; output * input];
    let scale = input as f64 / output as f64;
    for i in 0..output {
        let row = &mut m[i * input..(i + 1) * input];
        match mode {
            PosInterp::Bilinear => {
                // Source index clamped at 0; the upper neighbour clamped to the last sample.
                let src = (scale * (i as f64 + 0.5) - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(input - 1);
                let i1 = (i0 + 1).min(input - 1);
                let t = src - i0 as f64;
                row[i0] += 1.0 - t;
                row[i1] += t;
            }
            PosInterp::Bicubic => {
                let src = scale * (i as f64 + 0.5) - 0.5;
                let base = src.floor();
                let t = src - base;
                let w = [cubic_075(t + 1.0), cubic_075(t), cubic_075(1.0 - t), cubic_075(2.0 - t)];
                for (k, wk) in w.iter().enumerate() {
                    let idx = (base as i64 - 1 + k as i64).clamp(0, input as i64 - 1) as usize;
                    row[idx] += wk;
                }
            }
            PosInterp::BicubicAntialias => {
                let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
                let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
                let center = scale * (i as f64 + 0.5);
                // static_cast<int64_t> truncates toward zero.
                let xmin = ((center - support + 0.5) as i64).max(0) as usize;
                let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
                let span = &mut row[xmin..xmax];
                for (k, w) in span.iter_mut().enumerate() {
                    *w = cubic_05(((xmin + k) as f64 - center + 0.5) * invscale);
                }
                let total: f64 = span.iter().sum();
                if total != 0.0 {
                    span.iter_mut().for_each(|w| *w /= total);
                }
            }
        }
    }
    m
}

/// Resamples the patch part of position embeddings `[g0·g0 + 1, D]` to a `gh × gw` grid
/// (the class position is kept as is), as `F.interpolate` on the `[1, D, g0, g0]` image would.
pub fn interpolate_pos_embedding(pos: &Tensor, g0: usize, gh: usize, gw: usize, mode: PosInterp) -> Result<Tensor> {
    if gh == g0 && gw == g0 {
        return Ok(pos.clone());
    }
    let d = pos.dim(1)?;
    let cls = pos.narrow(0, 0, 1)?;
    let grid = pos
        .narrow(0, 1, g0 * g0)?
        .to_dtype(candle_core::DType::F64)?
        .reshape((g0, g0 * d))?;
    let wy = Tensor::from_vec(bicubic_matrix(g0, gh, mode), (gh, g0), &Device::Cpu)?;
    let wx = Tensor::from_vec(bicubic_matrix(g0, gw, mode), (gw, g0), &Device::Cpu)?;
    // Rows first: [gh, g0·D] -> [gh, g0, D]; then columns: for each output row, wx @ [g0, D].
    let rows = wy.matmul(&grid)?.reshape((gh, g0, d))?;
    let out = wx
        .unsqueeze(0)?
        .broadcast_as((gh, gw, g0))?
        .contiguous()?
        .matmul(&rows)?; // [gh, gw, D]
    let out = out.reshape((gh * gw, d))?.to_dtype(candle_core::DType::F32)?;
    Ok(Tensor::cat(&[cls, out], 0)?)
}

/// Index of the end-of-text token of each row: the first position of the row's largest id
/// (`argmax`, as both transformers (for OpenAI configs) and open_clip pool).
pub fn eot_positions(ids: &[Vec<u32>]) -> Vec<usize> {
    ids.iter()
        .map(|row| {
            let mut best = 0;
            for (i, &t) in row.iter().enumerate() {
                if t > row[best] {
                    best = i;
                }
            }
            best
        })
        .collect()
}

/// `[T, T]` additive causal mask (0 on and below the diagonal, -inf above).
pub fn causal_mask(t: usize) -> Result<Tensor> {
    let m: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(m, (t, t), &Device::Cpu)?)
}
