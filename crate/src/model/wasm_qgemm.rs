//! The int8 GEMM of the wasm builds: `C = A · Wᵀ` for a [`Linear`](super::weights::Linear)
//! layer with int8 weights (`W` the `[N, K]` weight, one scale per [`BLOCK`] inputs of each
//! output, as a q8 checkpoint stores it; `A` the `[M, K]` f32 activations, quantized here per
//! row and block at run time), i32 products per block, scaled into f32 accumulators.
//!
//! Why our own kernel: candle's Q8_0 matmul in wasm is a vector dot per output (one row of `A`
//! against one row of `W`, then a horizontal sum), which measured 1.5–2.7× slower than our f32
//! matmul on ViT-B/16's GEMMs (docs/speed.md). Here the weights are packed once, at load, into
//! panels of [`NR`] outputs interleaved so that each `i32x4` lane accumulates one output
//! (no horizontal sums), and every group of [`MR`] rows runs over a panel while it is in L1.
//!
//! Two dot products ([`Dot`]):
//! * SIMD128 (every wasm build): activations symmetric int8 per row and block (`d = amax/127`,
//!   as candle's Q8_0), widened to i16 when quantized; the panel holds the weights of 8 outputs
//!   × 2 inputs per 16 bytes, widened to i16 once per (K block, panel) into a scratch panel
//!   that every row group then reads (widening in the kernel instead cost 7–10 % of an encode),
//!   multiplied by `i32x4.dot_i16x8_s` (8 multiply-adds per instruction).
//! * relaxed SIMD (only in the `relaxed-simd` build): `i32x4.relaxed_dot_i8x16_i7x16_add_s` (16
//!   multiply-adds). Its second operand must lie in 0..=127 for every engine to give the same
//!   result, so the activations are quantized to ±63 (`d = amax/63`) and stored plus 64 (u7);
//!   the kernel starts each block's i32 sums at `-64 · Σ w` (precomputed per output and block),
//!   which cancels the offset exactly. The weights keep all 8 bits: they are the file's
//!   (what the native path runs), and halving their resolution instead would have cost more
//!   than the activations' lost bit (their error is per block, against an f32 input rounded
//!   once per run).
//!
//! The relaxed build picks between the two at run time ([`dot`]), once: engines lower the
//! relaxed dot product to one instruction where the CPU has a byte dot product (V8 on x64:
//! `vpdpbusd` with AVX-VNNI, `vpdpbssd` with AVX-VNNI-INT8; `sdot` on arm64), but on x64 CPUs
//! without (AMD Zen 1–4, Intel before Alder Lake / Sapphire Rapids) V8 emulates it with
//! `pmaddubsw`, `pmaddwd` and `paddd` plus two instructions that rebuild a constant, which ran
//! slower than the SIMD128 kernel on the AMD EPYC (Zen 3) in 10 of 11 rounds. That emulation
//! is told apart by its result, deterministically: `pmaddubsw` saturates its i16 pair sums, so
//! `relaxed_dot(splat(127), splat(0xFF), 0)`, whose second operand the spec leaves
//! implementation-defined above 127, gives 2 · 32767 = 65534 per lane there (129540 with
//! `vpdpbusd`, -508 with a signed dot product). Where it does, the relaxed build runs the
//! SIMD128 kernel (its f32 GEMM keeps the relaxed multiply-adds).
//!
//! Memory: the packed weights are the int8 values plus one f32 scale per block (and with the
//! relaxed dot product one i32 per block): 1.16× (1.28×) the int8 bytes, against 4× for f32.
use super::checkpoint::Q8_BLOCK as BLOCK;
use anyhow::{bail, Result};
use std::sync::atomic::{AtomicU8, Ordering};

/// Outputs (columns of `C`) per packed panel.
pub const NR: usize = 8;
// `store_tile` writes tiles 8 columns wide.
const _: () = assert!(NR == 8);
/// Rows of `A` per micro-kernel call.
pub const MR: usize = 4;
// The remainder kernels below go up to 3 rows.
const _: () = assert!(MR == 4);
/// Depth of one block of `K` (a multiple of [`BLOCK`]).
pub const KC: usize = 768;
const _: () = assert!(KC.is_multiple_of(BLOCK));

/// Offset added to the relaxed kernel's activations (quantized to ±63) to make them 0..=126.
const ZERO: i32 = 64;

/// The int8 dot product a [`PackedQ8`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dot {
    /// `i32x4.dot_i16x8_s` on i16-widened values, activations ±127.
    Simd128,
    /// `i32x4.relaxed_dot_i8x16_i7x16_add_s`, activations ±63 plus 64 (the `relaxed-simd` build).
    Relaxed,
}

impl Dot {
    /// The dot product of that [`Dot::name`], if any.
    pub fn from_name(name: &str) -> Option<Dot> {
        [Dot::Simd128, Dot::Relaxed].into_iter().find(|d| d.name() == name)
    }

