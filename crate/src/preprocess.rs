//! Image decoding (with memory limits) and CLIP-style preprocessing.
//!
//! Everything here works on in-memory bytes so that the same code runs natively and in the
//! browser (`wasm32-unknown-unknown`, where there are no paths); [`load_image`] and
//! [`pixels_from_safetensors_file`] are thin path wrappers whose errors always name the file.
//!
//! # Decoding
//!
//! [`decode_image`] guesses the format from the content (never from a file extension), reads
//! the dimensions from the header and rejects images over [`ImageLimits::max_pixels`] *before*
//! any pixel buffer is allocated (a PNG header claiming 30000×30000 costs nothing). The
//! `image` crate's own [`image::Limits`] are set as a second guard. Every pixel format is
//! converted to 8-bit RGB the way PIL's `Image.convert("RGB")` does for the common cases:
//!
//! * grayscale (`L`) → the gray value replicated into R, G and B;
//! * gray+alpha, RGBA, palette with transparency → alpha is **dropped** (not composited);
//! * palette images → the palette colours;
//! * 16-bit channels → scaled to 8 bits with rounding, `round(v * 255 / 65535)` (the `image`
//!   crate's `to_rgb8`). PIL differs slightly here: for 16-bit RGB(A) PNGs it keeps the high
//!   byte (`v >> 8`, at most 1 level below ours) and for 16-bit grayscale (`I;16`) its
//!   `convert("RGB")` *clips* values to 255 instead of scaling, which we deliberately do not
//!   copy.
//! * EXIF orientation is **not** applied, exactly like `PIL.Image.open` (CLIP / open_clip /
//!   anomalib do not call `ImageOps.exif_transpose`).
//!
//! # Transforms
//!
//! [`clip_preprocess`] reproduces the OpenAI CLIP / open_clip evaluation transform
//! (`Resize(size, BICUBIC)` on the shortest side → `CenterCrop(size)` → `ToTensor` →
//! `Normalize`), and [`resize_preprocess`] the WinCLIP / anomalib one (`Resize((size, size),
//! BICUBIC)` → `ToTensor` → `Normalize`). Both return CHW `f32` data of length `3 * size * size`.
//!
//! The bicubic resampler ([`resize_bicubic`]) is a port of Pillow's `ImagingResample` for 8-bit
//! images (`libImaging/Resample.c`): cubic kernel with `a = -0.5`, support scaled by the
//! downscaling factor (antialiasing), coefficients normalised per output pixel then quantised
//! to 22-bit fixed point, horizontal pass then vertical pass, each rounded and clamped to `u8`.
//! It is therefore meant to be bit-exact with `PIL.Image.resize(..., Image.BICUBIC)`.
//!
//! **Measured against Pillow 12.0.0** (one-off check, see the ignored test
//! `pil_reference_parity` in `crate/tests/preprocess.rs`) on MVTec AD `bottle` test images
//! (900×900, RGB): shortest-side resize to 224 + centre crop, to 240, and a plain
//! 900×900 → 333×517 and upscaling 64×64 → 240×240 resize: **max abs pixel difference 0**
//! (bit-identical `u8` output). After `ToTensor`+`Normalize` the float tensors match
//! torchvision's to within 1 ulp-level rounding (max abs difference 4.8e-7 in normalised
//! units). For comparison, the `image` crate's `imageops::resize` with
//! `FilterType::CatmullRom` (same kernel, f32 arithmetic, different rounding) differs from
//! Pillow by up to 3 levels (out of 255) on the same 900 → 224 resize.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Seek, SeekFrom};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};

/// Default maximum number of pixels (width × height) an image may have to be decoded:
/// 64 Mi pixels (e.g. 8192×8192). Decoded to RGB8 that is 192 MiB, which still fits the
/// 4 GiB address space of `wasm32` with room for the model; anything larger is almost
/// certainly a mistake (or a decompression bomb) for anomaly detection at 224–518 px.
pub const MAX_IMAGE_PIXELS: u64 = 64 * 1024 * 1024;

