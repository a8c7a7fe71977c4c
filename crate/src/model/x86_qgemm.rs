//! The native int8 GEMM on x86-64 CPUs with AVX-512 VNNI or AVX2: `C += A · Wᵀ` for a
//! [`Linear`](super::weights::Linear) layer in int8 (`W` the `[N, K]` weight in Q8_0 blocks, one
//! scale per [`Q8_BLOCK`](super::checkpoint::Q8_BLOCK) inputs of each output, as a q8 checkpoint stores it; `A` the `[M, K]` f32
//! activations, quantized here per row and block at run time), i32 products per block, scaled
//! into f32 accumulators. The same arithmetic as the wasm SIMD128 kernel
//! ([`super::wasm_qgemm`], whose scalar [`reference`](super::wasm_qgemm::reference) the tests
//! compare against).
//!
//! Why our own kernel: candle 0.11's Q8_0 matmul has a repacked VNNI kernel too, but it
//! quantizes the activations per 256-value block (`BlockQ8K`) and runs on candle's own thread
//! pool, which the CLI turns off (`model::ops::init_cpu_threads`, native builds only). This
//! one quantizes them per 32-value block, as the wasm kernels and their scalar reference do
//! (one arithmetic in every build, finer activation scales), and splits its panels over
//! rayon's pool. ViT-B/16 encode on the 2-core Xeon, interleaved, against candle's kernel with
//! its rows split over the threads (`ANOSCOPE_INT8_KERNEL=candle`): 0.67–0.77× its time at 1
//! thread, 0.71–0.78× at 2 (docs/speed.md). `vpdpbusd` does 64 multiply-adds per instruction: the weights are packed
//! once, at load, into panels of [`NR`] = 16 outputs × 4 inputs per 64 bytes (one i32 lane per
//! output, no horizontal sums), and [`MR`] rows run over a panel with their sums in registers.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes: the activations are quantized symmetric to
//! ±127 (`d = amax / 127`, rounded to nearest even) and stored plus 128; each block's i32 sums
//! start at `-128 · Σ w` (precomputed per output and block), which cancels the offset exactly.
//!
//! Threads: the panels (column blocks of `C`) are split over rayon's pool; every thread reads
//! the same quantized activations and only its own weights.
//!
//! **AVX2** (CPUs without AVX-512 VNNI, such as AMD Zen 1–3): no byte dot product that adds
//! into i32 without saturating (`vpmaddubsw`'s i16 pair sums overflow for ±127 × 255), so the
//! weights are widened to i16 at load and `vpmaddwd` multiplies pairs of i16 activations
//! (signed, ±127, no offset) by pairs of i16 weights into i32 lanes, `vpaddd` accumulating: 16
//! multiply-adds per `vpmaddwd`, twice an f32 FMA's 8. Panels of [`NR`] = 16 outputs × 2
//! inputs per 64 bytes (two `ymm`, 32-byte aligned so that the loads are never split), [`MR2`]
//! rows per pass. The same per-block scaling, so the same results as the VNNI kernel and the
//! reference up to f32 rounding. On the 2-core AMD EPYC (Zen 3), a 197×768 by 768×3072 GEMM
//! at one thread: 1.2–1.9× the `gemm` crate's f32 speed, interleaved (docs/speed.md).
use super::wasm_qgemm::{pack_panels, quantize_q8_0};
use anyhow::{bail, Result};

/// Outputs (columns of `C`) per packed panel: one `zmm` of i32 lanes (two `ymm` with AVX2).
pub const NR: usize = 16;
/// Rows of `A` per micro-kernel call (VNNI).
pub const MR: usize = 6;
/// Rows of `A` per micro-kernel call (AVX2: 8 i32 and 8 f32 accumulators of 16 registers).
pub const MR2: usize = 4;

/// Which int8 micro-kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 F, BW and VNNI: `vpdpbusd`, unsigned × signed bytes.
    Vnni,
    /// AVX2 and FMA: `vpmaddwd` on i16-widened weights.
    Avx2,
}