    /// Its name, as the page and `Linear::int8_kernel` report it.
    pub fn name(self) -> &'static str {
        match self {
            Dot::Simd128 => "simd128",
            Dot::Relaxed => "relaxed",
        }
    }

    /// Largest quantized activation magnitude.
    pub fn qmax(self) -> f32 {
        match self {
            Dot::Simd128 => 127.0,
            Dot::Relaxed => 63.0,
        }
    }

    /// Index in a panel of weight `(c, kk)` (output `c < NR`, input `kk < k`).
    #[inline]
    fn slot(self, c: usize, kk: usize) -> usize {
        match self {
            // 32 bytes per 4 inputs: outputs 0-3 × 4 inputs, then outputs 4-7 × 4 inputs.
            Dot::Relaxed => (kk / 4) * 32 + (c / 4) * 16 + (c % 4) * 4 + kk % 4,
            // 16 bytes per 2 inputs: outputs 0-7 × 2 inputs.
            Dot::Simd128 => (kk / 2) * 16 + c * 2 + kk % 2,
        }
    }
}

/// [`set_dot`]'s choice: 0 none (the build's own, [`dot`]), 1 SIMD128, 2 relaxed.
static CHOICE: AtomicU8 = AtomicU8::new(0);

/// The dot product layers packed from now on run: the one [`set_dot`] asked for, else SIMD128 in
/// the SIMD128 build, and in the relaxed build the relaxed one unless this engine emulates it
/// with saturating instructions ([`relaxed_dot_saturates`], checked once; natively, where the
/// kernels are scalar code, always the relaxed one).
pub fn dot() -> Dot {
    match CHOICE.load(Ordering::Relaxed) {
        1 => Dot::Simd128,
        2 => Dot::Relaxed,
        _ if !cfg!(feature = "relaxed-simd") => Dot::Simd128,
        _ => match relaxed_dot_saturates() {
            Some(true) => Dot::Simd128,
            _ => Dot::Relaxed,
        },
    }
}

/// Makes layers packed from now on run `dot` (`None`: the build's own choice, [`dot`]). A test
/// hook (and for comparing the two); the relaxed dot product only in the relaxed build.
pub fn set_dot(dot: Option<Dot>) -> Result<()> {
    if dot == Some(Dot::Relaxed) && !cfg!(feature = "relaxed-simd") {
        bail!("this build has no relaxed-SIMD int8 kernel");
    }
    CHOICE.store(
        match dot {
            None => 0,
            Some(Dot::Simd128) => 1,
            Some(Dot::Relaxed) => 2,
        },
        Ordering::Relaxed,
    );
    Ok(())
}

/// In the relaxed build on wasm: whether this engine's `i32x4.relaxed_dot_i8x16_i7x16_add_s`
/// saturates (lane = 65534 for `splat(127) · splat(0xFF)`: x64 without a byte dot product,
/// see the module notes), checked once. `None` elsewhere.
pub fn relaxed_dot_saturates() -> Option<bool> {
    #[cfg(all(target_arch = "wasm32", feature = "relaxed-simd"))]
    {
        static SAT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        // SAFETY: the relaxed build runs only where the engine validated relaxed SIMD.
        Some(*SAT.get_or_init(|| unsafe { probe_relaxed_dot() } == 65534))
    }
    #[cfg(not(all(target_arch = "wasm32", feature = "relaxed-simd")))]
    None
}

/// Lane 0 of `relaxed_dot(splat(127), splat(0xFF), 0)`, the operands hidden from the compiler.
///
/// # Safety
/// The engine runs relaxed SIMD.
#[cfg(all(target_arch = "wasm32", feature = "relaxed-simd"))]
#[target_feature(enable = "relaxed-simd")]
unsafe fn probe_relaxed_dot() -> i32 {
    use core::arch::wasm32::*;
    let a = i8x16_splat(std::hint::black_box(127));
    let b = i8x16_splat(std::hint::black_box(-1));
    i32x4_extract_lane::<0>(i32x4_relaxed_dot_i8x16_i7x16_add(a, b, i32x4_splat(0)))
}

/// An activation value as a kernel reads it: i16 ([`Dot::Simd128`]) or u8 ([`Dot::Relaxed`],
/// offset by 64).
/// `Into<i32>` gives the stored value as an integer (offset included), for the scalar kernel.
trait Act: Copy + Default + Send + Sync + Into<i32> {
    /// The dot product that reads it.
    const DOT: Dot;
    /// A quantized value (within ±[`Dot::qmax`]) as stored.
    fn of(q: i32) -> Self;
    /// This dot product's wasm micro-kernel ([`kernel`]).
    ///
    /// # Safety
    /// As [`kernel`].
    #[cfg(target_arch = "wasm32")]
    unsafe fn kernel<const R: usize>(t: &Tile<'_, Self>, i0: usize, c: &mut [f32]);
}

impl Act for i16 {
    const DOT: Dot = Dot::Simd128;
    fn of(q: i32) -> Self {
        q as i16
    }
    #[cfg(target_arch = "wasm32")]
    unsafe fn kernel<const R: usize>(t: &Tile<'_, Self>, i0: usize, c: &mut [f32]) {
        kernel_simd128::<R>(t, i0, c)
    }
}

impl Act for u8 {
    const DOT: Dot = Dot::Relaxed;
    fn of(q: i32) -> Self {
        (q + ZERO) as u8
    }
    #[cfg(target_arch = "wasm32")]
    unsafe fn kernel<const R: usize>(t: &Tile<'_, Self>, i0: usize, c: &mut [f32]) {
        #[cfg(feature = "relaxed-simd")]
        kernel_relaxed::<R>(t, i0, c);
        #[cfg(not(feature = "relaxed-simd"))]
        {
            let _ = (t, i0, c);
            unreachable!("PackedQ8::with_dot refuses the relaxed dot product in this build");
        }
    }
}

/// The int8 weights of one linear layer, packed for [`PackedQ8::gemm`].
#[derive(Clone)]
pub struct PackedQ8 {
    /// Inputs (a multiple of [`BLOCK`]).
    k: usize,
    /// Outputs.
    n: usize,
    /// The dot product it runs (the panel layout depends on it).
    dot: Dot,
    /// Panel after panel (`ceil(n / NR)`, zero-padded outputs), each `k · NR` bytes.
    ints: Vec<i8>,
    /// Per panel, per block of `K`: the [`NR`] weight scales.
    scales: Vec<f32>,
    /// Per panel, per block: `-64 · Σ w` of each output (the relaxed kernel's offset; empty for
    /// SIMD128).
    corr: Vec<i32>,
}

impl std::fmt::Debug for PackedQ8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedQ8 {{ k: {}, n: {}, dot: {:?} }}", self.k, self.n, self.dot)
    }
}

