//! The f32 GEMM of the wasm builds: `C = A · B` for a [`Linear`](super::weights::Linear) layer
//! (`A` the `[M, K]` activations, `B` the `[K, N]` transposed weight) and for the attention
//! products (`q kᵀ`, `p v`: strided views into the fused projection), with `f32x4.relaxed_madd`
//! in the micro-kernel of the relaxed-SIMD build and a multiply then an add in the SIMD128 one.
//!
//! Why our own kernel: candle's matmul (the `gemm` crate) multiplies and adds separately in its
//! SIMD128 micro-kernel (`f32x4.mul` then `f32x4.add`), and LLVM never contracts them (Rust has
//! no fast-math), so a `+relaxed-simd` build of it runs the same instructions. `relaxed_madd`
//! lets the engine emit one fused multiply-add where the CPU has FMA (V8 on x64: `vfmadd231ps`),
//! half the arithmetic instructions of the GEMMs that take most of an image encode. In the
//! SIMD128 build this kernel, with the same instructions as the `gemm` crate's, took 0.81× its
//! time for an f32 encode (Node 20, 4 interleaved rounds), and 0.96× for a q8 one (whose f32
//! GEMMs are the attention products).
//!
//! Layout: `K` is cut into blocks of [`KC`]; for each block, each panel of [`NR`] columns of `B`
//! is packed (`KC × NR`, contiguous, zero-padded past `N`) and every group of [`MR`] rows of `A`
//! runs the micro-kernel over it: `MR × NR` accumulators (two `v128` per row), one `A` value
//! splat per row and `k`, two `B` loads per `k`. The block of `A` (`M × KC`) stays in L2 and
//! the panel in L1. On this machine's V8 the micro-kernel runs at the speed of a loop of
//! independent multiply-adds on registers (docs/speed.md).
//!
//! Rounding: `relaxed_madd` may round once (fused) or twice (multiply, then add) depending on
//! the CPU; either way each output is a sum of the same products in the same order (per `k`),
//! so it differs from candle's result by a few ulps of the partial sums (the tests bound it).
//! The functions that use relaxed instructions enable the `relaxed-simd` target feature
//! themselves (in the crate's `relaxed-simd` build only), so the rest of the module (and every
//! dependency) is built exactly as in the SIMD128 build.
use core::arch::wasm32::*;

/// Rows of `A` per micro-kernel call.
pub const MR: usize = 4;
// The remainder kernels below go up to 3 rows.
const _: () = assert!(MR == 4);
/// Columns of `B` per packed panel (two `f32x4`).
pub const NR: usize = 8;
// `store_tile` writes tiles 8 columns wide.
const _: () = assert!(NR == 8);
/// Depth of one block of `K`.
pub const KC: usize = 384;

/// A read-only matrix in a slice: element `(i, j)` at `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// The values.
    pub data: &'a [f32],
    /// Stride between rows.
    pub rs: usize,
    /// Stride between columns.
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self { data, rs: cols, cs: 1 }
    }

    /// Whether `rows × cols` elements lie inside `data`.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `c[m × n] = a[m × k] · b[k × n]`, all row-major and contiguous. `c` is overwritten.
///
/// In the relaxed-SIMD build the module holding this function validates only in engines with
/// relaxed SIMD (the page's worker checks that before loading it).
pub fn gemm(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    gemm_view(View::rows(a, k), View::rows(b, n), c, m, k, n, false)
}

/// `c[m × n] += a[m × k] · b[k × n]` (`c` holds the bias or the residual stream).
pub fn gemm_add(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    gemm_view(View::rows(a, k), View::rows(b, n), c, m, k, n, true)
}

/// `c[m × n] (+)= a · b` for views `a` (`m × k`, its columns contiguous: `a.cs == 1`) and `b`
/// (`k × n`, any strides); `c` row-major and contiguous, overwritten unless `add`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_view(a: View<'_>, b: View<'_>, c: &mut [f32], m: usize, k: usize, n: usize, add: bool) {
    assert!(
        a.cs == 1 && a.holds(m, k) && b.holds(k, n) && c.len() >= m * n,
        "gemm: short slices"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !add {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let mut panel = vec![0f32; KC * NR];
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        let first = k0 == 0 && !add;
        let mut j0 = 0;
        while j0 < n {
            let nc = NR.min(n - j0);
            pack(b, k0, kc, j0, nc, &mut panel);
            let ak = &a.data[k0..];
            let mut i0 = 0;
            while i0 + MR <= m {
                // SAFETY: rows i0..i0+MR < m of `a` (row stride a.rs) hold columns k0..k0+kc
                // (`a.holds(m, k)`), columns j0..j0+nc ≤ n.
                unsafe { kernel::<MR>(ak, a.rs, i0, kc, &panel, c, n, j0, nc, first) };
                i0 += MR;
            }
            // SAFETY: as above, with the remaining m - i0 < MR rows.
            unsafe {
                match m - i0 {
                    0 => {}
                    1 => kernel::<1>(ak, a.rs, i0, kc, &panel, c, n, j0, nc, first),
                    2 => kernel::<2>(ak, a.rs, i0, kc, &panel, c, n, j0, nc, first),
                    _ => kernel::<3>(ak, a.rs, i0, kc, &panel, c, n, j0, nc, first),
                }
            }
            j0 += NR;
        }
        k0 += kc;
    }
}

