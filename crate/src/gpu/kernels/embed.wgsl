// Token embeddings: x[b, t] = (t == 0 ? class : patches[b, t - 1]) + pos[t], x [B, 1+N, D].
struct Params {
    total: u32,
    n: u32,
    d: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> patches: array<f32>;
@group(0) @binding(2) var<storage, read> cls: array<f32>;
@group(0) @binding(3) var<storage, read> pos: array<f32>;
@group(0) @binding(4) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = (wid.y * 32768u + wid.x) * 256u + lid.x;
    if e >= p.total {
        return;
    }
    let t1 = p.n + 1u;
    let c = e % p.d;
    let tok = e / p.d;
    let t = tok % t1;
    let b = tok / t1;
    var v = cls[c];
    if t > 0u {
        v = patches[(b * p.n + t - 1u) * p.d + c];
    }
    x[e] = v + pos[t * p.d + c];
}