/// Int8 weights packed into panels of `nr` outputs, for a GEMM's micro-kernel.
pub(super) struct Panels {
    /// Panel after panel (`ceil(n / nr)`, zero-padded outputs), each `k · nr` bytes.
    pub ints: Vec<i8>,
    /// Per panel, per block of `K`: the `nr` weight scales.
    pub scales: Vec<f32>,
    /// Per panel, per block: `Σ w` of each output (for a kernel whose activations are offset).
    pub sums: Vec<i32>,
}

/// Packs int8 weights `q` (`[n, k]`, row-major) with their block scales (`[n, k / BLOCK]`) into
/// panels of `nr` outputs, weight `(c, kk)` of a panel at `slot(c, kk)`. Shared by this GEMM
/// and the native VNNI one ([`super::x86_qgemm`]), whose layouts differ.
pub(super) fn pack_panels(
    q: &[i8],
    scales: &[f32],
    n: usize,
    k: usize,
    nr: usize,
    slot: impl Fn(usize, usize) -> usize,
) -> Result<Panels> {
    if k == 0 || !k.is_multiple_of(BLOCK) {
        bail!("int8 GEMM: {k} inputs is not a positive multiple of {BLOCK}");
    }
    if q.len() != n * k || scales.len() != n * (k / BLOCK) {
        bail!(
            "int8 GEMM: {} weights and {} scales for [{n}, {k}]",
            q.len(),
            scales.len()
        );
    }
    let (panels, kb) = (n.div_ceil(nr), k / BLOCK);
    let mut out = Panels {
        ints: vec![0i8; panels * k * nr],
        scales: vec![0f32; panels * kb * nr],
        sums: vec![0i32; panels * kb * nr],
    };
    for j in 0..n {
        let (p, c) = (j / nr, j % nr);
        let panel = &mut out.ints[p * k * nr..(p + 1) * k * nr];
        let row = &q[j * k..(j + 1) * k];
        for (kk, &v) in row.iter().enumerate() {
            panel[slot(c, kk)] = v;
        }
        for b in 0..kb {
            out.scales[(p * kb + b) * nr + c] = scales[j * kb + b];
            out.sums[(p * kb + b) * nr + c] = row[b * BLOCK..(b + 1) * BLOCK].iter().map(|&v| v as i32).sum();
        }
    }
    Ok(out)
}

impl PackedQ8 {
    /// Packs int8 weights `q` (`[n, k]`, row-major) with their block scales (`[n, k / BLOCK]`),
    /// for the dot product of [`dot`].
    pub fn new(q: &[i8], scales: &[f32], n: usize, k: usize) -> Result<Self> {
        Self::with_dot(dot(), q, scales, n, k)
    }

    /// [`PackedQ8::new`] for the given dot product (the relaxed one only in the relaxed build).
    pub fn with_dot(dot: Dot, q: &[i8], scales: &[f32], n: usize, k: usize) -> Result<Self> {
        if dot == Dot::Relaxed && !cfg!(feature = "relaxed-simd") {
            bail!("this build has no relaxed-SIMD int8 kernel");
        }
        let p = pack_panels(q, scales, n, k, NR, |c, kk| dot.slot(c, kk))?;
        Ok(Self {
            k,
            n,
            dot,
            ints: p.ints,
            scales: p.scales,
            corr: match dot {
                Dot::Relaxed => p.sums.iter().map(|s| -ZERO * s).collect(),
                Dot::Simd128 => Vec::new(),
            },
        })
    }

    /// The dot product it runs.
    pub fn dot(&self) -> Dot {
        self.dot
    }

    /// Quantizes `w_t` (`[k, n]`, row-major: the transposed weight of a linear layer) to int8
    /// blocks along `k` ([`quantize_q8_0`]), then packs them. Weights read from a q8 checkpoint
    /// come back exact.
    pub fn quantize(w_t: &[f32], k: usize, n: usize) -> Result<Self> {
        let (q, scales) = quantize_q8_0(w_t, k, n)?;
        Self::new(&q, &scales, n, k)
    }

