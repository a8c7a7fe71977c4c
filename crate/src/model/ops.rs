//! Small tensor operations shared by both towers.
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
    /// `x @ w_t + b` over the last dimension of `x` (any number of leading dimensions).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let last = dims[dims.len() - 1];
        let rows = x.elem_count() / last;
        let y = x.contiguous()?.reshape((rows, last))?.matmul(&self.w_t)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.w_t.dim(1)?;
        Ok(y.reshape(out_dims)?)
    }
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
    pub x: Tensor,
    pub vv: Option<Tensor>,
}

impl Block {
    /// One pre-norm block on `x: [B, T, D]`. `mask` (broadcastable to `[B, H, T, T]`) is added to
    /// the attention logits (the text tower's causal mask). With `vv`, also computes the
    /// value-to-value ("CLIP Surgery") attention `softmax(v vᵀ / √d) v` through the output
    /// projection, from the same `ln_1` input.
    pub fn forward(
        &self,
        x: &Tensor,
        heads: usize,
        act: Activation,
        mask: Option<&Tensor>,
        vv: bool,
    ) -> Result<BlockOut> {
        let (b, t, d) = x.dims3()?;
        let hd = d / heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let h = self.ln_1.forward(x)?;
        let qkv = self
            .qkv
            .forward(&h)?
            .reshape((b, t, 3, heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)? * scale)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let attend = |q: &Tensor, k: &Tensor, mask: Option<&Tensor>| -> Result<Tensor> {
            let logits = q.matmul(&k.t()?)?;
            let logits = match mask {
                Some(m) => logits.broadcast_add(m)?,
                None => logits,
            };
            let a = candle_nn::ops::softmax_last_dim(&logits)?;
            let o = a.matmul(&v)?; // [B, H, T, hd]
            Ok(o.transpose(1, 2)?.reshape((b, t, d))?)
        };
        let o = attend(&q, &k, mask)?;
        let x = (x + self.out.forward(&o)?)?;
        let vv = if vv {
            let vs = (&v * scale)?;
            Some(self.out.forward(&attend(&vs, &v, None)?)?)
        } else {
            None
        };
        let m = activation(&self.fc1.forward(&self.ln_2.forward(&x)?)?, act)?;
        let x = (&x + self.fc2.forward(&m)?)?;
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
/// align_corners=False, antialias=...)` along one axis (torch's `UpSampleKernel` arithmetic).
pub fn bicubic_matrix(input: usize, output: usize, mode: PosInterp) -> Vec<f64> {
    let mut m = vec![0f64; output * input];
    let scale = input as f64 / output as f64;
    for i in 0..output {
        let row = &mut m[i * input..(i + 1) * input];
        match mode {
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
