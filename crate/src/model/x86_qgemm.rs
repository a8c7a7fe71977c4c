//! The native int8 GEMM on CPUs with AVX-512 VNNI: `C += A · Wᵀ` for a
//! [`Linear`](super::weights::Linear) layer in int8 (`W` the `[N, K]` weight in Q8_0 blocks, one
//! scale per [`Q8_BLOCK`](super::checkpoint::Q8_BLOCK) inputs of each output, as a q8 checkpoint stores it; `A` the `[M, K]` f32
//! activations, quantized here per row and block at run time), i32 products per block, scaled
//! into f32 accumulators. The same arithmetic as the wasm SIMD128 kernel
//! ([`super::wasm_qgemm`], whose scalar [`reference`](super::wasm_qgemm::reference) the tests
//! compare against).
//!
//! Why our own kernel: candle 0.11's Q8_0 matmul has a repacked VNNI kernel too, but it
//! quantizes the activations per 256-value block (`BlockQ8K`) and runs on candle's own thread
//! pool, which the CLI turns off ([`super::ops::init_cpu_threads`]). This one quantizes them
//! per 32-value block, as the wasm kernels and their scalar reference do (one arithmetic in
//! every build, finer activation scales), and splits its panels over rayon's pool. ViT-B/16
//! encode on the 2-core Xeon, interleaved, against candle's kernel with its rows split over the
//! threads (`ANOSCOPE_INT8_KERNEL=candle`): 0.67–0.77× its time at 1 thread, 0.71–0.78× at 2
//! (docs/speed.md). `vpdpbusd` does 64 multiply-adds per instruction: the weights are packed
//! once, at load, into panels of [`NR`] = 16 outputs × 4 inputs per 64 bytes (one i32 lane per
//! output, no horizontal sums), and [`MR`] rows run over a panel with their sums in registers.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes: the activations are quantized symmetric to
//! ±127 (`d = amax / 127`, rounded to nearest even) and stored plus 128; each block's i32 sums
//! start at `-128 · Σ w` (precomputed per output and block), which cancels the offset exactly.
//!
//! Threads: the panels (column blocks of `C`) are split over rayon's pool; every thread reads
//! the same quantized activations and only its own weights.
use super::wasm_qgemm::{pack_panels, quantize_q8_0};
use anyhow::Result;

/// Outputs (columns of `C`) per packed panel: one `zmm` of i32 lanes.
pub const NR: usize = 16;
/// Rows of `A` per micro-kernel call.
pub const MR: usize = 6;

/// Whether this CPU runs [`VnniQ8`] (AVX-512 F, BW and VNNI, checked at run time), and the
/// environment does not ask for candle's kernel instead (`ANOSCOPE_INT8_KERNEL=candle`, read
/// once: for comparing the two).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static USE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *USE.get_or_init(|| {
            std::env::var_os("ANOSCOPE_INT8_KERNEL").is_none_or(|v| v != "candle")
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The int8 weights of one linear layer, packed for [`VnniQ8::gemm_add`].
#[derive(Clone)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub struct VnniQ8 {
    /// Inputs (a multiple of [`Q8_BLOCK`](super::checkpoint::Q8_BLOCK)).
    k: usize,
    /// Outputs.
    n: usize,
    /// Panel after panel (`ceil(n / NR)`, zero-padded outputs), each `k · NR` bytes: per group
    /// of 4 inputs, 64 bytes, output `c`'s four at `4c`.
    ints: Vec<i8>,
    /// Per panel, per block of `K`: the [`NR`] weight scales.
    scales: Vec<f32>,
    /// Per panel, per block: `-128 · Σ w` of each output (cancels the activations' offset).
    corr: Vec<i32>,
}

impl std::fmt::Debug for VnniQ8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VnniQ8 {{ k: {}, n: {} }}", self.k, self.n)
    }
}

impl VnniQ8 {
    /// Packs int8 weights `q` (`[n, k]`, row-major) with their block scales (`[n, k / BLOCK]`).
    pub fn new(q: &[i8], scales: &[f32], n: usize, k: usize) -> Result<Self> {
        let p = pack_panels(q, scales, n, k, NR, |c, kk| (kk / 4) * 4 * NR + c * 4 + kk % 4)?;
        Ok(Self {
            k,
            n,
            ints: p.ints,
            scales: p.scales,
            corr: p.sums.iter().map(|s| -128 * s).collect(),
        })
    }

    /// Quantizes `w_t` (`[k, n]`: the transposed weight of a linear layer) to Q8_0 blocks along
    /// `k` ([`quantize_q8_0`]), then packs them.
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