    /// Inputs of the layer.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Outputs of the layer.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes held (packed weights, scales and corrections).
    pub fn bytes(&self) -> usize {
        self.ints.len() + self.scales.len() * 4 + self.corr.len() * 4
    }

    /// The weights as f32 `w_t` (`[k, n]`, each int8 value times its scale).
    pub fn dequantize_t(&self) -> Vec<f32> {
        let (k, n, kb) = (self.k, self.n, self.k / BLOCK);
        let mut w = vec![0f32; k * n];
        for j in 0..n {
            let (p, c) = (j / NR, j % NR);
            let panel = &self.ints[p * k * NR..];
            for kk in 0..k {
                w[kk * n + j] = panel[self.dot.slot(c, kk)] as f32 * self.scales[(p * kb + kk / BLOCK) * NR + c];
            }
        }
        w
    }

    /// `c[m × n] = a[m × k] · Wᵀ`, `a` and `c` row-major; `c` is overwritten.
    pub fn gemm(&self, a: &[f32], m: usize, c: &mut [f32]) {
        self.gemm_into(a, m, c, false)
    }

    /// `c[m × n] += a[m × k] · Wᵀ` (`c` holds the bias or the residual stream).
    pub fn gemm_add(&self, a: &[f32], m: usize, c: &mut [f32]) {
        self.gemm_into(a, m, c, true)
    }

    fn gemm_into(&self, a: &[f32], m: usize, c: &mut [f32], add: bool) {
        let (k, n) = (self.k, self.n);
        assert!(a.len() >= m * k && c.len() >= m * n, "int8 gemm: short slices");
        if m == 0 || n == 0 {
            return;
        }
        match self.dot {
            Dot::Simd128 => self.run::<i16>(a, m, c, add),
            Dot::Relaxed => self.run::<u8>(a, m, c, add),
        }
    }

    /// [`PackedQ8::gemm_into`] with activations of type `T` (`T::DOT == self.dot`).
    fn run<T: Act>(&self, a: &[f32], m: usize, c: &mut [f32], add: bool) {
        let (k, n) = (self.k, self.n);
        let kb = k / BLOCK;
        let (qa, sa) = quantize_rows::<T>(&a[..m * k], m, k);
        // The SIMD128 kernel reads a panel's weights widened to i16, once per (K block, panel)
        // here rather than in every micro-kernel call over the panel.
        let widen = cfg!(target_arch = "wasm32") && T::DOT == Dot::Simd128;
        let mut wide = vec![0i16; if widen { KC.min(k) * NR } else { 0 }];
        let mut k0 = 0;
        while k0 < k {
            let kc = KC.min(k - k0);
            let (b0, nb) = (k0 / BLOCK, kc / BLOCK);
            for p in 0..n.div_ceil(NR) {
                let j0 = p * NR;
                let nc = NR.min(n - j0);
                let w = &self.ints[p * k * NR + k0 * NR..];
                let ws = &self.scales[(p * kb + b0) * NR..];
                let wc = if self.corr.is_empty() {
                    &[][..]
                } else {
                    &self.corr[(p * kb + b0) * NR..]
                };
                if widen {
                    for (d, s) in wide.iter_mut().zip(&w[..kc * NR]) {
                        *d = *s as i16;
                    }
                }
                let tile = Tile {
                    a: &qa[k0 * m..],
                    kc,
                    sa: &sa,
                    kb,
                    b0,
                    nb,
                    w,
                    ws,
                    wc,
                    ww: &wide,
                    n,
                    j0,
                    nc,
                    first: k0 == 0 && !add,
                };
                let mut i0 = 0;
                while i0 + MR <= m {
                    // SAFETY: rows i0..i0+MR < m, blocks b0..b0+nb ≤ kb, columns j0..j0+nc ≤ n.
                    unsafe { kernel::<MR, T>(&tile, i0, c) };
                    i0 += MR;
                }
                // SAFETY: as above with the m - i0 < MR remaining rows.
                unsafe {
                    match m - i0 {
                        0 => {}
                        1 => kernel::<1, T>(&tile, i0, c),
                        2 => kernel::<2, T>(&tile, i0, c),
                        _ => kernel::<3, T>(&tile, i0, c),
                    }
                }
            }
            k0 += kc;
        }
    }
}

/// Quantizes `w_t` (`[k, n]`, row-major: the transposed weight of a linear layer) to int8 blocks
/// along `k` as candle's Q8_0 does (scale `amax / 127` rounded to f16, values `round(x /
/// scale)`). Returns the values `[n, k]` and the scales `[n, k / BLOCK]`.
pub fn quantize_q8_0(w_t: &[f32], k: usize, n: usize) -> Result<(Vec<i8>, Vec<f32>)> {
    if w_t.len() != k * n {
        bail!("int8 GEMM: {} weights for [{k}, {n}]", w_t.len());
    }
    if k == 0 || !k.is_multiple_of(BLOCK) {
        bail!("int8 GEMM: {k} inputs is not a positive multiple of {BLOCK}");
    }
    let kb = k / BLOCK;
    let mut q = vec![0i8; n * k];
    let mut scales = vec![0f32; n * kb];
    let mut col = [0f32; BLOCK];
    for j in 0..n {
        for b in 0..kb {
            for (i, v) in col.iter_mut().enumerate() {
                *v = w_t[(b * BLOCK + i) * n + j];
            }
            let amax = col.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            scales[j * kb + b] = half::f16::from_f32(d).to_f32();
            for (i, v) in col.iter().enumerate() {
                q[j * k + b * BLOCK + i] = (v * id).round() as i8;
            }
        }
    }
    Ok((q, scales))
}