impl Kernel {
    /// Whether this CPU has the kernel's instructions (checked at run time).
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Kernel::Vnni => {
                    std::arch::is_x86_feature_detected!("avx512f")
                        && std::arch::is_x86_feature_detected!("avx512bw")
                        && std::arch::is_x86_feature_detected!("avx512vnni")
                }
                Kernel::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }

    /// Its name, as `anoscope bench` reports it.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Vnni => "avx512-vnni",
            Kernel::Avx2 => "avx2",
        }
    }
}

/// The kernel this process runs: VNNI where the CPU has it, else AVX2, else none (candle's
/// `QMatMul` runs instead). `ANOSCOPE_INT8_KERNEL` (read once, for comparisons) can ask for
/// `avx2` on a VNNI CPU, or `candle` for candle's kernel on any; another value is ignored.
pub fn kernel() -> Option<Kernel> {
    static USE: std::sync::OnceLock<Option<Kernel>> = std::sync::OnceLock::new();
    *USE.get_or_init(|| {
        let ask = std::env::var("ANOSCOPE_INT8_KERNEL").unwrap_or_default();
        match ask.as_str() {
            "candle" => None,
            "avx2" => Some(Kernel::Avx2).filter(|k| k.supported()),
            _ => [Kernel::Vnni, Kernel::Avx2].into_iter().find(|k| k.supported()),
        }
    })
}

/// Whether this process runs [`X86Q8`] ([`kernel`] is not `None`).
pub fn available() -> bool {
    kernel().is_some()
}

/// 16 i16 weights, aligned so that the AVX2 kernel's 32-byte loads never cross a line.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Wide([i16; 16]);

/// Packed weights, in the layout of their kernel.
#[derive(Clone)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Ints {
    /// Per panel, per group of 4 inputs, 64 bytes: output `c`'s four at `4c`. With, per panel
    /// and block, `-128 · Σ w` of each output (cancels the activations' offset).
    Vnni { ints: Vec<i8>, corr: Vec<i32> },
    /// Per panel, per pair of inputs, 32 i16: output `c`'s two at `2c`.
    Avx2(Vec<Wide>),
}

/// The int8 weights of one linear layer, packed for [`X86Q8::gemm_add`].
#[derive(Clone)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub struct X86Q8 {
    /// Inputs (a multiple of [`Q8_BLOCK`](super::checkpoint::Q8_BLOCK)).
    k: usize,
    /// Outputs.
    n: usize,
    /// Panel after panel (`ceil(n / NR)`, zero-padded outputs), each `k · NR` weights.
    ints: Ints,
    /// Per panel, per block of `K`: the [`NR`] weight scales.
    scales: Vec<f32>,
}

impl std::fmt::Debug for X86Q8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "X86Q8 {{ k: {}, n: {}, kernel: {:?} }}",
            self.k,
            self.n,
            self.kernel()
        )
    }
}

impl X86Q8 {
    /// Packs int8 weights `q` (`[n, k]`, row-major) with their block scales (`[n, k / BLOCK]`)
    /// for this process's [`kernel`]; an error where there is none.
    pub fn new(q: &[i8], scales: &[f32], n: usize, k: usize) -> Result<Self> {
        match kernel() {
            Some(kernel) => Self::with_kernel(kernel, q, scales, n, k),
            None => bail!("int8 gemm: this CPU has neither AVX-512 VNNI nor AVX2"),
        }
    }

    /// [`X86Q8::new`] for the given kernel (which [`X86Q8::gemm_add`] then needs the CPU to
    /// have).
    pub fn with_kernel(kernel: Kernel, q: &[i8], scales: &[f32], n: usize, k: usize) -> Result<Self> {
        Ok(match kernel {
            Kernel::Vnni => {
                let p = pack_panels(q, scales, n, k, NR, |c, kk| (kk / 4) * 4 * NR + c * 4 + kk % 4)?;
                Self {
                    k,
                    n,
                    ints: Ints::Vnni {
                        ints: p.ints,
                        corr: p.sums.iter().map(|s| -128 * s).collect(),
                    },
                    scales: p.scales,
                }
            }
            Kernel::Avx2 => {
                let p = pack_panels(q, scales, n, k, NR, |c, kk| (kk / 2) * 2 * NR + c * 2 + kk % 2)?;
                let wide = p
                    .ints
                    .chunks_exact(16)
                    .map(|c| Wide(std::array::from_fn(|i| c[i] as i16)))
                    .collect();
                Self {
                    k,
                    n,
                    ints: Ints::Avx2(wide),
                    scales: p.scales,
                }
            }
        })
    }

