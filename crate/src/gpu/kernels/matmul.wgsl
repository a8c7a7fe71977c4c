// out[M, N] (+)= act(A[M, K] @ W[K, N] + bias[N]): 64×64 output tiles, 16-deep K slices staged in
// workgroup memory, 4×4 outputs per thread (rows ly + 16i, columns lx + 16j).
// W's element type is the placeholder `WT`: `f32`, or `f16` (weights stored in half precision
// where the adapter has `shader-f16`; the source then starts with `enable f16;`). Arithmetic is
// f32 either way.
// A's row r is read at a_offset + (r / a_rows_per_group) · a_group_stride + (r % a_rows_per_group) · K,
// which picks e.g. the class token or the patch tokens out of a [B, T, D] buffer.
struct Params {
    m: u32,
    n: u32,
    k: u32,
    // bit 0: add bias; bit 1: accumulate into out; bits 2-3: activation
    // (0 none, 1 QuickGELU, 2 GELU (erf), 3 GELU (tanh)).
    flags: u32,
    a_rows_per_group: u32,
    a_group_stride: u32,
    a_offset: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<WT>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> a_tile: array<f32, 1024>; // [TK][TM]
var<workgroup> w_tile: array<f32, 1024>; // [TK][TN]

// erf with |error| < 1.5e-7 (Abramowitz & Stegun 7.1.26).
fn erf_approx(x: f32) -> f32 {
    let s = sign(x);
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t;
    return s * (1.0 - poly * exp(-z * z));
}

fn activate(x: f32, act: u32) -> f32 {
    switch act {
        case 1u: {
            return x / (1.0 + exp(-1.702 * x));
        }
        case 2u: {
            return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752));
        }
        case 3u: {
            let u = clamp(0.7978845608028654 * (x + 0.044715 * x * x * x), -15.0, 15.0);
            return 0.5 * x * (1.0 + tanh(u));
        }
        default: {
            return x;
        }
    }
}

fn a_index(row: u32, col: u32) -> u32 {
    let g = row / p.a_rows_per_group;
    let r = row % p.a_rows_per_group;
    return p.a_offset + g * p.a_group_stride + r * p.k + col;
}

fn write_row(r: u32, col0: u32, v: vec4<f32>) {
    if r >= p.m {
        return;
    }
    let act = (p.flags >> 2u) & 3u;
    for (var j = 0u; j < 4u; j++) {
        let c = col0 + 16u * j;
        if c >= p.n {
            continue;
        }
        var y = v[j];
        if (p.flags & 1u) != 0u {
            y += bias[c];
        }
        y = activate(y, act);
        let o = r * p.n + c;
        if (p.flags & 2u) != 0u {
            y += out[o];
        }
        out[o] = y;
    }
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.y * 16u + lid.x;
    let row0 = wid.y * TM;
    let col0 = wid.x * TN;
    // Accumulators: acc_i[j] is output (row0 + ly + 16i, col0 + lx + 16j); no private arrays, so
    // CPU adapters (lavapipe) keep them in registers too.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var i = 0u; i < 4u; i++) {
            let e = tid + i * 256u;
            let r = e / TK;
            let c = e % TK;
            let gr = row0 + r;
            let gc = k0 + c;
            var v = 0.0;
            if gr < p.m && gc < p.k {
                v = a[a_index(gr, gc)];
            }
            a_tile[c * TM + r] = v;
        }
        for (var i = 0u; i < 4u; i++) {
            let e = tid + i * 256u;
            let r = e / TN;
            let c = e % TN;
            let gr = k0 + r;
            let gc = col0 + c;
            var v = 0.0;
            if gr < p.k && gc < p.n {
                v = f32(w[gr * p.n + gc]);
            }
            w_tile[r * TN + c] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let ab = kk * TM + lid.y;
            let wb = kk * TN + lid.x;
            let wv = vec4<f32>(w_tile[wb], w_tile[wb + 16u], w_tile[wb + 32u], w_tile[wb + 48u]);
            acc0 = fma(vec4<f32>(a_tile[ab]), wv, acc0);
            acc1 = fma(vec4<f32>(a_tile[ab + 16u]), wv, acc1);
            acc2 = fma(vec4<f32>(a_tile[ab + 32u]), wv, acc2);
            acc3 = fma(vec4<f32>(a_tile[ab + 48u]), wv, acc3);
        }
        workgroupBarrier();
    }
    let r = row0 + lid.y;
    let c = col0 + lid.x;
    write_row(r, c, acc0);
    write_row(r + 16u, c, acc1);
    write_row(r + 32u, c, acc2);
    write_row(r + 48u, c, acc3);
}
