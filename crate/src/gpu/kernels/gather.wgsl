// Row gather: out[r] = src[idx[r]] for rows of width d (WinCLIP's token subsets).
struct Params {
    total: u32,
    d: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = (wid.y * 32768u + wid.x) * 256u + lid.x;
    if e >= p.total {
        return;
    }
    out[e] = src[idx[e / p.d] * p.d + e % p.d];
}