    /// Quantizes `w_t` (`[k, n]`: the transposed weight of a linear layer) to Q8_0 blocks along
    /// `k` ([`quantize_q8_0`]), then packs them for this process's [`kernel`].
    pub fn quantize(w_t: &[f32], k: usize, n: usize) -> Result<Self> {
        let (q, scales) = quantize_q8_0(w_t, k, n)?;
        Self::new(&q, &scales, n, k)
    }

    /// The kernel the weights are packed for.
    pub fn kernel(&self) -> Kernel {
        match self.ints {
            Ints::Vnni { .. } => Kernel::Vnni,
            Ints::Avx2(_) => Kernel::Avx2,
        }
    }

    /// Inputs of the layer.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Outputs of the layer.
    pub fn n(&self) -> usize {
        self.n
    }

    /// `c[m × n] += a[m × k] · Wᵀ`, `a` and `c` row-major. Panics when the CPU lacks the
    /// instructions of the weights' [`X86Q8::kernel`].
    pub fn gemm_add(&self, a: &[f32], m: usize, c: &mut [f32]) {
        let (k, n) = (self.k, self.n);
        assert!(a.len() >= m * k && c.len() >= m * n, "int8 gemm: short slices");
        let kernel = self.kernel();
        assert!(kernel.supported(), "int8 gemm: this CPU lacks {}", kernel.name());
        #[cfg(target_arch = "x86_64")]
        if m > 0 && n > 0 {
            match &self.ints {
                Ints::Vnni { ints, corr } => vnni::gemm_add(self, ints, corr, a, m, c),
                Ints::Avx2(wide) => avx2::gemm_add(self, wide, a, m, c),
            }
        }
    }
}