/// Quantizes the rows of `a` (`[m, k]`) per block of [`BLOCK`]: symmetric, `d = amax / qmax`
/// (`T::DOT`'s), values rounded to nearest (ties to even), stored as `T` (the relaxed kernel's
/// offset by 64). Returns the values and the scales (`[m, k / BLOCK]`).
///
/// The values are laid out K block after K block ([`KC`] inputs; the last may be shorter),
/// each `[m, kc]` row-major, so that the rows a micro-kernel reads are close together.
fn quantize_rows<T: Act>(a: &[f32], m: usize, k: usize) -> (Vec<T>, Vec<f32>) {
    let kb = k / BLOCK;
    let mut q: Vec<T> = vec![T::default(); m * k];
    let mut s = vec![0f32; m * kb];
    for i in 0..m {
        for b in 0..kb {
            let kk = b * BLOCK;
            let (k0, kc) = ((kk / KC) * KC, KC.min(k - (kk / KC) * KC));
            let dst = k0 * m + i * kc + (kk - k0);
            // SAFETY: both blocks hold BLOCK values.
            s[i * kb + b] = unsafe { quantize_block(&a[i * k + kk..i * k + kk + BLOCK], &mut q[dst..dst + BLOCK]) };
        }
    }
    (q, s)
}

/// One block of [`quantize_rows`], in SIMD128; returns its scale.
///
/// # Safety
/// `src` and `dst` hold [`BLOCK`] values.
#[cfg(target_arch = "wasm32")]
#[inline]
unsafe fn quantize_block<T: Act>(src: &[f32], dst: &mut [T]) -> f32 {
    use core::arch::wasm32::*;
    let p = src.as_ptr();
    let mut x = [f32x4_splat(0.0); BLOCK / 4];
    let mut mx = f32x4_splat(0.0);
    for (i, v) in x.iter_mut().enumerate() {
        *v = v128_load(p.add(4 * i) as *const v128);
        mx = f32x4_max(mx, f32x4_abs(*v));
    }
    let mx = f32x4_max(mx, i32x4_shuffle::<2, 3, 0, 1>(mx, mx));
    let mx = f32x4_max(mx, i32x4_shuffle::<1, 0, 3, 2>(mx, mx));
    let amax = f32x4_extract_lane::<0>(mx);
    if amax == 0.0 || !amax.is_finite() {
        // All zeros (or a non-finite input, which then gives a zero scale and zero values: the
        // f32 path would have given NaN; the encoders never produce one).
        dst.fill(T::of(0));
        return 0.0;
    }
    let qmax = T::DOT.qmax();
    let id = f32x4_splat(qmax / amax);
    let mut w = [i32x4_splat(0); BLOCK / 4];
    for (o, v) in w.iter_mut().zip(&x) {
        *o = i32x4_trunc_sat_f32x4(f32x4_nearest(f32x4_mul(*v, id)));
    }
    match T::DOT {
        Dot::Simd128 => {
            let out = dst.as_mut_ptr() as *mut i16;
            for i in 0..BLOCK / 8 {
                v128_store(out.add(8 * i) as *mut v128, i16x8_narrow_i32x4(w[2 * i], w[2 * i + 1]));
            }
        }
        Dot::Relaxed => {
            let out = dst.as_mut_ptr() as *mut u8;
            let off = i16x8_splat(ZERO as i16);
            for i in 0..BLOCK / 16 {
                let lo = i16x8_add(i16x8_narrow_i32x4(w[4 * i], w[4 * i + 1]), off);
                let hi = i16x8_add(i16x8_narrow_i32x4(w[4 * i + 2], w[4 * i + 3]), off);
                v128_store(out.add(16 * i) as *mut v128, u8x16_narrow_i16x8(lo, hi));
            }
        }
    }
    amax / qmax
}

/// [`quantize_block`] off wasm (the packing and the reference are tested natively too).
///
/// # Safety
/// None needed; `unsafe` to match the wasm version.
#[cfg(not(target_arch = "wasm32"))]
unsafe fn quantize_block<T: Act>(src: &[f32], dst: &mut [T]) -> f32 {
    let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 || !amax.is_finite() {
        dst.fill(T::of(0));
        return 0.0;
    }
    let qmax = T::DOT.qmax();
    let id = qmax / amax;
    for (o, v) in dst.iter_mut().zip(src) {
        *o = T::of((v * id).round_ties_even() as i32);
    }
    amax / qmax
}