/// Limits applied when decoding untrusted images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    max_pixels: u64,
}

impl Default for ImageLimits {
    /// [`MAX_IMAGE_PIXELS`].
    fn default() -> Self {
        Self {
            max_pixels: MAX_IMAGE_PIXELS,
        }
    }
}

impl ImageLimits {
    /// Limits allowing at most `max_pixels` pixels (width × height).
    pub fn new(max_pixels: u64) -> Self {
        Self { max_pixels }
    }

    /// The maximum number of pixels (width × height).
    pub fn max_pixels(&self) -> u64 {
        self.max_pixels
    }

    /// The `image` crate limits used as a second guard while decoding: no side may exceed the
    /// pixel limit and the decoder may allocate at most 16 bytes per allowed pixel (enough for
    /// RGBA f32, the widest layout a supported decoder produces) plus 16 MiB of slack.
    fn image_limits(&self) -> image::Limits {
        let side = u32::try_from(self.max_pixels).unwrap_or(u32::MAX);
        let mut l = image::Limits::default();
        l.max_image_width = Some(side);
        l.max_image_height = Some(side);
        l.max_alloc = Some(
            self.max_pixels
                .saturating_mul(16)
                .saturating_add(16 << 20),
        );
        l
    }

    fn check(&self, width: u32, height: u32, format: &dyn fmt::Debug) -> Result<()> {
        if width == 0 || height == 0 {
            bail!("invalid {format:?} image: zero width or height ({width}x{height})");
        }
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_pixels {
            bail!(
                "{format:?} image is too large: {width}x{height} = {pixels} pixels exceeds the \
                 limit of {} pixels",
                self.max_pixels
            );
        }
        Ok(())
    }
}