/// `C`'s base pointer, shared by the threads, each writing only its own columns.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: the threads write disjoint column ranges of `C` (their own panels).
#[cfg(target_arch = "x86_64")]
unsafe impl Send for Out {}
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for Out {}
#[cfg(target_arch = "x86_64")]
impl Out {
    /// The pointer (a method, so that closures capture the whole `Out`, which is `Send`).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Runs `tile(p, i0, rows, c)` for every panel `p` of `n` outputs and every group of up to `mr`
/// of the `m` rows (from row `i0`), the panels split in contiguous runs over rayon's pool (`c`:
/// `C`'s base pointer, of which `tile` writes only panel `p`'s columns of those rows).
#[cfg(target_arch = "x86_64")]
fn over_tiles(n: usize, m: usize, mr: usize, c: &mut [f32], tile: impl Fn(usize, usize, usize, *mut f32) + Sync) {
    use rayon::prelude::*;
    let panels = n.div_ceil(NR);
    let threads = rayon::current_num_threads().max(1);
    let chunk = panels.div_ceil(threads).max(1);
    let out = Out(c.as_mut_ptr());
    (0..panels.div_ceil(chunk)).into_par_iter().for_each(|t| {
        for p in t * chunk..((t + 1) * chunk).min(panels) {
            let mut i0 = 0;
            while i0 < m {
                let rows = mr.min(m - i0);
                tile(p, i0, rows, out.ptr());
                i0 += rows;
            }
        }
    });
}

/// Quantizes the rows of `a` (`[m, k]`) per block in parallel: `quantize_row(row, q, s)` fills
/// a row's `k` values and `k / BLOCK` scales.
#[cfg(target_arch = "x86_64")]
fn quantize_rows<T: Copy + Default + Send>(
    a: &[f32],
    m: usize,
    k: usize,
    quantize_row: impl Fn(&[f32], &mut [T], &mut [f32]) + Sync,
) -> (Vec<T>, Vec<f32>) {
    use crate::model::checkpoint::Q8_BLOCK as BLOCK;
    use rayon::prelude::*;
    let kb = k / BLOCK;
    let mut qa = vec![T::default(); m * k];
    let mut sa = vec![0f32; m * kb];
    qa.par_chunks_mut(k)
        .zip(sa.par_chunks_mut(kb))
        .zip(a[..m * k].par_chunks(k))
        .with_min_len(8)
        .for_each(|((q, s), row)| quantize_row(row, q, s));
    (qa, sa)
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{MR, NR, X86Q8};
    use crate::model::checkpoint::Q8_BLOCK as BLOCK;
    use core::arch::x86_64::*;

    /// The VNNI GEMM (`ints`, `corr`: the weights' [`super::Ints::Vnni`] parts).
    pub(super) fn gemm_add(w: &X86Q8, ints: &[i8], corr: &[i32], a: &[f32], m: usize, c: &mut [f32]) {
        // SAFETY (both unsafe calls): the caller checked that the CPU runs the VNNI kernel.
        let (qa, sa) = super::quantize_rows(a, m, w.k, |row, q: &mut [u8], s| unsafe { quantize_row(row, q, s) });
        super::over_tiles(w.n, m, MR, c, |p, i0, rows, c| {
            let k = Kern {
                w,
                ints,
                corr,
                qa: &qa,
                sa: &sa,
                p,
                i0,
                c,
            };
            // SAFETY: rows i0..i0+rows ≤ m, panel p < the panels; the CPU checked; this thread
            // alone writes panel p's columns of `C`.
            unsafe {
                match rows {
                    6 => kernel::<6>(k),
                    5 => kernel::<5>(k),
                    4 => kernel::<4>(k),
                    3 => kernel::<3>(k),
                    2 => kernel::<2>(k),
                    _ => kernel::<1>(k),
                }
            }
        });
        const _: () = assert!(MR == 6);
    }

    /// One micro-kernel call's operands.
    #[derive(Clone, Copy)]
    struct Kern<'a> {
        w: &'a X86Q8,
        ints: &'a [i8],
        corr: &'a [i32],
        /// The quantized activations, `[m, k]`, and their scales, `[m, k / BLOCK]`.
        qa: &'a [u8],
        sa: &'a [f32],
        /// Panel, first row, `C`'s base.
        p: usize,
        i0: usize,
        c: *mut f32,
    }

