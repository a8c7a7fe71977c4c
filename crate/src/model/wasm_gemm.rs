//! The f32 GEMM of the relaxed-SIMD wasm build: `C = A · B` for a [`Linear`](super::weights::Linear)
//! layer (`A` the `[M, K]` activations, `B` the `[K, N]` transposed weight), with
//! `f32x4.relaxed_madd` in the micro-kernel.
//!
//! Why our own kernel: candle's matmul (the `gemm` crate) multiplies and adds separately in its
//! SIMD128 micro-kernel (`f32x4.mul` then `f32x4.add`), and LLVM never contracts them (Rust has
//! no fast-math), so a `+relaxed-simd` build of it runs the same instructions. `relaxed_madd`
//! lets the engine emit one fused multiply-add where the CPU has FMA (V8 on x64: `vfmadd231ps`),
//! half the arithmetic instructions of the GEMMs that take most of an image encode.
//!
//! Layout: `K` is cut into blocks of [`KC`]; for each block, each panel of [`NR`] columns of `B`
//! is packed (`KC × NR`, contiguous, zero-padded past `N`) and every group of [`MR`] rows of `A`
//! runs the micro-kernel over it: `MR × NR` accumulators (two `v128` per row), one `A` value
//! splat per row and `k`, two `B` loads per `k`. The block of `A` (`M × KC`) stays in L2 and
//! the panel in L1.
//!
//! Rounding: `relaxed_madd` may round once (fused) or twice (multiply, then add) depending on
//! the CPU; either way each output is a sum of the same products in the same order (per `k`),
//! so it differs from candle's result by a few ulps of the partial sums (the tests bound it).
//! Compiled only for `wasm32` with this crate's `relaxed-simd` feature; the functions that use
//! relaxed instructions enable the `relaxed-simd` target feature themselves, so the rest of the
//! module (and every dependency) is built exactly as in the SIMD128 build.
use core::arch::wasm32::*;

/// Rows of `A` per micro-kernel call.
pub const MR: usize = 4;
// The remainder kernels below go up to 5 rows.
const _: () = assert!(MR <= 6);
/// Columns of `B` per packed panel (two `f32x4`).
pub const NR: usize = 8;
// `store_tile` writes tiles 8 columns wide.
const _: () = assert!(NR == 8);
/// Depth of one block of `K`.
pub const KC: usize = 384;

/// `c[m × n] = a[m × k] · b[k × n]`, all row-major and contiguous. `c` is overwritten.
///
/// The module holding this function validates only in engines with relaxed SIMD (the page's
/// worker checks that before loading the relaxed-SIMD build).
pub fn gemm(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    gemm_into(a, b, c, m, k, n, false)
}

/// `c[m × n] += a[m × k] · b[k × n]` (`c` holds the bias or the residual stream).
pub fn gemm_add(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    gemm_into(a, b, c, m, k, n, true)
}

fn gemm_into(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize, add: bool) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
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
            pack(&b[k0 * n..], n, kc, j0, nc, &mut panel);
            let mut i0 = 0;
            while i0 + MR <= m {
                // SAFETY: rows i0..i0+MR < m, columns j0..j0+nc ≤ n, depths k0..k0+kc ≤ k.
                unsafe { kernel::<MR>(a, k, i0, k0, kc, &panel, c, n, j0, nc, first) };
                i0 += MR;
            }
            // SAFETY: as above, with the remaining m - i0 < MR rows.
            unsafe {
                match m - i0 {
                    0 => {}
                    1 => kernel::<1>(a, k, i0, k0, kc, &panel, c, n, j0, nc, first),
                    2 => kernel::<2>(a, k, i0, k0, kc, &panel, c, n, j0, nc, first),
                    3 => kernel::<3>(a, k, i0, k0, kc, &panel, c, n, j0, nc, first),
                    4 => kernel::<4>(a, k, i0, k0, kc, &panel, c, n, j0, nc, first),
                    _ => kernel::<5>(a, k, i0, k0, kc, &panel, c, n, j0, nc, first),
                }
            }
            j0 += NR;
        }
        k0 += kc;
    }
}

/// Packs columns `j0..j0+nc` of the `kc` rows of `b` (row stride `n`) into `panel`
/// (`kc × NR`, row-major, zeros past `nc`).
fn pack(b: &[f32], n: usize, kc: usize, j0: usize, nc: usize, panel: &mut [f32]) {
    assert!(
        kc * NR <= panel.len() && (kc - 1) * n + j0 + nc <= b.len(),
        "pack: short slices"
    );
    if nc == NR {
        // A full panel: two v128 per row (a copy of unknown length would call memcpy per row).
        for kk in 0..kc {
            // SAFETY: row kk's columns j0..j0+NR are in `b` and row kk of the panel in `panel`
            // (the assert above); v128 loads and stores need no alignment.
            unsafe {
                let src = b.as_ptr().add(kk * n + j0);
                let dst = panel.as_mut_ptr().add(kk * NR);
                v128_store(dst as *mut v128, v128_load(src as *const v128));
                v128_store(dst.add(4) as *mut v128, v128_load(src.add(4) as *const v128));
            }
        }
        return;
    }
    for (kk, dst) in panel.chunks_exact_mut(NR).take(kc).enumerate() {
        dst[..nc].copy_from_slice(&b[kk * n + j0..kk * n + j0 + nc]);
        dst[nc..].fill(0.0);
    }
}

/// `C[i0.., j0..] (+)= A[i0.., k0..k0+kc] · panel` for `R` rows and `nc ≤ NR` columns; `first`:
/// overwrite instead of accumulate.
///
/// # Safety
/// `i0 + R ≤ m`, `k0 + kc ≤ k` (the row stride of `a`), `kc ≤ KC`, `j0 + nc ≤ n` (the row
/// stride of `c`), and the slices hold `m` rows.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "relaxed-simd")]
unsafe fn kernel<const R: usize>(
    a: &[f32],
    k: usize,
    i0: usize,
    k0: usize,
    kc: usize,
    panel: &[f32],
    c: &mut [f32],
    n: usize,
    j0: usize,
    nc: usize,
    first: bool,
) {
    let mut acc = [[f32x4_splat(0.0); 2]; R];
    let ap = a.as_ptr().add(i0 * k + k0);
    let bp = panel.as_ptr();
    for kk in 0..kc {
        let b0 = v128_load(bp.add(kk * NR) as *const v128);
        let b1 = v128_load(bp.add(kk * NR + 4) as *const v128);
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = v128_load32_splat(ap.add(r * k + kk) as *const u32);
            acc[0] = f32x4_relaxed_madd(x, b0, acc[0]);
            acc[1] = f32x4_relaxed_madd(x, b1, acc[1]);
        }
    }
    super::wasm_qgemm::store_tile(&acc, c, n, i0, j0, nc, first);
}
