// LayerNorm over the last dimension: one workgroup per row of x[rows, d] (two passes: mean, then
// the variance of the centred values).
struct Params {
    rows: u32,
    d: u32,
    eps: f32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const WG: u32 = 128u;
var<workgroup> red: array<f32, 128>;

fn reduce_sum(tid: u32, v: f32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if tid < s {
            red[tid] += red[tid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * 32768u + wid.x;
    if row >= p.rows {
        return;
    }
    let tid = lid.x;
    let base = row * p.d;
    var s = 0.0;
    for (var i = tid; i < p.d; i += WG) {
        s += x[base + i];
    }
    let mean = reduce_sum(tid, s) / f32(p.d);
    var s2 = 0.0;
    for (var i = tid; i < p.d; i += WG) {
        let c = x[base + i] - mean;
        s2 += c * c;
    }
    let inv = inverseSqrt(reduce_sum(tid, s2) / f32(p.d) + p.eps);
    for (var i = tid; i < p.d; i += WG) {
        y[base + i] = (x[base + i] - mean) * inv * gamma[i] + beta[i];
    }
}
