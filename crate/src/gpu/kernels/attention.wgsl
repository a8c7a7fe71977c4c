// Scaled dot-product attention per (query token i, head h, batch b) = workgroup (x, y, z) over a
// fused qkv buffer [B·T, 3D] (row = [q | k | v], each split in heads of hd). The query and key
// parts are selected by q_off / k_off, so the same kernel runs the value-to-value ("surgery")
// path with q_off = k_off = 2D. Softmax rows go through `probs` [B, H, T, T].
struct Params {
    t: u32,
    heads: u32,
    hd: u32,
    d: u32,
    q_off: u32,
    k_off: u32,
    v_off: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> probs: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
var<workgroup> qs: array<f32, 256>;
var<workgroup> red: array<f32, 64>;

fn reduce(tid: u32, v: f32, is_max: bool) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if tid < s {
            if is_max {
                red[tid] = max(red[tid], red[tid + s]);
            } else {
                red[tid] += red[tid + s];
            }
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = wid.x;
    let h = wid.y;
    let b = wid.z;
    let tid = lid.x;
    let stride = 3u * p.d;
    let head = h * p.hd;
    let qbase = (b * p.t + i) * stride + p.q_off + head;
    for (var e = tid; e < p.hd; e += WG) {
        qs[e] = qkv[qbase + e];
    }
    workgroupBarrier();
    let pbase = ((b * p.heads + h) * p.t + i) * p.t;
    var mx = -3.4e38;
    for (var j = tid; j < p.t; j += WG) {
        let kbase = (b * p.t + j) * stride + p.k_off + head;
        var s = 0.0;
        for (var e = 0u; e < p.hd; e++) {
            s = fma(qs[e], qkv[kbase + e], s);
        }
        s *= p.scale;
        probs[pbase + j] = s;
        mx = max(mx, s);
    }
    mx = reduce(tid, mx, true);
    var sum = 0.0;
    for (var j = tid; j < p.t; j += WG) {
        let e = exp(probs[pbase + j] - mx);
        probs[pbase + j] = e;
        sum += e;
    }
    sum = reduce(tid, sum, false);
    storageBarrier();
    let inv = 1.0 / sum;
    for (var e = tid; e < p.hd; e += WG) {
        var acc = 0.0;
        for (var j = 0u; j < p.t; j++) {
            acc = fma(probs[pbase + j], qkv[(b * p.t + j) * stride + p.v_off + head + e], acc);
        }
        out[(b * p.t + i) * p.d + head + e] = acc * inv;
    }
}
