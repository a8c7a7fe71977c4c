// Patch extraction for the patch embedding: pixels [B, 3, H, W] -> cols [B·gh·gw, 3·p·p]
// (channel, row, column order, as the convolution weight is flattened).
struct Params {
    total: u32,
    h: u32,
    w: u32,
    psize: u32,
    gh: u32,
    gw: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pixels: array<f32>;
@group(0) @binding(2) var<storage, read_write> cols: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = (wid.y * 32768u + wid.x) * 256u + lid.x;
    if e >= p.total {
        return;
    }
    let pp = p.psize * p.psize;
    let width = 3u * pp;
    let row = e / width;
    let c = e % width;
    let ch = c / pp;
    let py = (c % pp) / p.psize;
    let px = c % p.psize;
    let n = p.gh * p.gw;
    let b = row / n;
    let gy = (row % n) / p.gw;
    let gx = row % p.gw;
    cols[e] = pixels[((b * 3u + ch) * p.h + gy * p.psize + py) * p.w + gx * p.psize + px];
}