/// Decodes an image from its encoded bytes (PNG, JPEG, WebP, BMP, GIF or TIFF; the format is
/// guessed from the content) into 8-bit RGB, rejecting images larger than `limits` before
/// decoding them. See the [module docs](self) for the colour conversions.
pub fn decode_image(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage> {
    if bytes.is_empty() {
        bail!("empty input (0 bytes) is not an image");
    }
    decode_reader(Cursor::new(bytes), limits)
}

/// Reads and decodes the image file at `path` (see [`decode_image`]). Every error message
/// contains the path.
pub fn load_image(path: &Path, limits: &ImageLimits) -> Result<RgbImage> {
    let p = path.display();
    let file = File::open(path).map_err(|e| anyhow!("cannot open image file {p}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| anyhow!("cannot read image file {p}: {e}"))?;
    if meta.is_dir() {
        bail!("cannot read image file {p}: it is a directory");
    }
    if meta.len() == 0 {
        bail!("cannot decode image file {p}: the file is empty (0 bytes)");
    }
    decode_reader(BufReader::new(file), limits)
        .map_err(|e| anyhow!("cannot decode image file {p}: {e:#}"))
}

fn decode_reader<R: BufRead + Seek>(mut reader: R, limits: &ImageLimits) -> Result<RgbImage> {
    // Peek at the first bytes: a PNG's dimensions sit at a fixed offset in IHDR, so they can
    // be checked before any decoder is even constructed.
    let mut head = [0u8; 24];
    let pos = reader.stream_position()?;
    let n = read_up_to(&mut reader, &mut head)?;
    reader.seek(SeekFrom::Start(pos))?;

    let reader = ImageReader::new(reader)
        .with_guessed_format()
        .context("I/O error while reading the image header")?;
    let Some(format) = reader.format() else {
        bail!(
            "not a recognised image format (expected PNG, JPEG, WebP, BMP, GIF or TIFF content)"
        );
    };
    if format == ImageFormat::Png && n == 24 && &head[12..16] == b"IHDR" {
        let w = u32::from_be_bytes([head[16], head[17], head[18], head[19]]);
        let h = u32::from_be_bytes([head[20], head[21], head[22], head[23]]);
        limits.check(w, h, &format)?;
    }

    // Second guard: image::Limits (checked by the decoders themselves).
    let mut reader = reader;
    let mut img_limits = limits.image_limits();
    reader.limits(img_limits.clone());
    let decoder = reader
        .into_decoder()
        .map_err(|e| map_image_error(e, format, limits))?;
    let (w, h) = decoder.dimensions();
    // Generic guard for every format, before any pixel buffer exists.
    limits.check(w, h, &format)?;
    img_limits
        .reserve(decoder.total_bytes())
        .map_err(|e| map_image_error(e, format, limits))?;
    let img = DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(e, format, limits))?;
    Ok(img.into_rgb8())
}

fn read_up_to<R: std::io::Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn map_image_error(e: ImageError, format: ImageFormat, limits: &ImageLimits) -> anyhow::Error {
    match e {
        ImageError::Limits(e) => anyhow!(
            "{format:?} image exceeds the decoding limits (at most {} pixels): {e}",
            limits.max_pixels
        ),
        ImageError::Unsupported(e) => anyhow!("unsupported {format:?} image: {e}"),
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            anyhow!("truncated {format:?} image: unexpected end of data ({e})")
        }
        e => anyhow!("corrupt or truncated {format:?} image: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Normalisation

/// CLIP's per-channel pixel mean (RGB), shared by OpenAI CLIP and open_clip.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel pixel standard deviation (RGB).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Per-channel normalisation `(v / 255 - mean) / std`, computed in `f32` in exactly that order
/// (torchvision's `ToTensor` then `Normalize`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalize {
    /// [`CLIP_MEAN`] / [`CLIP_STD`].
    pub const fn clip() -> Self {
        Self {
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// Normalises one 8-bit value of channel `c`.
    #[inline]
    pub fn apply(&self, c: usize, v: u8) -> f32 {
        (f32::from(v) / 255.0 - self.mean[c]) / self.std[c]
    }
}

impl Default for Normalize {
    fn default() -> Self {
        Self::clip()
    }
}

/// Converts an RGB image to normalised CHW `f32` data (length `3 * width * height`).
pub fn to_chw(img: &RgbImage, norm: &Normalize) -> Vec<f32> {
    let plane = img.width() as usize * img.height() as usize;
    let mut out = vec![0f32; 3 * plane];
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        r[i] = norm.apply(0, px[0]);
        g[i] = norm.apply(1, px[1]);
        b[i] = norm.apply(2, px[2]);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Geometry

/// Output size of torchvision's `Resize(size)` (an int): the shortest side becomes `size`, the
/// other `int(size * long / short)` (truncated). Returns `(width, height)`.
pub fn shortest_side_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    // Integer floor division equals Python's int(size * long / short) for these magnitudes.
    let new_long = (u64::from(size) * u64::from(long) / u64::from(short.max(1))) as u32;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision's `center_crop` offset: `int(round((len - crop) / 2.0))` with Python's
/// round-half-to-even.
fn crop_offset(len: u32, crop: u32) -> u32 {
    let d = len - crop;
    let half = d / 2;
    if d % 2 == 0 || half % 2 == 0 {
        half
    } else {
        half + 1
    }
}

/// Centre crop to `width × height` with torchvision's rounding
/// (`top = int(round((h - height) / 2.0))`, Python rounds halves to even).
///
/// # Panics
/// If the crop is larger than the image (torchvision would pad; we never need that).
pub fn center_crop(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    assert!(
        width <= img.width() && height <= img.height(),
        "center_crop: {width}x{height} crop larger than the {}x{} image",
        img.width(),
        img.height()
    );
    let left = crop_offset(img.width(), width);
    let top = crop_offset(img.height(), height);
    image::imageops::crop_imm(img, left, top, width, height).to_image()
}

// ---------------------------------------------------------------------------------------------
// Pillow-exact bicubic resampling

const PRECISION_BITS: u32 = 32 - 8 - 2;

#[inline]
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point resampling coefficients for one axis (Pillow's `precompute_coeffs` +
/// `normalize_coeffs_8bpc`).
struct Coeffs {
    ksize: usize,
    /// `(first input index, number of taps)` per output index.
    bounds: Vec<(usize, usize)>,
    kk: Vec<i32>,
}

fn precompute_coeffs(in_size: u32, out_size: u32) -> Coeffs {
    const SUPPORT: f64 = 2.0; // bicubic
    // Pillow passes the box as C floats: in0 = 0, in1 = in_size.
    let in0 = 0.0f32;
    let in1 = in_size as f32;
    let scale = f64::from(in1 - in0) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;

    let mut bounds = Vec::with_capacity(out_size as usize);
    let mut kk = vec![0i32; out_size as usize * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size as usize {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        // C `(int)` casts truncate towards zero, like Rust's `as`.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size)) - xmin;
        let (xmin, xmax) = (xmin as usize, xmax.max(0) as usize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = bicubic_filter((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut kk[xx * ksize..(xx + 1) * ksize];
        for x in 0..xmax {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let f = w * f64::from(1u32 << PRECISION_BITS);
            row[x] = if w < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs { ksize, bounds, kk }
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Bicubic resize of an RGB image to `width × height`, bit-exact with Pillow's
/// `Image.resize((width, height), Image.BICUBIC)` (antialiased when downscaling).
///
/// # Panics
/// If `width` or `height` is zero.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    assert!(width > 0 && height > 0, "resize_bicubic: zero output size");
    let (in_w, in_h) = img.dimensions();
    if (in_w, in_h) == (width, height) {
        return img.clone();
    }
    let src = img.as_raw();
    let need_h = width != in_w;
    let need_v = height != in_h;
    let ch = precompute_coeffs(in_w, width);
    let mut cv = precompute_coeffs(in_h, height);

    // Only the input rows used by the vertical pass go through the horizontal pass.
    let ybox_first = cv.bounds[0].0;
    let last = cv.bounds[height as usize - 1];
    let ybox_last = last.0 + last.1;

    let (tmp, tmp_w, tmp_rows): (std::borrow::Cow<[u8]>, usize, usize) = if need_h {
        for b in cv.bounds.iter_mut() {
            b.0 -= ybox_first;
        }
        let rows = ybox_last - ybox_first;
        let in_stride = in_w as usize * 3;
        let out_w = width as usize;
        let mut out = vec![0u8; rows * out_w * 3];
        for y in 0..rows {
            let src_row = &src[(y + ybox_first) * in_stride..(y + ybox_first + 1) * in_stride];
            let dst_row = &mut out[y * out_w * 3..(y + 1) * out_w * 3];
            for (xx, &(xmin, xmax)) in ch.bounds.iter().enumerate() {
                let k = &ch.kk[xx * ch.ksize..xx * ch.ksize + xmax];
                let mut s = [1i32 << (PRECISION_BITS - 1); 3];
                for (x, &kx) in k.iter().enumerate() {
                    let p = &src_row[(x + xmin) * 3..(x + xmin) * 3 + 3];
                    s[0] += i32::from(p[0]) * kx;
                    s[1] += i32::from(p[1]) * kx;
                    s[2] += i32::from(p[2]) * kx;
                }
                dst_row[xx * 3] = clip8(s[0]);
                dst_row[xx * 3 + 1] = clip8(s[1]);
                dst_row[xx * 3 + 2] = clip8(s[2]);
            }
        }
        (out.into(), out_w, rows)
    } else {
        (src.as_slice().into(), in_w as usize, in_h as usize)
    };

    if !need_v {
        debug_assert_eq!(tmp_rows, height as usize);
        return RgbImage::from_raw(width, height, tmp.into_owned())
            .expect("buffer size matches dimensions");
    }

    let stride = tmp_w * 3;
    let mut out = vec![0u8; height as usize * stride];
    let mut acc = vec![0i32; stride];
    for (yy, &(ymin, ymax)) in cv.bounds.iter().enumerate() {
        let k = &cv.kk[yy * cv.ksize..yy * cv.ksize + ymax];
        acc.fill(1i32 << (PRECISION_BITS - 1));
        for (y, &ky) in k.iter().enumerate() {
            let row = &tmp[(y + ymin) * stride..(y + ymin + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i32::from(p) * ky;
            }
        }
        for (o, &a) in out[yy * stride..(yy + 1) * stride].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    RgbImage::from_raw(tmp_w as u32, height, out).expect("buffer size matches dimensions")
}

// ---------------------------------------------------------------------------------------------
// Full transforms

/// The CLIP / open_clip evaluation transform: bicubic resize so that the shortest side is
/// `size` ([`shortest_side_size`], Pillow-exact [`resize_bicubic`]), centre crop
/// `size × size` ([`center_crop`]), then `(v / 255 - mean) / std`. Returns CHW `f32` data of
/// length `3 * size * size`.
///
/// # Panics
/// If `size` is zero.
pub fn clip_preprocess(img: &RgbImage, size: u32, norm: &Normalize) -> Vec<f32> {
    assert!(size > 0, "clip_preprocess: size must be positive");
    let (w, h) = shortest_side_size(img.width(), img.height(), size);
    let resized = resize_bicubic(img, w, h);
    let cropped = if (w, h) == (size, size) {
        resized
    } else {
        center_crop(&resized, size, size)
    };
    to_chw(&cropped, norm)
}

/// The WinCLIP / anomalib transform: bicubic resize straight to `size × size` (aspect ratio not
/// kept, Pillow-exact [`resize_bicubic`]), then `(v / 255 - mean) / std`. Returns CHW `f32`
/// data of length `3 * size * size`.
///
/// # Panics
/// If `size` is zero.
pub fn resize_preprocess(img: &RgbImage, size: u32, norm: &Normalize) -> Vec<f32> {
    assert!(size > 0, "resize_preprocess: size must be positive");
    to_chw(&resize_bicubic(img, size, size), norm)
}

// ---------------------------------------------------------------------------------------------
// Precomputed pixel tensors

/// Name of the tensor read by [`pixels_from_safetensors`].
pub const PIXEL_VALUES: &str = "pixel_values";

/// Reads the `pixel_values` tensor of shape `[N, 3, H, W]` (normally `N = 1`) from a
/// safetensors file, converting f32 / f16 / bf16 / f64 to `f32`. Used by parity tests that feed
/// exactly the reference implementation's pixels, bypassing decoding and resampling.
pub fn pixels_from_safetensors(bytes: &[u8]) -> Result<(Vec<f32>, [usize; 4])> {
    use safetensors::{Dtype, SafeTensors};
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow!("not a valid safetensors file: {e}"))?;
    let t = st.tensor(PIXEL_VALUES).map_err(|_| {
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        anyhow!("no tensor named `{PIXEL_VALUES}` in safetensors file (it has: {names:?})")
    })?;
    let shape = t.shape();
    let &[n, c, h, w] = shape else {
        bail!("`{PIXEL_VALUES}` must have rank 4 [N, 3, H, W], got shape {shape:?}");
    };
    if c != 3 {
        bail!("`{PIXEL_VALUES}` must have 3 channels, got shape {shape:?}");
    }
    if n == 0 || h == 0 || w == 0 {
        bail!("`{PIXEL_VALUES}` has an empty dimension: shape {shape:?}");
    }
    let data = t.data();
    let values: Vec<f32> = match t.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => bail!("`{PIXEL_VALUES}` must be f32, f16, bf16 or f64, got {other:?}"),
    };
    if values.len() != n * c * h * w {
        bail!(
            "`{PIXEL_VALUES}` holds {} values, shape {shape:?} needs {}",
            values.len(),
            n * c * h * w
        );
    }
    Ok((values, [n, c, h, w]))
}

/// [`pixels_from_safetensors`] on a file; every error message contains the path.
pub fn pixels_from_safetensors_file(path: &Path) -> Result<(Vec<f32>, [usize; 4])> {
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow!("cannot read pixel file {}: {e}", path.display()))?;
    pixels_from_safetensors(&bytes)
        .map_err(|e| anyhow!("cannot load pixels from {}: {e:#}", path.display()))
}
