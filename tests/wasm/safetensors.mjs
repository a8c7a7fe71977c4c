// Minimal safetensors reader/writer for the wasm tests (node >= 20, no deps).
// Format: 8-byte little-endian header length, JSON header, then raw
// little-endian tensor data; header entries are {dtype, shape, data_offsets}
// with offsets relative to the end of the header.

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function f16ToF32(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}

const READERS = {
  F32: (buf) => new Float32Array(buf),
  F64: (buf) => new Float64Array(buf),
  I64: (buf) => new BigInt64Array(buf),
  I32: (buf) => new Int32Array(buf),
  U8: (buf) => new Uint8Array(buf),
  F16: (buf) => Float32Array.from(new Uint16Array(buf), f16ToF32),
  BF16: (buf) => {
    const src = new Uint16Array(buf);
    const out = new Uint32Array(src.length);
    for (let i = 0; i < src.length; i++) out[i] = src[i] << 16;
    return new Float32Array(out.buffer);
  },
};
const ELEMENT_BYTES = { F32: 4, F64: 8, I64: 8, I32: 4, U8: 1, F16: 2, BF16: 2 };

/**
 * Parses safetensors bytes into a Map name -> {dtype, shape, data}, where data is
 * a typed array (F16/BF16 widened to Float32Array, I64 as BigInt64Array). The
 * header's `__metadata__` (or {}) is attached as the map's `metadata` property.
 * @param {Uint8Array} bytes
 */
export function readSafetensors(bytes) {
  if (!LITTLE_ENDIAN) throw new Error('big-endian hosts are not supported');
  if (!(bytes instanceof Uint8Array)) throw new TypeError('expected a Uint8Array');
  if (bytes.length < 8) throw new Error(`safetensors: ${bytes.length} bytes is too short`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen > bytes.length - 8) throw new Error('safetensors: header length past end of data');
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLen)));
  const base = 8 + headerLen;
  const tensors = new Map();
  tensors.metadata = header.__metadata__ ?? {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const { dtype, shape, data_offsets: [start, end] } = info;
    const read = READERS[dtype];
    if (!read) throw new Error(`safetensors: ${name}: unsupported dtype ${dtype}`);
    const count = shape.reduce((a, b) => a * b, 1);
    if (end - start !== count * ELEMENT_BYTES[dtype] || base + end > bytes.length) {
      throw new Error(`safetensors: ${name}: bad data_offsets for ${dtype}${JSON.stringify(shape)}`);
    }
    // Copy into a fresh, aligned ArrayBuffer (Buffer#slice would share memory).
    const data = read(new Uint8Array(bytes.subarray(base + start, base + end)).buffer);
    tensors.set(name, { dtype, shape, data });
  }
  return tensors;
}

/**
 * Serialises {name: {dtype, shape, data}} (F32/I64/I32/U8/F64 typed arrays) to
 * safetensors bytes, with an optional `__metadata__` object of strings.
 */
export function writeSafetensors(tensors, metadata) {
  const header = metadata ? { __metadata__: metadata } : {};
  const chunks = [];
  let offset = 0;
  for (const [name, { dtype, shape, data }] of Object.entries(tensors)) {
    const count = shape.reduce((a, b) => a * b, 1);
    if (data.length !== count) throw new Error(`${name}: ${data.length} values for shape ${shape}`);
    const raw = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (raw.length !== count * ELEMENT_BYTES[dtype]) throw new Error(`${name}: dtype ${dtype} mismatch`);
    header[name] = { dtype, shape, data_offsets: [offset, offset + raw.length] };
    chunks.push(raw);
    offset += raw.length;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const pad = (8 - ((8 + json.length) % 8)) % 8; // keep the data 8-byte aligned
  const headerBytes = new Uint8Array(json.length + pad).fill(0x20);
  headerBytes.set(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let pos = 8 + headerBytes.length;
  for (const c of chunks) {
    out.set(c, pos);
    pos += c.length;
  }
  return out;
}

/** Row `i` (along the first axis) of a tensor, as {shape: [1, ...rest], data}. */
export function row(tensor, i) {
  const [n, ...rest] = tensor.shape;
  if (i < 0 || i >= n) throw new RangeError(`row ${i} of ${n}`);
  const size = rest.reduce((a, b) => a * b, 1);
  return { dtype: tensor.dtype, shape: [1, ...rest], data: tensor.data.slice(i * size, (i + 1) * size) };
}

/**
 * The safetensors file `bytes` with the f32 tensors `names` ([rows, cols]) zero-padded to
 * [rows, 2 * cols]: a learned file as if converted for a checkpoint with twice the embedding width
 * (the tests' "file for another checkpoint").
 */
export function widened(bytes, names) {
  const t = readSafetensors(bytes);
  for (const k of names) {
    const v = t.get(k);
    const [r, c] = v.shape;
    const data = new Float32Array(r * 2 * c);
    for (let i = 0; i < r; i++) data.set(v.data.subarray(i * c, (i + 1) * c), i * 2 * c);
    t.set(k, { ...v, shape: [r, 2 * c], data });
  }
  return writeSafetensors(Object.fromEntries(t));
}