/// What every micro-kernel call of one (K block, panel) shares.
struct Tile<'a, T> {
    /// Quantized activations of this K block, `[m, kc]`.
    a: &'a [T],
    /// `kc`, the row stride of `a`.
    kc: usize,
    /// Their scales, `[m, kb]`.
    sa: &'a [f32],
    /// Blocks per row of `sa`, and this K block's first block index.
    kb: usize,
    b0: usize,
    /// Blocks in this K block.
    nb: usize,
    /// The panel from input `k0` on, its scales and (relaxed) corrections from block `b0` on.
    #[cfg_attr(all(target_arch = "wasm32", not(feature = "relaxed-simd")), allow(dead_code))]
    w: &'a [i8],
    ws: &'a [f32],
    #[cfg_attr(all(target_arch = "wasm32", not(feature = "relaxed-simd")), allow(dead_code))]
    wc: &'a [i32],
    /// The SIMD128 wasm kernel's copy of `w` from input `k0` on, widened to i16 (same order;
    /// empty elsewhere).
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    ww: &'a [i16],
    /// Row stride of `C`, first column of the panel, and its real columns.
    n: usize,
    j0: usize,
    nc: usize,
    /// Overwrite `C` (first K block) instead of adding to it.
    first: bool,
}

/// `C[i0..i0+R, j0..j0+nc] (+)= A[i0..i0+R, k0..k0+kc] · panel`, with `T`'s dot product.
///
/// # Safety
/// `i0 + R ≤ m` and the tile's ranges lie inside its slices and `c` (`[m, n]`); for
/// [`Dot::Relaxed`], the engine runs relaxed SIMD.
#[cfg(target_arch = "wasm32")]
#[inline]
unsafe fn kernel<const R: usize, T: Act>(t: &Tile<'_, T>, i0: usize, c: &mut [f32]) {
    T::kernel::<R>(t, i0, c)
}

/// The SIMD128 micro-kernel ([`kernel`]).
///
/// # Safety
/// As [`kernel`].
#[cfg(target_arch = "wasm32")]
unsafe fn kernel_simd128<const R: usize>(t: &Tile<'_, i16>, i0: usize, c: &mut [f32]) {
    use core::arch::wasm32::*;
    let mut acc = [[f32x4_splat(0.0); 2]; R];
    let ap = t.a.as_ptr().add(i0 * t.kc);
    let sp = t.sa.as_ptr().add(i0 * t.kb + t.b0);
    for b in 0..t.nb {
        let mut iacc = [[i32x4_splat(0); 2]; R];
        let abp = ap.add(b * BLOCK);
        let wp = t.ww.as_ptr().add(b * BLOCK * NR);
        for s in 0..BLOCK / 2 {
            let w0 = v128_load(wp.add(16 * s) as *const v128);
            let w1 = v128_load(wp.add(16 * s + 8) as *const v128);
            for (r, iacc) in iacc.iter_mut().enumerate() {
                let x = v128_load32_splat(abp.add(r * t.kc + 2 * s) as *const u32);
                iacc[0] = i32x4_add(iacc[0], i32x4_dot_i16x8(x, w0));
                iacc[1] = i32x4_add(iacc[1], i32x4_dot_i16x8(x, w1));
            }
        }
        scale_add(&mut acc, &iacc, t, sp, b);
    }
    store_tile(&acc, c, t.n, i0, t.j0, t.nc, t.first);
}

/// The relaxed-SIMD micro-kernel ([`kernel`]).
///
/// # Safety
/// As [`kernel`]; the engine runs relaxed SIMD.
#[cfg(all(target_arch = "wasm32", feature = "relaxed-simd"))]
#[target_feature(enable = "relaxed-simd")]
unsafe fn kernel_relaxed<const R: usize>(t: &Tile<'_, u8>, i0: usize, c: &mut [f32]) {
    use core::arch::wasm32::*;
    let mut acc = [[f32x4_splat(0.0); 2]; R];
    let ap = t.a.as_ptr().add(i0 * t.kc);
    let sp = t.sa.as_ptr().add(i0 * t.kb + t.b0);
    for b in 0..t.nb {
        let c0 = v128_load(t.wc.as_ptr().add(b * NR) as *const v128);
        let c1 = v128_load(t.wc.as_ptr().add(b * NR + 4) as *const v128);
        let mut iacc = [[c0, c1]; R];
        let abp = ap.add(b * BLOCK);
        let wp = t.w.as_ptr().add(b * BLOCK * NR);
        for s in 0..BLOCK / 4 {
            let w0 = v128_load(wp.add(32 * s) as *const v128);
            let w1 = v128_load(wp.add(32 * s + 16) as *const v128);
            for (r, iacc) in iacc.iter_mut().enumerate() {
                let x = v128_load32_splat(abp.add(r * t.kc + 4 * s) as *const u32);
                iacc[0] = i32x4_relaxed_dot_i8x16_i7x16_add(w0, x, iacc[0]);
                iacc[1] = i32x4_relaxed_dot_i8x16_i7x16_add(w1, x, iacc[1]);
            }
        }
        scale_add(&mut acc, &iacc, t, sp, b);
    }
    store_tile(&acc, c, t.n, i0, t.j0, t.nc, t.first);
}