/// Packs columns `j0..j0+nc` of rows `k0..k0+kc` of `b` into `panel` (`kc × NR`, row-major,
/// zeros past `nc`).
fn pack(b: View<'_>, k0: usize, kc: usize, j0: usize, nc: usize, panel: &mut [f32]) {
    assert!(
        kc * NR <= panel.len() && b.holds(k0 + kc, j0 + nc),
        "pack: short slices"
    );
    if nc == NR && b.cs == 1 {
        // A full panel of a row-major `b`: two v128 per row (a copy of unknown length would
        // call memcpy per row).
        for kk in 0..kc {
            // SAFETY: row k0+kk's columns j0..j0+NR are in `b` and row kk of the panel in
            // `panel` (the assert above); v128 loads and stores need no alignment.
            unsafe {
                let src = b.data.as_ptr().add((k0 + kk) * b.rs + j0);
                let dst = panel.as_mut_ptr().add(kk * NR);
                v128_store(dst as *mut v128, v128_load(src as *const v128));
                v128_store(dst.add(4) as *mut v128, v128_load(src.add(4) as *const v128));
            }
        }
        return;
    }
    for (kk, dst) in panel.chunks_exact_mut(NR).take(kc).enumerate() {
        let row = (k0 + kk) * b.rs;
        for (jj, d) in dst.iter_mut().enumerate() {
            *d = if jj < nc { b.data[row + (j0 + jj) * b.cs] } else { 0.0 };
        }
    }
}

/// `x · b + acc`: one fused or unfused multiply-add in the relaxed build (`f32x4.relaxed_madd`),
/// a multiply then an add in the SIMD128 build.
#[inline]
#[cfg_attr(feature = "relaxed-simd", target_feature(enable = "relaxed-simd"))]
unsafe fn madd(x: v128, b: v128, acc: v128) -> v128 {
    #[cfg(feature = "relaxed-simd")]
    return f32x4_relaxed_madd(x, b, acc);
    #[cfg(not(feature = "relaxed-simd"))]
    return f32x4_add(f32x4_mul(x, b), acc);
}

/// `C[i0.., j0..] (+)= A[i0.., ..kc] · panel` for `R` rows and `nc ≤ NR` columns (`a` starts
/// at the block's first column, row stride `lda`); `first`: overwrite instead of accumulate.
///
/// # Safety
/// Rows `i0..i0+R` of `a` hold `kc` values each, `kc ≤ KC`, `j0 + nc ≤ n` (the row stride of
/// `c`), and `c` holds rows `i0..i0+R`.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(feature = "relaxed-simd", target_feature(enable = "relaxed-simd"))]
unsafe fn kernel<const R: usize>(
    a: &[f32],
    lda: usize,
    i0: usize,
    kc: usize,
    panel: &[f32],
    c: &mut [f32],
    n: usize,
    j0: usize,
    nc: usize,
    first: bool,
) {
    let mut acc = [[f32x4_splat(0.0); 2]; R];
    let ap = a.as_ptr().add(i0 * lda);
    let bp = panel.as_ptr();
    for kk in 0..kc {
        let b0 = v128_load(bp.add(kk * NR) as *const v128);
        let b1 = v128_load(bp.add(kk * NR + 4) as *const v128);
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = v128_load32_splat(ap.add(r * lda + kk) as *const u32);
            acc[0] = madd(x, b0, acc[0]);
            acc[1] = madd(x, b1, acc[1]);
        }
    }
    super::wasm_qgemm::store_tile(&acc, c, n, i0, j0, nc, first);
}

/// Runs [`gemm_view`] on pseudo-random `[m, k] × [k, n]` values (`seed` picks them) against a
/// plain f64 sum, with `a` rows padded (row stride `k + 3`) and `b` either row-major with
/// padded rows or, with `transposed`, read as the transpose of a `[n, k]` matrix (as attention
/// reads `kᵀ`), and the product added to values already in `c`; returns the largest
/// `|Δ| / (1 + |want|)`. The wasm test suite calls it (through the wasm API) to check this
/// build's kernel.
pub fn self_check(m: usize, k: usize, n: usize, seed: u64, transposed: bool) -> f32 {
    let mut seed = seed.max(1);
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let lda = k + 3;
    let a: Vec<f32> = (0..m * lda).map(|_| next()).collect();
    let (b, b_view_rs, b_view_cs, ldb) = if transposed {
        let ldb = k + 5; // `[n, k]` rows, read as `[k, n]`
        ((0..n * ldb).map(|_| next()).collect::<Vec<f32>>(), 1, ldb, ldb)
    } else {
        let ldb = n + 5;
        ((0..k * ldb).map(|_| next()).collect::<Vec<f32>>(), ldb, 1, ldb)
    };
    let c0: Vec<f32> = (0..m * n).map(|_| next()).collect();
    let mut c = c0.clone();
    let view_b = View {
        data: &b,
        rs: b_view_rs,
        cs: b_view_cs,
    };
    gemm_view(
        View {
            data: &a,
            rs: lda,
            cs: 1,
        },
        view_b,
        &mut c,
        m,
        k,
        n,
        true,
    );
    let mut worst = 0f32;
    for i in 0..m {
        for j in 0..n {
            let mut want = c0[i * n + j] as f64;
            for kk in 0..k {
                let bv = if transposed { b[j * ldb + kk] } else { b[kk * ldb + j] };
                want += a[i * lda + kk] as f64 * bv as f64;
            }
            let got = c[i * n + j] as f64;
            let e = ((got - want).abs() / (1.0 + want.abs())) as f32;
            if e.is_nan() || e > worst {
                worst = e; // NaN sticks
            }
        }
    }
    worst
}
