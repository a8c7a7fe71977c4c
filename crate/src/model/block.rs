//! The CPU path of a transformer block ([`Block::forward_plain`]), natively and in wasm: the
//! same arithmetic as [`Block::forward`] on plain `f32` buffers, with direct GEMM calls. What it
//! saves against the candle path, per block:
//!
//! - the projections' bias and residual adds ride in the GEMM's output (it starts as bias (+
//!   residual) and the GEMM adds `x @ w` to it) instead of separate passes with new tensors;
//! - attention reads q, k and v in place from the fused qkv output (strided GEMM operands) and
//!   runs each head's `softmax(q kᵀ) v` on one thread, the heads spread over rayon's pool,
//!   instead of permuting and copying q, k, v and the output;
//! - softmax, QuickGELU and GELU use a vectorised `exp` ([`exp_slice`]) and `erf` instead of one
//!   libm call per value, fused into one pass each: natively AVX-512 / AVX2 picked at run time,
//!   in wasm the SIMD128 the module is built with (LLVM vectorises the same loops; `simd_fn!`).
//!
//! The GEMM behind each projection: natively the `gemm` crate (candle's own) for f32 weights; in
//! wasm our f32 GEMM (`model::wasm_gemm`, built only there: `f32x4.relaxed_madd` in the
//! relaxed-SIMD build, multiply then add in the SIMD128 one, where it took 0.81× the time of the
//! `gemm` crate's kernel for an f32 encode), which also runs the attention products; our int8
//! GEMM ([`super::wasm_qgemm`]) for a wasm layer in int8; and for a native layer in int8 our
//! AVX-512 VNNI or AVX2 GEMM ([`super::x86_qgemm`]) or, on CPUs without either, candle's quantized matmul.
use super::config::Activation;
use super::ops::{activation, BlockOut};
use super::weights::{Block, Linear, Norm};
use anyhow::{ensure, Result};
use candle_core::{DType, Device, Storage, Tensor};
#[cfg(not(target_arch = "wasm32"))]
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Defines a function of plain loops (over [`exp1`] and friends) compiled three times: for
/// AVX-512 and for AVX2 + FMA, picked at run time where the CPU has them, and as built (SSE2
/// natively; in wasm the SIMD128 the module is built with). LLVM vectorises the loops for each.
/// The body is its own `#[inline(always)]` function so that it is compiled inside each
/// `#[target_feature]` wrapper (a closure passed to one may be compiled without the features:
/// the softmax's was, in SSE2, before this macro).
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) {
            #[inline(always)]
            fn body($($a: $t),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
                unsafe fn v4($($a: $t),*) {
                    body($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($a: $t),*) {
                    body($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
                    // SAFETY: the CPU has AVX-512F/DQ (checked just above).
                    return unsafe { v4($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    return unsafe { v3($($a),*) };
                }
            }
            body($($a),*)
        }
    };
}

/// Fewest rows worth a rayon task in the row-wise passes (LayerNorm, activation).
const MIN_ROWS: usize = 16;

/// A contiguous f32 CPU tensor's values (copied; the block inputs are small next to the work).
fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Runs `f` on the f32 values of a contiguous CPU tensor without copying them.
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (s, l) = t.storage_and_layout();
    let (a, b) = l.contiguous_offsets()?;
    match &*s {
        Storage::Cpu(c) => c.as_slice::<f32>().ok().map(|v| f(&v[a..b])),
        _ => None,
    }
}

/// Whether every weight of `blk` is an f32 CPU tensor this path can read in place, or a layer's
/// int8 form (candle's or the VNNI GEMM's, which keep the f32 `w_t`, or the wasm GEMM's packed
/// panels).
fn supported(blk: &Block) -> bool {
    let ok = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu() && t.is_contiguous();
    let lin = |l: &Linear| (l.packed.is_some() || ok(&l.w_t)) && l.bias.as_ref().is_none_or(ok);
    let norm = |n: &Norm| ok(&n.weight) && ok(&n.bias);
    lin(&blk.qkv) && lin(&blk.out) && lin(&blk.fc1) && lin(&blk.fc2) && norm(&blk.ln_1) && norm(&blk.ln_2)
}

/// Threads for one native `gemm` call: rayon's pool size, `None` parallelism for 1.
#[cfg(not(target_arch = "wasm32"))]
fn parallelism() -> Parallelism {
    match super::ops::pool_threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `out[m × n] += x · W` where `f(a, rows, c)` adds `a · W` to `c` for `rows` rows of `a` (a
/// single-threaded GEMM): the rows are split over rayon's pool in `per_thread` parts per
/// thread, at least [`MIN_GEMM_ROWS`] rows each. More parts than threads let a thread that
/// finishes first take over work (on a shared machine one core is often slower); each part
/// streams all of the weights again, and the wasm f32 GEMM packs them again, so that one
/// keeps one part per thread.
#[allow(clippy::too_many_arguments)]
fn add_rows_gemm(
    out: &mut [f32],
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    per_thread: usize,
    f: impl Fn(&[f32], usize, &mut [f32]) + Sync,
) {
    let ranges = super::ops::split_ranges(m, super::ops::pool_threads() * per_thread, MIN_GEMM_ROWS);
    let mut parts: Vec<(&mut [f32], usize, usize)> = Vec::with_capacity(ranges.len());
    let mut rest = out;
    for &(start, rows) in &ranges {
        let (head, tail) = rest.split_at_mut(rows * n);
        parts.push((head, start, rows));
        rest = tail;
    }
    parts
        .into_par_iter()
        .for_each(|(c, start, rows)| f(&x[start * k..(start + rows) * k], rows, c));
}

/// Fewest rows worth a part of their own in [`add_rows_gemm`].
const MIN_GEMM_ROWS: usize = 24;

/// LayerNorm of each `d`-wide row of `x` (two-pass mean and variance), in parallel over rows.
fn layer_norm(x: &[f32], d: usize, n: &Norm) -> Result<Vec<f32>> {
    let mut out = vec![0f32; x.len()];
    let eps = n.eps;
    let done = with_slice(&n.weight, |g| {
        with_slice(&n.bias, |b| {
            out.par_chunks_mut(d)
                .zip(x.par_chunks(d))
                .with_min_len(MIN_ROWS)
                .for_each(|(o, r)| layer_norm_row(o, r, g, b, eps))
        })
    });
    ensure!(done.flatten().is_some(), "layer norm weights are not contiguous f32");
    Ok(out)
}

/// `init + x @ w + bias` for `x: [m, k]` (or `x @ w + bias` without `init`), where `init` is
/// `[m, n]` (the residual stream). The output starts as the bias (+ residual) and the GEMM adds
/// `x @ w` to it in place (the `gemm` crate, our wasm f32 and int8 GEMMs); only candle's
/// quantized matmul writes its product apart, added afterwards.
fn linear(l: &Linear, x: &[f32], m: usize, init: Option<&[f32]>) -> Result<Vec<f32>> {
    let (k, n) = (l.in_dim()?, l.out_dim()?);
    ensure!(x.len() == m * k, "linear: input has {} values, not {m}×{k}", x.len());
    let mut out = match init {
        Some(r) => r.to_vec(),
        None => vec![0f32; m * n],
    };
    if let Some(b) = &l.bias {
        with_slice(b, |b| {
            out.par_chunks_mut(n)
                .with_min_len(MIN_ROWS)
                .for_each(|row| row.iter_mut().zip(b).for_each(|(o, b)| *o += b))
        })
        .ok_or_else(|| anyhow::anyhow!("linear bias is not contiguous f32"))?;
    }
    if let Some(v) = &l.x86 {
        v.gemm_add(x, m, &mut out);
        return Ok(out);
    }
    if let Some(p) = &l.packed {
        add_rows_gemm(&mut out, x, m, k, n, 2, |a, rows, c| p.gemm_add(a, rows, c));
        return Ok(out);
    }
    if let Some(q) = &l.q8 {
        // candle's quantized matmul runs on one thread here (its own pool is off, see
        // `init_cpu_threads`): the rows are split over rayon's instead.
        let failed = std::sync::Mutex::new(None);
        add_rows_gemm(&mut out, x, m, k, n, 1, |a, rows, c| {
            let y = Tensor::from_slice(a, (rows, k), &Device::Cpu)
                .and_then(|xt| candle_core::Module::forward(q, &xt))
                .map_err(anyhow::Error::from)
                .and_then(|y| values(&y));
            match y {
                Ok(y) => c.iter_mut().zip(&y).for_each(|(c, y)| *c += y),
                Err(e) => *failed.lock().unwrap() = Some(e),
            }
        });
        if let Some(e) = failed.into_inner().unwrap() {
            return Err(e);
        }
        return Ok(out);
    }
    let read_dst = init.is_some() || l.bias.is_some();
    with_slice(&l.w_t, |w| f32_gemm_add(&mut out, x, w, m, k, n, read_dst))
        .ok_or_else(|| anyhow::anyhow!("linear weights are not contiguous f32"))?;
    Ok(out)
}

/// `out[m × n] (+)= x[m × k] · w[k × n]` for f32 weights, all row-major: in wasm our GEMM
/// ([`super::wasm_gemm`]) with the rows split over the pool, natively the `gemm` crate on
/// rayon's pool. `out` is added to: it holds the bias or the residual, or zeros (`read_dst`
/// false, when the layer has neither: the `gemm` crate then skips reading it).
fn f32_gemm_add(out: &mut [f32], x: &[f32], w: &[f32], m: usize, k: usize, n: usize, read_dst: bool) {
    #[cfg(target_arch = "wasm32")]
    {
        // `out` holds zeros where there is nothing to read (`linear` allocates it so).
        let _ = read_dst;
        add_rows_gemm(out, x, m, k, n, 1, |a, rows, c| {
            super::wasm_gemm::gemm_add(a, w, c, rows, k, n)
        });
    }
    #[cfg(not(target_arch = "wasm32"))]
    // SAFETY: out is m×n row-major, x is m×k row-major, w is k×n row-major (the caller's sizes;
    // checked below).
    unsafe {
        assert!(
            out.len() >= m * n && x.len() >= m * k && w.len() >= k * n,
            "gemm: short slices"
        );
        gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            read_dst,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        )
    }
}

/// Multi-head attention on the fused projection `qkv: [B·T, 3D]` (q, k, v side by side, heads
/// `hd` wide inside each): for each image and head, `softmax(scale · q kᵀ + mask) v`, written to
/// `[B·T, D]` in the heads' order. With `vv`, q and k are both v (the v-v path). Heads run in
/// parallel, each on one thread.
#[allow(clippy::too_many_arguments)]
fn attention(
    qkv: &[f32],
    b: usize,
    t: usize,
    heads: usize,
    hd: usize,
    scale: f32,
    mask: Option<&[f32]>,
    vv: bool,
) -> Vec<f32> {
    let d = heads * hd;
    let rs = 3 * d;
    let (q_off, k_off) = if vv { (2 * d, 2 * d) } else { (0, d) };
    // Per head [T, hd], contiguous; scattered into [B·T, D] afterwards.
    let mut per_head = vec![0f32; b * heads * t * hd];
    per_head.par_chunks_mut(t * hd).enumerate().for_each_init(
        || vec![0f32; t * t],
        |logits, (bh, o)| {
            let (bi, h) = (bh / heads, bh % heads);
            let base = bi * t * rs + h * hd;
            let (q, k, v) = (&qkv[base + q_off..], &qkv[base + k_off..], &qkv[base + 2 * d..]);
            scores(q, k, rs, t, hd, scale, logits);
            for (i, row) in logits.chunks_mut(t).enumerate() {
                if let Some(m) = mask {
                    row.iter_mut().zip(&m[i * t..(i + 1) * t]).for_each(|(l, m)| *l += m);
                }
                softmax_in_place(row);
            }
            mix(logits, v, rs, t, hd, o);
        },
    );
    let mut out = vec![0f32; b * t * d];
    out.par_chunks_mut(d)
        .enumerate()
        .with_min_len(MIN_ROWS)
        .for_each(|(row, o)| {
            let (bi, ti) = (row / t, row % t);
            for h in 0..heads {
                let src = ((bi * heads + h) * t + ti) * hd;
                o[h * hd..(h + 1) * hd].copy_from_slice(&per_head[src..src + hd]);
            }
        });
    out
}

/// `logits[t × t] = scale · q kᵀ` for one head: `q`, `k` its `t × hd` queries and keys, rows
/// `rs` apart. In wasm our GEMM ([`super::wasm_gemm`]; the `gemm` crate's packing and dispatch
/// cost more than these small products there), natively the `gemm` crate.
fn scores(q: &[f32], k: &[f32], rs: usize, t: usize, hd: usize, scale: f32, logits: &mut [f32]) {
    #[cfg(target_arch = "wasm32")]
    {
        use super::wasm_gemm::{gemm_view, View};
        let kt = View { data: k, rs: 1, cs: rs };
        gemm_view(View { data: q, rs, cs: 1 }, kt, logits, t, hd, t, false);
        logits[..t * t].iter_mut().for_each(|l| *l *= scale);
    }
    #[cfg(not(target_arch = "wasm32"))]
    // SAFETY: q, k rows are `rs` apart, each `hd` long, `t` of them inside their slices (the
    // caller's layout); logits is t×t.
    unsafe {
        gemm(
            t,
            t,
            hd,
            logits.as_mut_ptr(),
            1,
            t as isize,
            false,
            q.as_ptr(),
            1,
            rs as isize,
            k.as_ptr(),
            rs as isize,
            1,
            0.0,
            scale,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `o[t × hd] = p v` for one head: `p` the `t × t` attention weights, `v` its `t × hd` values,
/// rows `rs` apart. The GEMM as in [`scores`].
fn mix(p: &[f32], v: &[f32], rs: usize, t: usize, hd: usize, o: &mut [f32]) {
    #[cfg(target_arch = "wasm32")]
    {
        use super::wasm_gemm::{gemm_view, View};
        gemm_view(View::rows(p, t), View { data: v, rs, cs: 1 }, o, t, t, hd, false);
    }
    #[cfg(not(target_arch = "wasm32"))]
    // SAFETY: p is t×t, v's t rows of hd values are `rs` apart inside `v`, o is t×hd.
    unsafe {
        gemm(
            t,
            hd,
            t,
            o.as_mut_ptr(),
            1,
            hd as isize,
            false,
            p.as_ptr(),
            1,
            t as isize,
            v.as_ptr(),
            1,
            rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

simd_fn! {
    /// LayerNorm of one row `r` into `o` (two-pass mean and variance), gain `g`, bias `b`.
    fn layer_norm_row(o: &mut [f32], r: &[f32], g: &[f32], b: &[f32], eps: f32) {
        let d = r.len() as f32;
        let mean = lanes(r, 0.0, |a, v| a + v, |a, b| a + b) / d;
        for (o, &v) in o.iter_mut().zip(r) {
            *o = v - mean;
        }
        let var = lanes(o, 0.0, |a, v| a + v * v, |a, b| a + b) / d;
        let inv = 1.0 / (var + eps).sqrt();
        for ((o, &g), &b) in o.iter_mut().zip(g).zip(b) {
            *o = *o * inv * g + b;
        }
    }
}

simd_fn! {
    /// `softmax` of one row in place (max-subtracted; -inf entries give 0).
    fn softmax_in_place(row: &mut [f32]) {
        // (`f32::max` is a libm call in wasm, where it does not vectorise; the logits hold no NaN.)
        let max2 = |a: f32, b: f32| if a > b { a } else { b };
        let max = lanes(row, f32::NEG_INFINITY, max2, max2);
        row.iter_mut().for_each(|v| *v = exp1(*v - max));
        let inv = 1.0 / lanes(row, 0.0, |a, b| a + b, |a, b| a + b);
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Folds `x` with `op(accumulator, value)` over 16 independent lanes, then combines the lanes
/// with `join` (a shape LLVM vectorises, unlike a serial fold of floats).
#[inline(always)]
fn lanes(x: &[f32], init: f32, op: impl Fn(f32, f32) -> f32, join: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = op(*a, v);
        }
    }
    let mut r = chunks.remainder().iter().fold(init, |a, &v| op(a, v));
    for a in acc {
        r = join(r, a);
    }
    r
}

simd_fn! {
    /// QuickGELU `x · σ(1.702 x)` = `x / (1 + exp(-1.702 x))` in place.
    fn quick_gelu_in_place(x: &mut [f32]) {
        x.iter_mut().for_each(|v| *v /= 1.0 + exp1(-1.702 * *v))
    }
}

simd_fn! {
    /// GELU `x · Φ(x)` = `x/2 · (1 + erf(x/√2))` in place, with [`erf1`].
    fn gelu_erf_in_place(x: &mut [f32]) {
        x.iter_mut()
            .for_each(|v| *v = 0.5 * *v * (1.0 + erf1(*v * std::f32::consts::FRAC_1_SQRT_2)))
    }
}

/// `erf(x)`, branch-free so that loops of it vectorise: Abramowitz & Stegun 7.1.26,
/// `1 - (a₁t + … + a₅t⁵)·exp(-x²)` with `t = 1/(1 + p|x|)` (absolute error ≤ 1.5e-7), the sign
/// of `x` put back.
#[inline(always)]
fn erf1(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_72, 1.421_413_8, -1.453_152, 1.061_405_4];
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = ((((A[4] * t + A[3]) * t + A[2]) * t + A[1]) * t + A[0]) * t;
    let y = 1.0 - poly * exp1(-ax * ax);
    y.copysign(x)
}

simd_fn! {
    /// `exp` of every value in place: Cody–Waite range reduction (`x = n·ln2 + r`, |r| ≤ ln2/2),
    /// a degree-6 polynomial for `exp(r)` (Cephes `expf`'s coefficients, relative error ≈ 1e-7),
    /// and `2ⁿ` built in the exponent bits. Inputs below -87.3 give 0 (as `-inf` must in a
    /// masked softmax), above 88.3 give `exp(88.3)`.
    pub fn exp_slice(x: &mut [f32]) {
        x.iter_mut().for_each(|v| *v = exp1(*v))
    }
}

/// One value of [`exp_slice`] (branch-free so that the loops around it vectorise).
#[inline(always)]
fn exp1(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2²³: adding it rounds to an integer
    let zero = x < -87.3;
    let xc = x.clamp(-87.3, 88.3);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // `n` as an integer, read from `t`'s low mantissa bits: `t` lies in [2²³, 2²⁴), where one
    // ulp is 1, so `bits(t) - bits(MAGIC)` is exactly `n`. The same value as `n as i32`, but
    // in integer lanes: natively `n as i32` (a saturating cast) compiles to one scalar
    // `vcvttss2si` and NaN check per value, which held the AVX-512 loops to scalar speed.
    let ni = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let pow2 = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    if zero {
        0.0
    } else {
        y * pow2
    }
}

impl Block {
    /// [`Block::forward`] on plain f32 buffers with direct `gemm` calls (see the module docs);
    /// `None` when the block's weights or `x` are not f32 on the CPU (the caller then runs
    /// [`Block::forward`]).
    pub fn forward_plain(
        &self,
        x: &Tensor,
        heads: usize,
        act: Activation,
        mask: Option<&Tensor>,
        vv: bool,
    ) -> Result<Option<BlockOut>> {
        if x.dtype() != DType::F32 || !x.device().is_cpu() || !supported(self) {
            return Ok(None);
        }
        let (b, t, d) = x.dims3()?;
        ensure!(d % heads == 0, "width {d} is not a multiple of {heads} heads");
        let hd = d / heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let rows = b * t;
        let xs = values(x)?;
        let mask = match mask {
            Some(m) => {
                ensure!(m.elem_count() == t * t, "attention mask must have {t}×{t} values");
                Some(values(&m.to_dtype(DType::F32)?)?)
            }
            None => None,
        };
        let h = layer_norm(&xs, d, &self.ln_1)?;
        let qkv = linear(&self.qkv, &h, rows, None)?;
        let o = attention(&qkv, b, t, heads, hd, scale, mask.as_deref(), false);
        let x1 = linear(&self.out, &o, rows, Some(&xs))?;
        let h2 = layer_norm(&x1, d, &self.ln_2)?;
        let mut m = linear(&self.fc1, &h2, rows, None)?;
        let width = m.len() / rows;
        match act {
            Activation::QuickGelu => {
                m.par_chunks_mut(width)
                    .with_min_len(MIN_ROWS)
                    .for_each(quick_gelu_in_place);
            }
            Activation::Gelu => {
                m.par_chunks_mut(width)
                    .with_min_len(MIN_ROWS)
                    .for_each(gelu_erf_in_place);
            }
            other => {
                let mt = Tensor::from_vec(m, (rows, width), &Device::Cpu)?;
                m = values(&activation(&mt, other)?)?;
            }
        }
        let x2 = linear(&self.fc2, &m, rows, Some(&x1))?;
        let vv = if vv {
            let o = attention(&qkv, b, t, heads, hd, scale, mask.as_deref(), true);
            let o = linear(&self.out, &o, rows, None)?;
            Some(Tensor::from_vec(o, (b, t, d), &Device::Cpu)?)
        } else {
            None
        };
        Ok(Some(BlockOut {
            x: Tensor::from_vec(x2, (b, t, d), &Device::Cpu)?,
            vv,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_slice_matches_std() {
        let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.0441).collect();
        xs.extend([0.0, -0.0, 1e-8, -1e-8, 88.0, -87.0, -87.29]);
        let mut ys = xs.clone();
        exp_slice(&mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            if x < -87.3 {
                assert_eq!(y, 0.0, "exp({x}) is flushed to 0");
                continue;
            }
            let want = x.exp();
            let rel = ((y - want) / want).abs();
            assert!(rel < 3e-7, "exp({x}) = {y}, want {want} (rel {rel:e})");
        }
        let mut edge = vec![f32::NEG_INFINITY, -100.0, -87.31, 100.0, f32::INFINITY];
        exp_slice(&mut edge);
        assert_eq!(&edge[..3], &[0.0, 0.0, 0.0]);
        assert!(edge[3].is_finite() && edge[3] > 1e38 && edge[4] == edge[3]);
    }

    /// The vectorised [`exp_slice`] (AVX-512 here where the CPU has it) gives the same bits as
    /// the formula with `n` converted by a saturating cast, value by value, so that reading `n`
    /// from the mantissa changed no result (and wasm, which converts with
    /// `i32x4.trunc_sat_f32x4_s`, agrees with native builds).
    #[test]
    fn exp_slice_bits_match_the_cast_formula() {
        fn cast_formula(x: f32) -> f32 {
            const MAGIC: f32 = 12_582_912.0;
            let xc = x.clamp(-87.3, 88.3);
            let n = (xc * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
            let r = (xc - n * 0.693_359_4) - n * -2.121_944_4e-4;
            let mut p = 1.987_569_1e-4f32;
            for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
                p = p * r + c;
            }
            let y = p * r * r + r + 1.0;
            let pow2 = f32::from_bits(((n as i32 + 127) as u32) << 23);
            if x < -87.3 {
                0.0
            } else {
                y * pow2
            }
        }
        let mut xs: Vec<f32> = (-200_000..=200_000).map(|i| i as f32 * 4.5e-4).collect();
        xs.extend([-87.3, -87.29, 88.3, 88.29, 0.5 * std::f32::consts::LN_2, -0.0, 1e-30]);
        let mut ys = xs.clone();
        exp_slice(&mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            assert_eq!(y.to_bits(), cast_formula(x).to_bits(), "exp({x})");
        }
    }

    #[test]
    fn gelu_erf_matches_f64() {
        let xs: Vec<f32> = (-4000..=4000)
            .map(|i| i as f32 * 0.0025)
            .chain([-30.0, 30.0, 1e-6])
            .collect();
        let mut g = xs.clone();
        gelu_erf_in_place(&mut g);
        let t = Tensor::from_vec(xs.clone(), xs.len(), &Device::Cpu).unwrap();
        let candle = t.gelu_erf().unwrap().to_vec1::<f32>().unwrap();
        for ((&x, &y), &c) in xs.iter().zip(&g).zip(&candle) {
            let want = 0.5 * x as f64 * (1.0 + erf64(x as f64 / std::f64::consts::SQRT_2));
            let err = (y as f64 - want).abs();
            assert!(
                err <= 2e-7 * (1.0 + x.abs() as f64),
                "gelu({x}) = {y}, want {want} (|Δ| {err:e})"
            );
            assert!((y - c).abs() <= 3e-7 * (1.0 + x.abs()), "gelu({x}) = {y}, candle {c}");
        }
        assert_eq!(g[xs.len() - 3], 0.0, "gelu(-30) is 0");
        assert_eq!(g[xs.len() - 2], 30.0, "gelu(30) is 30");
    }

    /// erf in f64 by its Maclaurin series (|x| < 3) or the continued fraction of erfc.
    fn erf64(x: f64) -> f64 {
        let ax = x.abs();
        let r = if ax < 3.0 {
            let (mut term, mut sum, mut n) = (ax, ax, 0.0);
            while term.abs() > 1e-17 * sum.abs() {
                n += 1.0;
                term *= -ax * ax / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut f = ax;
            for k in (1..60).rev() {
                f = ax + (k as f64 / 2.0) / f;
            }
            1.0 - (-ax * ax).exp() / (f * std::f64::consts::PI.sqrt())
        };
        r.copysign(x)
    }

    #[test]
    fn softmax_and_quick_gelu_match_reference() {
        let mut row = vec![0.5f32, -1.0, 3.0, f32::NEG_INFINITY, 2.0];
        let max = 3.0f32;
        let e: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
        let s: f32 = e.iter().sum();
        softmax_in_place(&mut row);
        for (a, b) in row.iter().zip(e.iter().map(|v| v / s)) {
            assert!((a - b).abs() < 1e-7, "{a} vs {b}");
        }
        assert_eq!(row[3], 0.0);
        let xs: Vec<f32> = (-300..300).map(|i| i as f32 * 0.05).collect();
        let mut g = xs.clone();
        quick_gelu_in_place(&mut g);
        for (x, y) in xs.iter().zip(&g) {
            let want = x / (1.0 + (-1.702 * x).exp());
            assert!(
                (y - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "quick_gelu({x}) = {y}, want {want}"
            );
        }
    }
}