/// Adds block `b`'s i32 sums `iacc`, scaled by the weights' and the rows' scales (`sp`: the
/// first row's scale of the tile's first block), to the f32 accumulators.
///
/// # Safety
/// Block `b` of the tile, and its `R` rows' scales at `sp`, exist.
#[cfg(target_arch = "wasm32")]
#[inline(always)]
unsafe fn scale_add<const R: usize, T>(
    acc: &mut [[core::arch::wasm32::v128; 2]; R],
    iacc: &[[core::arch::wasm32::v128; 2]; R],
    t: &Tile<'_, T>,
    sp: *const f32,
    b: usize,
) {
    use core::arch::wasm32::*;
    let s0 = v128_load(t.ws.as_ptr().add(b * NR) as *const v128);
    let s1 = v128_load(t.ws.as_ptr().add(b * NR + 4) as *const v128);
    for (r, (acc, iacc)) in acc.iter_mut().zip(iacc).enumerate() {
        let sa = f32x4_splat(*sp.add(r * t.kb + b));
        acc[0] = f32x4_add(acc[0], f32x4_mul(f32x4_convert_i32x4(iacc[0]), f32x4_mul(s0, sa)));
        acc[1] = f32x4_add(acc[1], f32x4_mul(f32x4_convert_i32x4(iacc[1]), f32x4_mul(s1, sa)));
    }
}

/// Writes (`first`) or adds the `R × 8` accumulator tile `acc` (two `f32x4` per row) to
/// `C[i0.., j0..j0+nc]` (row stride `n`), for the micro-kernels of both wasm GEMMs.
///
/// # Safety
/// `i0 + R` rows of `n` columns lie in `c` and `j0 + nc ≤ n`, `nc ≤ 8`.
#[cfg(target_arch = "wasm32")]
#[inline(always)]
pub(super) unsafe fn store_tile<const R: usize>(
    acc: &[[core::arch::wasm32::v128; 2]; R],
    c: &mut [f32],
    n: usize,
    i0: usize,
    j0: usize,
    nc: usize,
    first: bool,
) {
    use core::arch::wasm32::*;
    for (r, acc) in acc.iter().enumerate() {
        let cp = c.as_mut_ptr().add((i0 + r) * n + j0);
        if nc == 8 {
            let (mut v0, mut v1) = (acc[0], acc[1]);
            if !first {
                v0 = f32x4_add(v0, v128_load(cp as *const v128));
                v1 = f32x4_add(v1, v128_load(cp.add(4) as *const v128));
            }
            v128_store(cp as *mut v128, v0);
            v128_store(cp.add(4) as *mut v128, v1);
        } else {
            let mut lanes = [0f32; 8];
            v128_store(lanes.as_mut_ptr() as *mut v128, acc[0]);
            v128_store(lanes.as_mut_ptr().add(4) as *mut v128, acc[1]);
            for (j, v) in lanes.iter().take(nc).enumerate() {
                let dst = cp.add(j);
                *dst = if first { *v } else { *dst + *v };
            }
        }
    }
}

/// The micro-kernel in scalar code off wasm (the same arithmetic, for native tests).
///
/// # Safety
/// As the wasm version.
#[cfg(not(target_arch = "wasm32"))]
unsafe fn kernel<const R: usize, T: Act>(t: &Tile<'_, T>, i0: usize, c: &mut [f32]) {
    for r in 0..R {
        for cc in 0..t.nc {
            let mut acc = 0f32;
            for b in 0..t.nb {
                let mut s: i32 = match T::DOT {
                    Dot::Relaxed => t.wc[b * NR + cc],
                    Dot::Simd128 => 0,
                };
                for i in 0..BLOCK {
                    let kk = b * BLOCK + i;
                    s += Into::<i32>::into(t.a[(i0 + r) * t.kc + kk]) * t.w[T::DOT.slot(cc, kk)] as i32;
                }
                acc += s as f32 * (t.ws[b * NR + cc] * t.sa[(i0 + r) * t.kb + t.b0 + b]);
            }
            let dst = &mut c[(i0 + r) * t.n + t.j0 + cc];
            *dst = if t.first { acc } else { *dst + acc };
        }
    }
}

/// The scalar reference of [`PackedQ8::gemm`] from unpacked weights (`q` `[n, k]`, `scales`
/// `[n, k / BLOCK]`): activations quantized the same way (as the dot product of [`dot`] takes
/// them), written out plainly. Returns `[m, n]`.
pub fn reference(a: &[f32], q: &[i8], scales: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    reference_with(a, q, scales, m, k, n, dot().qmax())
}

