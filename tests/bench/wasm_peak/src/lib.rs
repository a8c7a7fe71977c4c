//! Micro-kernels of anoscope's wasm GEMMs on L1-resident data, and the engine's multiply-add
//! peak, for `run.mjs` (see README.md). The loops mirror `crate/src/model/wasm_gemm.rs` and
//! `crate/src/model/wasm_qgemm.rs`; the values are meaningless.
use core::arch::wasm32::*;

const KC: usize = 384;
static mut F: [f32; 1 << 14] = [0.5; 1 << 14];
static mut A16: [i16; 4 * KC] = [1; 4 * KC];
static mut W8: [i8; KC * 8] = [1; KC * 8];
static mut W16: [i16; KC * 8] = [1; KC * 8];
static mut S: [f32; 256] = [0.5; 256];

/// `iters` × 10 independent `relaxed_madd` on registers; returns a lane (so nothing is elided).
#[no_mangle]
#[target_feature(enable = "relaxed-simd")]
pub unsafe fn peak(iters: u32) -> f32 {
    let mut acc = [f32x4_splat(0.0); 10];
    let (x, y) = (f32x4_splat(1.000_000_1), f32x4_splat(0.999_999));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = f32x4_relaxed_madd(*a, x, y);
        }
    }
    f32x4_extract_lane::<0>(acc.iter().fold(f32x4_splat(0.0), |s, a| f32x4_add(s, *a)))
}

/// `reps` × the relaxed f32 micro-kernel over one `KC` block: 4 rows (stride 768) × 8 columns.
#[no_mangle]
#[target_feature(enable = "relaxed-simd")]
pub unsafe fn f32_kernel(reps: u32) -> f32 {
    let a = core::ptr::addr_of!(F) as *const f32;
    let b = a.add(4 * 768);
    let mut tot = f32x4_splat(0.0);
    for _ in 0..reps {
        let mut acc = [[f32x4_splat(0.0); 2]; 4];
        for kk in 0..KC {
            let b0 = v128_load(b.add(kk * 8) as *const v128);
            let b1 = v128_load(b.add(kk * 8 + 4) as *const v128);
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = v128_load32_splat(a.add(r * 768 + kk) as *const u32);
                acc[0] = f32x4_relaxed_madd(x, b0, acc[0]);
                acc[1] = f32x4_relaxed_madd(x, b1, acc[1]);
            }
        }
        for r in acc {
            tot = f32x4_add(tot, f32x4_add(r[0], r[1]));
        }
    }
    f32x4_extract_lane::<0>(tot)
}

/// `reps` × the SIMD128 int8 micro-kernel over one `KC` block (12 blocks of 32 inputs, each
/// scaled into f32 accumulators), 4 rows × 8 outputs; weights widened in the loop (`WIDE`
/// false) or read as i16.
#[inline(always)]
unsafe fn int8<const WIDE: bool>(reps: u32) -> f32 {
    let a = core::ptr::addr_of!(A16) as *const i16;
    let w8 = core::ptr::addr_of!(W8) as *const i8;
    let w16 = core::ptr::addr_of!(W16) as *const i16;
    let sc = core::ptr::addr_of!(S) as *const f32;
    let mut tot = f32x4_splat(0.0);
    for _ in 0..reps {
        let mut acc = [[f32x4_splat(0.0); 2]; 4];
        for b in 0..KC / 32 {
            let mut iacc = [[i32x4_splat(0); 2]; 4];
            let ab = a.add(b * 32);
            for s in 0..16 {
                let (w0, w1) = if WIDE {
                    let wp = w16.add(b * 256 + 16 * s);
                    (v128_load(wp as *const v128), v128_load(wp.add(8) as *const v128))
                } else {
                    let wv = v128_load(w8.add(b * 256 + 16 * s) as *const v128);
                    (i16x8_extend_low_i8x16(wv), i16x8_extend_high_i8x16(wv))
                };
                for (r, iacc) in iacc.iter_mut().enumerate() {
                    let x = v128_load32_splat(ab.add(r * KC + 2 * s) as *const u32);
                    iacc[0] = i32x4_add(iacc[0], i32x4_dot_i16x8(x, w0));
                    iacc[1] = i32x4_add(iacc[1], i32x4_dot_i16x8(x, w1));
                }
            }
            let (s0, s1) = (
                v128_load(sc.add(b * 8) as *const v128),
                v128_load(sc.add(b * 8 + 4) as *const v128),
            );
            for (r, (acc, iacc)) in acc.iter_mut().zip(&iacc).enumerate() {
                let sa = f32x4_splat(*sc.add(128 + r * 12 + b));
                acc[0] = f32x4_add(acc[0], f32x4_mul(f32x4_convert_i32x4(iacc[0]), f32x4_mul(s0, sa)));
                acc[1] = f32x4_add(acc[1], f32x4_mul(f32x4_convert_i32x4(iacc[1]), f32x4_mul(s1, sa)));
            }
        }
        for r in acc {
            tot = f32x4_add(tot, f32x4_add(r[0], r[1]));
        }
    }
    f32x4_extract_lane::<0>(tot)
}

/// [`int8`] with the weights widened in the loop (the kernel before 2026-12-06 evening).
#[no_mangle]
pub unsafe fn i8_in_loop(reps: u32) -> f32 {
    int8::<false>(reps)
}

/// [`int8`] reading weights already widened to i16 (the kernel now, widened once per panel).
#[no_mangle]
pub unsafe fn i16_panel(reps: u32) -> f32 {
    int8::<true>(reps)
}