    /// One row quantized per block: symmetric ±127 (`d = amax / 127`, nearest even), stored
    /// plus 128; a block of zeros (or with a non-finite value) gets scale 0 and values 128.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn quantize_row(row: &[f32], q: &mut [u8], s: &mut [f32]) {
        const _: () = assert!(BLOCK == 32);
        let off = _mm512_set1_epi32(128);
        for ((x, q), s) in row.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)).zip(s.iter_mut()) {
            let x0 = _mm512_loadu_ps(x.as_ptr());
            let x1 = _mm512_loadu_ps(x.as_ptr().add(16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
            if amax == 0.0 || !amax.is_finite() || x.iter().any(|v| v.is_nan()) {
                q.fill(128);
                *s = 0.0;
                continue;
            }
            let id = _mm512_set1_ps(127.0 / amax);
            // Rounds to nearest even (the default MXCSR mode), then 1..=255 narrowed to bytes.
            let q0 = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(x0, id)), off);
            let q1 = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(x1, id)), off);
            _mm_storeu_si128(q.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128(q.as_mut_ptr().add(16) as *mut __m128i, _mm512_cvtepi32_epi8(q1));
            *s = amax / 127.0;
        }
    }

    /// `C[i0..i0+R, panel p's columns] += A[i0..i0+R, :] · panel`.
    ///
    /// # Safety
    /// `i0 + R ≤ m` rows of `qa` (`[m, k]`), `sa` (`[m, k / BLOCK]`) and `c` (`[m, n]`); `p` a
    /// panel of `w`; the CPU has AVX-512 F/BW/VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn kernel<const R: usize>(op: Kern) {
        let Kern {
            w,
            ints,
            corr,
            qa,
            sa,
            p,
            i0,
            c,
        } = op;
        let (k, n, kb) = (w.k, w.n, w.k / BLOCK);
        let panel = ints.as_ptr().add(p * k * NR);
        let ws = w.scales.as_ptr().add(p * kb * NR);
        let wc = corr.as_ptr().add(p * kb * NR);
        let ap = qa.as_ptr().add(i0 * k);
        let sp = sa.as_ptr().add(i0 * kb);
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..kb {
            let corr = _mm512_loadu_si512(wc.add(b * NR) as *const __m512i);
            let mut iacc = [corr; R];
            let wp = panel.add(b * BLOCK * NR);
            for g in 0..BLOCK / 4 {
                let wv = _mm512_loadu_si512(wp.add(g * 4 * NR) as *const __m512i);
                for (r, iacc) in iacc.iter_mut().enumerate() {
                    let x = _mm512_set1_epi32((ap.add(r * k + b * BLOCK + 4 * g) as *const i32).read_unaligned());
                    *iacc = _mm512_dpbusd_epi32(*iacc, x, wv);
                }
            }
            let s = _mm512_loadu_ps(ws.add(b * NR));
            for (r, (acc, iacc)) in acc.iter_mut().zip(&iacc).enumerate() {
                let scale = _mm512_mul_ps(s, _mm512_set1_ps(*sp.add(r * kb + b)));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*iacc), scale, *acc);
            }
        }
        let j0 = p * NR;
        let nc = NR.min(n - j0);
        let mask: __mmask16 = if nc == NR { 0xffff } else { (1u16 << nc) - 1 };
        for (r, acc) in acc.iter().enumerate() {
            let cp = c.add((i0 + r) * n + j0);
            let old = _mm512_maskz_loadu_ps(mask, cp);
            _mm512_mask_storeu_ps(cp, mask, _mm512_add_ps(old, *acc));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Wide, MR2, NR, X86Q8};
    use crate::model::checkpoint::Q8_BLOCK as BLOCK;
    use core::arch::x86_64::*;

    /// The AVX2 GEMM (`wide`: the weights' [`super::Ints::Avx2`] panels).
    pub(super) fn gemm_add(w: &X86Q8, wide: &[Wide], a: &[f32], m: usize, c: &mut [f32]) {
        // SAFETY (both unsafe calls): the caller checked that the CPU has AVX2 and FMA.
        let (qa, sa) = super::quantize_rows(a, m, w.k, |row, q: &mut [i16], s| unsafe { quantize_row(row, q, s) });
        super::over_tiles(w.n, m, MR2, c, |p, i0, rows, c| {
            let k = Kern {
                w,
                wide,
                qa: &qa,
                sa: &sa,
                p,
                i0,
                c,
            };
            // SAFETY: rows i0..i0+rows ≤ m, panel p < the panels; the CPU checked; this thread
            // alone writes panel p's columns of `C`.
            unsafe {
                match rows {
                    4 => kernel::<4>(k),
                    3 => kernel::<3>(k),
                    2 => kernel::<2>(k),
                    _ => kernel::<1>(k),
                }
            }
        });
        const _: () = assert!(MR2 == 4);
    }

    /// One micro-kernel call's operands.
    #[derive(Clone, Copy)]
    struct Kern<'a> {
        w: &'a X86Q8,
        wide: &'a [Wide],
        /// The quantized activations, `[m, k]`, and their scales, `[m, k / BLOCK]`.
        qa: &'a [i16],
        sa: &'a [f32],
        /// Panel, first row, `C`'s base.
        p: usize,
        i0: usize,
        c: *mut f32,
    }

    /// One row quantized per block: symmetric ±127 (`d = amax / 127`, nearest even), as i16; a
    /// block of zeros (or with a non-finite value) gets scale 0 and values 0.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn quantize_row(row: &[f32], q: &mut [i16], s: &mut [f32]) {
        const _: () = assert!(BLOCK == 32);
        let sign = _mm256_set1_ps(-0.0);
        for ((x, q), s) in row.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)).zip(s.iter_mut()) {
            let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(x.as_ptr().add(8 * i)));
            let m = _mm256_max_ps(
                _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
            );
            let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps::<1>(m2, m2)));
            if amax == 0.0 || !amax.is_finite() || x.iter().any(|v| v.is_nan()) {
                q.fill(0);
                *s = 0.0;
                continue;
            }
            let id = _mm256_set1_ps(127.0 / amax);
            // Rounds to nearest even (the default MXCSR mode); -127..=127 packed to i16, the
            // packs' lane interleave undone by the permute.
            let i: [__m256i; 4] = std::array::from_fn(|j| _mm256_cvtps_epi32(_mm256_mul_ps(v[j], id)));
            let lo = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(i[0], i[1]));
            let hi = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(i[2], i[3]));
            _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, lo);
            _mm256_storeu_si256(q.as_mut_ptr().add(16) as *mut __m256i, hi);
            *s = amax / 127.0;
        }
    }

    /// `C[i0..i0+R, panel p's columns] += A[i0..i0+R, :] · panel`.
    ///
    /// # Safety
    /// `i0 + R ≤ m` rows of `qa` (`[m, k]`), `sa` (`[m, k / BLOCK]`) and `c` (`[m, n]`); `p` a
    /// panel of `w`; the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel<const R: usize>(op: Kern) {
        let Kern {
            w,
            wide,
            qa,
            sa,
            p,
            i0,
            c,
        } = op;
        let (k, n, kb) = (w.k, w.n, w.k / BLOCK);
        // 32-byte aligned: a panel is k · NR i16 (k a multiple of 32), a block 32 · NR, a pair 2 · NR.
        let panel = (wide.as_ptr() as *const i16).add(p * k * NR);
        let ws = w.scales.as_ptr().add(p * kb * NR);
        let ap = qa.as_ptr().add(i0 * k);
        let sp = sa.as_ptr().add(i0 * kb);
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for b in 0..kb {
            let mut iacc = [[_mm256_setzero_si256(); 2]; R];
            let wp = panel.add(b * BLOCK * NR);
            for g in 0..BLOCK / 2 {
                let w0 = _mm256_load_si256(wp.add(g * 2 * NR) as *const __m256i);
                let w1 = _mm256_load_si256(wp.add(g * 2 * NR + 8 * 2) as *const __m256i);
                for (r, iacc) in iacc.iter_mut().enumerate() {
                    let x = _mm256_set1_epi32((ap.add(r * k + b * BLOCK + 2 * g) as *const i32).read_unaligned());
                    iacc[0] = _mm256_add_epi32(iacc[0], _mm256_madd_epi16(x, w0));
                    iacc[1] = _mm256_add_epi32(iacc[1], _mm256_madd_epi16(x, w1));
                }
            }
            let s0 = _mm256_loadu_ps(ws.add(b * NR));
            let s1 = _mm256_loadu_ps(ws.add(b * NR + 8));
            for (r, (acc, iacc)) in acc.iter_mut().zip(&iacc).enumerate() {
                let d = _mm256_set1_ps(*sp.add(r * kb + b));
                acc[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[0]), _mm256_mul_ps(s0, d), acc[0]);
                acc[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[1]), _mm256_mul_ps(s1, d), acc[1]);
            }
        }
        let j0 = p * NR;
        let nc = NR.min(n - j0);
        for (r, acc) in acc.iter().enumerate() {
            let cp = c.add((i0 + r) * n + j0);
            if nc == NR {
                _mm256_storeu_ps(cp, _mm256_add_ps(_mm256_loadu_ps(cp), acc[0]));
                _mm256_storeu_ps(cp.add(8), _mm256_add_ps(_mm256_loadu_ps(cp.add(8)), acc[1]));
            } else {
                let mut v = [0f32; NR];
                _mm256_storeu_ps(v.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(v.as_mut_ptr().add(8), acc[1]);
                for (j, v) in v.iter().enumerate().take(nc) {
                    *cp.add(j) += v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::checkpoint::Q8_BLOCK as BLOCK;
    use crate::model::wasm_qgemm::reference_with;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// The kernels this CPU runs (none on other CPUs: the test then checks nothing).
    fn kernels() -> Vec<Kernel> {
        let k: Vec<Kernel> = [Kernel::Vnni, Kernel::Avx2]
            .into_iter()
            .filter(|k| k.supported())
            .collect();
        if k.is_empty() {
            eprintln!("skipped: this CPU has neither AVX-512 VNNI nor AVX2");
        }
        k
    }

    #[test]
    fn matches_the_reference_on_odd_shapes() {
        for kernel in kernels() {
            let mut seed = 5;
            for (m, k, n) in [
                (1, 32, 1),
                (5, 64, 9),
                (7, 800, 13),
                (197, 96, 40),
                (13, 1600, 17),
                (6, 3072, 16),
            ] {
                let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed) * 3.0).collect();
                // The full int8 range, -128 included (a checkpoint may hold it).
                let q: Vec<i8> = (0..n * k).map(|_| (lcg(&mut seed) * 128.0).floor() as i8).collect();
                let s: Vec<f32> = (0..n * k / BLOCK).map(|_| 0.01 + lcg(&mut seed).abs() * 0.02).collect();
                let p = X86Q8::with_kernel(kernel, &q, &s, n, k).unwrap();
                assert_eq!(p.kernel(), kernel);
                let init: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32 - 3.0).collect();
                let mut c = init.clone();
                p.gemm_add(&a, m, &mut c);
                let want = reference_with(&a, &q, &s, m, k, n, 127.0);
                for ((g, w), i) in c.iter().zip(&want).zip(&init) {
                    assert!(
                        (g - (w + i)).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{kernel:?} [{m},{k},{n}]: {g} vs {w} + {i}"
                    );
                }
            }
            // A block of zeros and one with a non-finite value give that block's products 0.
            let (m, k, n) = (2, 64, 3);
            let mut a = vec![0.5f32; m * k];
            a[..32].fill(0.0);
            a[k + 3] = f32::INFINITY;
            let q = vec![1i8; n * k];
            let s = vec![1.0f32; n * 2];
            let mut c = vec![0f32; m * n];
            X86Q8::with_kernel(kernel, &q, &s, n, k)
                .unwrap()
                .gemm_add(&a, m, &mut c);
            assert_eq!(c, vec![16.0, 16.0, 16.0, 16.0, 16.0, 16.0], "{kernel:?}");
            let mut a = vec![0.5f32; m * k];
            a[5] = f32::NAN;
            let mut c = vec![0f32; m * n];
            X86Q8::with_kernel(kernel, &q, &s, n, k)
                .unwrap()
                .gemm_add(&a, m, &mut c);
            assert_eq!(c, vec![16.0, 16.0, 16.0, 32.0, 32.0, 32.0], "{kernel:?}");
        }
    }

    #[test]
    fn the_process_kernel_is_the_best_this_cpu_has() {
        if std::env::var_os("ANOSCOPE_INT8_KERNEL").is_some() {
            eprintln!("skipped: ANOSCOPE_INT8_KERNEL is set");
            return;
        }
        let best = [Kernel::Vnni, Kernel::Avx2].into_iter().find(|k| k.supported());
        assert_eq!(kernel(), best);
        assert_eq!(available(), best.is_some());
        if let Some(best) = best {
            assert_eq!(X86Q8::quantize(&[0.5; 64], 32, 2).unwrap().kernel(), best);
        }
    }

    #[test]
    fn refuses_bad_widths() {
        for kernel in [Kernel::Vnni, Kernel::Avx2] {
            assert!(X86Q8::with_kernel(kernel, &[0; 30], &[1.0], 1, 30).is_err());
            assert!(X86Q8::with_kernel(kernel, &[0; 64], &[1.0], 1, 64).is_err());
        }
        assert!(X86Q8::quantize(&[0.0; 64], 32, 3).is_err());
    }
}