/// [`reference()`] with the activations quantized to ±`qmax` (127 for the SIMD128 and the native
/// VNNI kernels, 63 for the relaxed one).
pub fn reference_with(a: &[f32], q: &[i8], scales: &[f32], m: usize, k: usize, n: usize, qmax: f32) -> Vec<f32> {
    let kb = k / BLOCK;
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for b in 0..kb {
            let x = &a[i * k + b * BLOCK..i * k + (b + 1) * BLOCK];
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let (d, id) = if amax > 0.0 {
                (amax / qmax, qmax / amax)
            } else {
                (0.0, 0.0)
            };
            let xq: Vec<i32> = x.iter().map(|v| (v * id).round_ties_even() as i32).collect();
            for j in 0..n {
                let w = &q[j * k + b * BLOCK..j * k + (b + 1) * BLOCK];
                let s: i32 = xq.iter().zip(w).map(|(a, w)| a * *w as i32).sum();
                c[i * n + j] += s as f32 * (scales[j * kb + b] * d);
            }
        }
    }
    c
}

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Runs [`PackedQ8::gemm`] (with the dot product of [`dot`]) on pseudo-random activations and
/// int8 weights of `[m, k] × [k, n]` (`seed` picks them) against [`reference()`]; returns the
/// largest `|Δ| / (1 + |want|)`. The wasm test suite calls it (through the wasm API) to check
/// this build's SIMD kernels.
pub fn self_check(m: usize, k: usize, n: usize, seed: u64) -> Result<f32> {
    let mut seed = seed;
    let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed) * 3.0).collect();
    let q: Vec<i8> = (0..n * k).map(|_| (lcg(&mut seed) * 127.0).round() as i8).collect();
    let s: Vec<f32> = (0..n * (k / BLOCK))
        .map(|_| 0.01 + lcg(&mut seed).abs() * 0.02)
        .collect();
    let p = PackedQ8::new(&q, &s, n, k)?;
    let mut c = vec![f32::NAN; m * n];
    p.gemm(&a, m, &mut c);
    let want = reference_with(&a, &q, &s, m, k, n, p.dot().qmax());
    Ok(c.iter().zip(&want).fold(0f32, |e, (g, w)| {
        let d = (g - w).abs() / (1.0 + w.abs());
        if d.is_nan() || d > e {
            d
        } else {
            e
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dot products this build has.
    fn dots() -> Vec<Dot> {
        if cfg!(feature = "relaxed-simd") {
            vec![Dot::Simd128, Dot::Relaxed]
        } else {
            vec![Dot::Simd128]
        }
    }

    #[test]
    fn matches_the_reference_on_odd_shapes() {
        for d in dots() {
            let mut seed = 7;
            for (m, k, n) in [(1, 32, 1), (5, 64, 9), (7, 800, 13), (197, 96, 24), (3, 1600, 17)] {
                let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
                let q: Vec<i8> = (0..n * k).map(|_| (lcg(&mut seed) * 127.0).round() as i8).collect();
                let s: Vec<f32> = (0..n * k / BLOCK).map(|_| 0.01 + lcg(&mut seed).abs() * 0.02).collect();
                let p = PackedQ8::with_dot(d, &q, &s, n, k).unwrap();
                assert_eq!(p.dot(), d);
                let mut c = vec![f32::NAN; m * n];
                p.gemm(&a, m, &mut c);
                let want = reference_with(&a, &q, &s, m, k, n, d.qmax());
                for (g, w) in c.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{d:?} [{m},{k},{n}]: {g} vs {w}"
                    );
                }
                let back = p.dequantize_t();
                assert_eq!(back[n + n - 1], q[(n - 1) * k + 1] as f32 * s[(n - 1) * (k / BLOCK)]);
            }
        }
    }

    #[test]
    fn gemm_add_adds_to_what_c_holds() {
        let mut seed = 11;
        let (m, k, n) = (6, 1600, 11); // three K blocks, a short panel
        let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
        let q: Vec<i8> = (0..n * k).map(|_| (lcg(&mut seed) * 127.0).round() as i8).collect();
        let s: Vec<f32> = (0..n * k / BLOCK).map(|_| 0.01 + lcg(&mut seed).abs() * 0.02).collect();
        for d in dots() {
            let p = PackedQ8::with_dot(d, &q, &s, n, k).unwrap();
            let init: Vec<f32> = (0..m * n).map(|i| i as f32 - 20.0).collect();
            let mut c = init.clone();
            p.gemm_add(&a, m, &mut c);
            let want = reference_with(&a, &q, &s, m, k, n, d.qmax());
            for ((g, w), i) in c.iter().zip(&want).zip(&init) {
                assert!(
                    (g - (w + i)).abs() <= 1e-4 * (1.0 + w.abs() + i.abs()),
                    "{d:?}: {g} vs {w} + {i}"
                );
            }
        }
    }

    #[test]
    fn self_check_passes_and_refuses_bad_widths() {
        assert!(self_check(7, 800, 13, 1).unwrap() < 1e-5);
        assert!(self_check(5, 30, 3, 1).is_err());
    }

    #[test]
    fn requantizing_dequantized_weights_is_exact() {
        let mut seed = 3;
        let (k, n) = (64, 5);
        let w_t: Vec<f32> = (0..k * n).map(|_| lcg(&mut seed)).collect();
        let p = PackedQ8::quantize(&w_t, k, n).unwrap();
        let back = p.dequantize_t();
        let again = PackedQ8::quantize(&back, k, n).unwrap();
        // (No test in this binary changes the process's dot product, so both are packed alike.)
        assert_eq!(p.dot(), again.dot());
        assert_eq!(p.ints, again.ints);
        assert_eq!(p.scales, again.scales);
        assert!(PackedQ8::quantize(&w_t[..k * n - 1], k, n).is_err());
        assert!(PackedQ8::new(&[0; 30], &[1.0], 1, 30).is_err());
    }
}