    /// `c[m × n] += a[m × k] · Wᵀ`, `a` and `c` row-major. Panics when the CPU lacks the
    /// instructions ([`available`]).
    pub fn gemm_add(&self, a: &[f32], m: usize, c: &mut [f32]) {
        let (k, n) = (self.k, self.n);
        assert!(a.len() >= m * k && c.len() >= m * n, "int8 gemm: short slices");
        assert!(available(), "int8 gemm: this CPU lacks AVX-512 VNNI");
        #[cfg(target_arch = "x86_64")]
        if m > 0 && n > 0 {
            x86::gemm_add(self, a, m, c);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{VnniQ8, MR, NR};
    use crate::model::checkpoint::Q8_BLOCK as BLOCK;
    use core::arch::x86_64::*;
    use rayon::prelude::*;

    /// `C`'s base pointer, shared by the threads, each writing only its own columns.
    #[derive(Clone, Copy)]
    struct Out(*mut f32);
    // SAFETY: the threads write disjoint column ranges of `C` (their own panels).
    unsafe impl Send for Out {}
    unsafe impl Sync for Out {}
    impl Out {
        /// The pointer (a method, so that closures capture the whole `Out`, which is `Send`).
        fn ptr(self) -> *mut f32 {
            self.0
        }
    }

    pub(super) fn gemm_add(w: &VnniQ8, a: &[f32], m: usize, c: &mut [f32]) {
        let (k, n) = (w.k, w.n);
        let kb = k / BLOCK;
        let mut qa = vec![0u8; m * k];
        let mut sa = vec![0f32; m * kb];
        qa.par_chunks_mut(k)
            .zip(sa.par_chunks_mut(kb))
            .zip(a[..m * k].par_chunks(k))
            .with_min_len(8)
            .for_each(|((q, s), row)| {
                // SAFETY: `available()` was checked by the caller.
                unsafe { quantize_row(row, q, s) }
            });
        let panels = n.div_ceil(NR);
        let threads = rayon::current_num_threads().max(1);
        let chunk = panels.div_ceil(threads).max(1);
        let out = Out(c.as_mut_ptr());
        (0..panels.div_ceil(chunk)).into_par_iter().for_each(|t| {
            let c = out.ptr();
            for p in t * chunk..((t + 1) * chunk).min(panels) {
                let mut i0 = 0;
                while i0 < m {
                    let rows = MR.min(m - i0);
                    // SAFETY: rows i0..i0+rows < m, panel p < panels; `available()` checked;
                    // this thread alone writes panel p's columns of `C`.
                    unsafe {
                        match rows {
                            6 => kernel::<6>(w, &qa, &sa, p, i0, c),
                            5 => kernel::<5>(w, &qa, &sa, p, i0, c),
                            4 => kernel::<4>(w, &qa, &sa, p, i0, c),
                            3 => kernel::<3>(w, &qa, &sa, p, i0, c),
                            2 => kernel::<2>(w, &qa, &sa, p, i0, c),
                            _ => kernel::<1>(w, &qa, &sa, p, i0, c),
                        }
                    }
                    i0 += rows;
                }
            }
        });
        const _: () = assert!(MR == 6);
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
    unsafe fn kernel<const R: usize>(w: &VnniQ8, qa: &[u8], sa: &[f32], p: usize, i0: usize, c: *mut f32) {
        let (k, n, kb) = (w.k, w.n, w.k / BLOCK);
        let panel = w.ints.as_ptr().add(p * k * NR);
        let ws = w.scales.as_ptr().add(p * kb * NR);
        let wc = w.corr.as_ptr().add(p * kb * NR);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::checkpoint::Q8_BLOCK as BLOCK;
    use crate::model::wasm_qgemm::reference_with;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn matches_the_reference_on_odd_shapes() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX-512 VNNI");
            return;
        }
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
            let q: Vec<i8> = (0..n * k).map(|_| (lcg(&mut seed) * 127.0).round() as i8).collect();
            let s: Vec<f32> = (0..n * k / BLOCK).map(|_| 0.01 + lcg(&mut seed).abs() * 0.02).collect();
            let p = VnniQ8::new(&q, &s, n, k).unwrap();
            let init: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32 - 3.0).collect();
            let mut c = init.clone();
            p.gemm_add(&a, m, &mut c);
            let want = reference_with(&a, &q, &s, m, k, n, 127.0);
            for ((g, w), i) in c.iter().zip(&want).zip(&init) {
                assert!(
                    (g - (w + i)).abs() <= 1e-4 * (1.0 + w.abs()),
                    "[{m},{k},{n}]: {g} vs {w} + {i}"
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
        VnniQ8::new(&q, &s, n, k).unwrap().gemm_add(&a, m, &mut c);
        assert_eq!(c, vec![16.0, 16.0, 16.0, 16.0, 16.0, 16.0]);
    }

    #[test]
    fn refuses_bad_widths() {
        assert!(VnniQ8::new(&[0; 30], &[1.0], 1, 30).is_err());
        assert!(VnniQ8::new(&[0; 64], &[1.0], 1, 64).is_err());
        assert!(VnniQ8::quantize(&[0.0; 64], 32, 3).is_err());
    }
}
