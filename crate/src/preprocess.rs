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
//! * PNG, BMP, TIFF and lossless WebP decode to exactly PIL's pixels. JPEG does not: the `image`
//!   crate uses zune-jpeg, Pillow libjpeg-turbo (different IDCT / chroma upsampling). Measured on
//!   a 448×448 MVTec bottle image saved by Pillow at quality 75/90 (4:2:0) and 95 (4:4:4): max
//!   abs difference 4, 4 and 3 levels. GIF: first frame only; transparent pixels may come out
//!   black where PIL gives the palette colour.
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
//! to 22-bit fixed point, two separable passes, each rounded and clamped to `u8`. Pillow 13
//! (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks and
//! `in_h - out_h > 2 * (in_w - out_w)`, horizontal first otherwise; [`resize_bicubic`] follows
//! that, [`resize_bicubic_pillow12`] always goes horizontal first like Pillow ≤ 12. The two
//! differ by at most 1 level, and only for such strongly height-reducing resizes (for the
//! shortest-side CLIP resize: only when downscaling an image about twice as tall as wide, or
//! taller).
//!
//! **Measured against Pillow 13.0.0 / torchvision 0.29.2 / open_clip 3.3.0** (one-off check,
//! the ignored test `pil_reference_parity` in `crate/tests/preprocess.rs`, not run by default):
//! MVTec AD `bottle` test images (448×448 RGB) plus 448×301, 97×150 and 64×64 crops/resizes of
//! them, each resized to 224×224, 333×517 and 37×29, and through the full open_clip eval
//! transform and a `Resize((s, s))` transform at s = 224, 240, 336; 300 random resizes (noise
//! and smooth images 1–159 px, targets 1–239 px); and 80 random noise images with aspect ratios
//! up to 1:6 through both transforms at s = 8–63: **max abs pixel difference 0**
//! (bit-identical `u8` output) and **0.0** max abs difference of the normalised `f32` tensors. Before the pass
//! order rule above was implemented the 97×150 → 37×29 case differed by 1 level. For
//! comparison, the `image` crate's `imageops::resize(.., FilterType::CatmullRom)` (same kernel
//! family, f32 arithmetic, no intermediate rounding) differs from Pillow by up to 6 levels on
//! the bottle images and up to 30 on random noise.

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read, Seek, SeekFrom};
use std::ops::Range;
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
        l.max_alloc = Some(self.max_pixels.saturating_mul(16).saturating_add(16 << 20));
        l
    }

    fn check(&self, width: u32, height: u32, format: ImageFormat) -> Result<()> {
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

/// An RGB image from canvas / video-frame data: `rgba` holds `width x height` RGBA pixels, row-major
/// (alpha is dropped, not composited). Errors for a zero or over-the-limit size and for a buffer
/// of the wrong length.
pub fn rgb_from_rgba(rgba: &[u8], width: u32, height: u32, limits: &ImageLimits) -> Result<RgbImage> {
    if width == 0 || height == 0 {
        bail!("an image needs a positive width and height, got {width}x{height}");
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        bail!(
            "the image is too large: {width}x{height} = {pixels} pixels exceeds the limit of {} pixels",
            limits.max_pixels
        );
    }
    if rgba.len() as u64 != pixels * 4 {
        bail!(
            "the pixel buffer holds {} bytes, but {width}x{height} RGBA needs {}",
            rgba.len(),
            pixels * 4
        );
    }
    let rgb = rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    RgbImage::from_raw(width, height, rgb).context("pixel buffer")
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
    decode_reader(BufReader::new(file), limits).map_err(|e| anyhow!("cannot decode image file {p}: {e:#}"))
}

fn decode_reader<R: BufRead + Seek>(mut reader: R, limits: &ImageLimits) -> Result<RgbImage> {
    // Peek at the first bytes: a PNG's dimensions sit at a fixed offset in IHDR, so they can
    // be checked before any decoder is even constructed.
    let mut head = [0u8; 24];
    let pos = reader.stream_position()?;
    let n = read_up_to(&mut reader, &mut head)?;
    reader.seek(SeekFrom::Start(pos))?;
    if n >= 3 && head[..3] == [0xFF, 0xD8, 0xFF] {
        // The JPEG decoder fills a truncated scan with grey instead of failing; refuse it as
        // Pillow does ("image file is truncated"): the image would be scored half made-up.
        let complete = jpeg_is_complete(&mut reader).context("I/O error while reading the image")?;
        reader.seek(SeekFrom::Start(pos))?;
        if !complete {
            bail!("truncated Jpeg image: the data ends before the end-of-image marker");
        }
    }

    let mut reader = ImageReader::new(reader)
        .with_guessed_format()
        .context("I/O error while reading the image header")?;
    let Some(format) = reader.format() else {
        bail!("not a recognised image format (expected PNG, JPEG, WebP, BMP, GIF or TIFF content)");
    };
    if format == ImageFormat::Png && n == 24 && &head[12..16] == b"IHDR" {
        let w = u32::from_be_bytes([head[16], head[17], head[18], head[19]]);
        let h = u32::from_be_bytes([head[20], head[21], head[22], head[23]]);
        limits.check(w, h, format)?;
    }

    // Second guard: image::Limits (checked by the decoders themselves).
    let mut img_limits = limits.image_limits();
    reader.limits(img_limits.clone());
    let decoder = reader.into_decoder().map_err(|e| map_image_error(e, format, limits))?;
    let (w, h) = decoder.dimensions();
    // Generic guard for every format, before any pixel buffer exists.
    limits.check(w, h, format)?;
    img_limits
        .reserve(decoder.total_bytes())
        .map_err(|e| map_image_error(e, format, limits))?;
    let img = DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(e, format, limits))?;
    Ok(img.into_rgb8())
}

/// Whether a JPEG stream reaches its end-of-image marker (`FF D9`) after at least one scan:
/// marker segments are skipped by their length, entropy-coded data is scanned for markers
/// (`FF 00` stuffing and `FF D0`–`FF D7` restarts belong to the data). Marker segments inside
/// the scans (progressive JPEG tables) are skipped too.
fn jpeg_is_complete<R: std::io::Read>(r: R) -> std::io::Result<bool> {
    let mut bytes = std::io::BufReader::new(r).bytes();
    let mut next = || bytes.next().transpose();
    let (Some(0xFF), Some(0xD8)) = (next()?, next()?) else {
        return Ok(false);
    };
    let mut in_scan = false;
    let mut seen_scan = false;
    loop {
        // Find the next marker: `FF xx` with xx not 00, not a restart, not another FF.
        let marker = loop {
            let Some(b) = next()? else { return Ok(false) };
            if b != 0xFF {
                if !in_scan {
                    return Ok(false); // garbage between segments
                }
                continue;
            }
            let mut m = next()?;
            while m == Some(0xFF) {
                m = next()?;
            }
            match m {
                None => return Ok(false),
                Some(0x00) | Some(0xD0..=0xD7) if in_scan => continue,
                Some(m) => break m,
            }
        };
        match marker {
            0xD9 => return Ok(seen_scan),
            0x01 | 0xD0..=0xD7 => {}
            _ => {
                let (Some(hi), Some(lo)) = (next()?, next()?) else {
                    return Ok(false);
                };
                let len = u16::from_be_bytes([hi, lo]);
                if len < 2 {
                    return Ok(false);
                }
                for _ in 2..len {
                    if next()?.is_none() {
                        return Ok(false);
                    }
                }
                if marker == 0xDA {
                    in_scan = true;
                    seen_scan = true;
                }
            }
        }
    }
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
#[allow(clippy::excessive_precision)] // the published values, digit for digit
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel pixel standard deviation (RGB).
#[allow(clippy::excessive_precision)] // the published values, digit for digit
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Per-channel normalisation `(v / 255 - mean) / std`, computed in `f32` in exactly that order
/// (torchvision's `ToTensor` then `Normalize`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    /// Per-channel (RGB) mean, on the `[0, 1]` scale.
    pub mean: [f32; 3],
    /// Per-channel (RGB) standard deviation, on the `[0, 1]` scale.
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
    // Integer floor division equals Python's int(size * long / short) for these magnitudes;
    // saturates at u32::MAX for absurd aspect ratios (Pillow would refuse those anyway).
    let new_long = (u64::from(size) * u64::from(long) / u64::from(short.max(1)))
        .try_into()
        .unwrap_or(u32::MAX);
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
    if d.is_multiple_of(2) || half.is_multiple_of(2) {
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

/// Coefficients of the output indices `window` of a resize of `in_size` samples to `out_size`.
fn precompute_coeffs(in_size: u32, out_size: u32, window: Range<u32>) -> Coeffs {
    const SUPPORT: f64 = 2.0; // bicubic
                              // Pillow passes the box as C floats: in0 = 0, in1 = in_size.
    let in0 = 0.0f32;
    let in1 = in_size as f32;
    let scale = f64::from(in1 - in0) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;

    let n = window.len();
    let mut bounds = Vec::with_capacity(n);
    let mut kk = vec![0i32; n * ksize];
    let mut k = vec![0f64; ksize];
    for (row, xx) in kk.chunks_exact_mut(ksize).zip(window) {
        let center = f64::from(in0) + (f64::from(xx) + 0.5) * scale;
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
        for (dst, &w) in row.iter_mut().zip(&k[..xmax]) {
            let w = if ww != 0.0 { w / ww } else { w };
            let f = w * f64::from(1u32 << PRECISION_BITS);
            *dst = if w < 0.0 { (-0.5 + f) as i32 } else { (0.5 + f) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs { ksize, bounds, kk }
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass over rows `rows` of `src` (`src_w` pixels wide); the taps of `c` index
/// source columns `xmin - col_offset ..`. Output: `rows.len()` rows of `c.bounds.len()` pixels.
fn horizontal_pass(src: &[u8], src_w: usize, rows: Range<usize>, col_offset: usize, c: &Coeffs) -> Vec<u8> {
    let out_w = c.bounds.len();
    let in_stride = src_w * 3;
    let mut out = vec![0u8; rows.len() * out_w * 3];
    for (dst_row, y) in out.chunks_exact_mut(out_w * 3).zip(rows) {
        let src_row = &src[y * in_stride..(y + 1) * in_stride];
        for (xx, (&(xmin, n), dst)) in c.bounds.iter().zip(dst_row.chunks_exact_mut(3)).enumerate() {
            let k = &c.kk[xx * c.ksize..xx * c.ksize + n];
            let taps = &src_row[(xmin - col_offset) * 3..(xmin - col_offset + n) * 3];
            let mut s = [1i32 << (PRECISION_BITS - 1); 3];
            for (&kx, p) in k.iter().zip(taps.chunks_exact(3)) {
                s[0] += i32::from(p[0]) * kx;
                s[1] += i32::from(p[1]) * kx;
                s[2] += i32::from(p[2]) * kx;
            }
            dst[0] = clip8(s[0]);
            dst[1] = clip8(s[1]);
            dst[2] = clip8(s[2]);
        }
    }
    out
}

/// Vertical pass over columns `cols` of `src` (`src_w` pixels wide); the taps of `c` index
/// source rows `ymin - row_offset ..`. Output: `c.bounds.len()` rows of `cols.len()` pixels.
fn vertical_pass(src: &[u8], src_w: usize, cols: Range<usize>, row_offset: usize, c: &Coeffs) -> Vec<u8> {
    let in_stride = src_w * 3;
    let (x0, stride) = (cols.start * 3, cols.len() * 3);
    let mut out = vec![0u8; c.bounds.len() * stride];
    let mut acc = vec![0i32; stride];
    for (yy, (&(ymin, n), dst)) in c.bounds.iter().zip(out.chunks_exact_mut(stride)).enumerate() {
        let k = &c.kk[yy * c.ksize..yy * c.ksize + n];
        acc.fill(1i32 << (PRECISION_BITS - 1));
        for (y, &ky) in k.iter().enumerate() {
            let r = (ymin - row_offset + y) * in_stride + x0;
            for (a, &p) in acc.iter_mut().zip(&src[r..r + stride]) {
                *a += i32::from(p) * ky;
            }
        }
        for (o, &a) in dst.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Which pass runs first when both dimensions change.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PassOrder {
    /// Pillow ≥ 13 (python-pillow/Pillow#9549): vertical first iff the height shrinks and
    /// `in_h - out_h > 2 * (in_w - out_w)`, horizontal first otherwise.
    Pillow13,
    /// Pillow ≤ 12: always horizontal first.
    HorizontalFirst,
}

/// The part `cols × rows` of the bicubic resize of `img` to `width × height`, computed without
/// materialising the rest: identical to resizing then cropping, since every output pixel only
/// depends on its own coefficients (and the pass order only on the full sizes).
fn resize_window(
    img: &RgbImage,
    (width, height): (u32, u32),
    cols: Range<u32>,
    rows: Range<u32>,
    order: PassOrder,
) -> RgbImage {
    assert!(width > 0 && height > 0, "resize_bicubic: zero output size");
    assert!(img.width() > 0 && img.height() > 0, "resize_bicubic: empty input image");
    assert!(cols.end <= width && rows.end <= height && !cols.is_empty() && !rows.is_empty());
    let (in_w, in_h) = img.dimensions();
    let (out_w, out_h) = (cols.len() as u32, rows.len() as u32);
    let src = img.as_raw();
    let iw = in_w as usize;
    let as_usize = |r: &Range<u32>| r.start as usize..r.end as usize;
    // Only the source rows (columns) the second pass reads go through the first one.
    let span = |c: &Coeffs| {
        let last = c.bounds[c.bounds.len() - 1];
        c.bounds[0].0..last.0 + last.1
    };
    let out = match (width != in_w, height != in_h) {
        (false, false) => return image::imageops::crop_imm(img, cols.start, rows.start, out_w, out_h).to_image(),
        (true, false) => horizontal_pass(src, iw, as_usize(&rows), 0, &precompute_coeffs(in_w, width, cols)),
        (false, true) => vertical_pass(src, iw, as_usize(&cols), 0, &precompute_coeffs(in_h, height, rows)),
        (true, true) => {
            let ch = precompute_coeffs(in_w, width, cols);
            let cv = precompute_coeffs(in_h, height, rows);
            let vertical_first = order == PassOrder::Pillow13
                && height < in_h
                && i64::from(in_h) - i64::from(height) > 2 * (i64::from(in_w) - i64::from(width));
            if vertical_first {
                let src_cols = span(&ch);
                let (x0, n) = (src_cols.start, src_cols.len());
                let tmp = vertical_pass(src, iw, src_cols, 0, &cv);
                horizontal_pass(&tmp, n, 0..out_h as usize, x0, &ch)
            } else {
                let src_rows = span(&cv);
                let y0 = src_rows.start;
                let tmp = horizontal_pass(src, iw, src_rows, 0, &ch);
                vertical_pass(&tmp, out_w as usize, 0..out_w as usize, y0, &cv)
            }
        }
    };
    RgbImage::from_raw(out_w, out_h, out).expect("buffer size matches dimensions")
}

/// Bicubic resize of an RGB image to `width × height`, bit-exact with Pillow ≥ 13's
/// `Image.resize((width, height), Image.BICUBIC)` (antialiased when downscaling), including
/// its choice of which pass runs first. See [`resize_bicubic_pillow12`] for older Pillow.
///
/// # Panics
/// If `width`, `height` or the image is zero-sized.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize_window(img, (width, height), 0..width, 0..height, PassOrder::Pillow13)
}

/// [`resize_bicubic`] as Pillow ≤ 12 does it: always the horizontal pass first. Differs from
/// [`resize_bicubic`] (by at most 1 level, from the rounding of the intermediate image) only
/// when both sizes change and `in_h - out_h > 2 * (in_w - out_w)` with the height shrinking.
///
/// # Panics
/// If `width`, `height` or the image is zero-sized.
pub fn resize_bicubic_pillow12(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize_window(img, (width, height), 0..width, 0..height, PassOrder::HorizontalFirst)
}

// ---------------------------------------------------------------------------------------------
// Full transforms

/// The CLIP / open_clip evaluation transform: bicubic resize so that the shortest side is
/// `size` ([`shortest_side_size`], Pillow-exact [`resize_bicubic`]), centre crop
/// `size × size` ([`center_crop`]), then `(v / 255 - mean) / std`. Returns CHW `f32` data of
/// length `3 * size * size`. Only the crop window of the resized image is computed, so the
/// cost stays bounded for extreme aspect ratios.
///
/// # Panics
/// If `size` is zero or the image is empty.
pub fn clip_preprocess(img: &RgbImage, size: u32, norm: &Normalize) -> Vec<f32> {
    assert!(size > 0, "clip_preprocess: size must be positive");
    let (w, h) = shortest_side_size(img.width(), img.height(), size);
    // Only the centre crop is computed: a 1×60000 image does not become a 224×13 440 000 one.
    let (left, top) = (crop_offset(w, size), crop_offset(h, size));
    let cropped = resize_window(img, (w, h), left..left + size, top..top + size, PassOrder::Pillow13);
    to_chw(&cropped, norm)
}

/// The WinCLIP / anomalib transform: bicubic resize straight to `size × size` (aspect ratio not
/// kept, Pillow-exact [`resize_bicubic`]), then `(v / 255 - mean) / std`. Returns CHW `f32`
/// data of length `3 * size * size`.
///
/// # Panics
/// If `size` is zero or the image is empty.
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
    use safetensors::SafeTensors;
    let st = SafeTensors::deserialize(bytes).map_err(|e| anyhow!("not a valid safetensors file: {e}"))?;
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
    let values = crate::model::weights::view_to_f32(&t)
        .map_err(|_| anyhow::anyhow!("`{PIXEL_VALUES}` must be f32, f16, bf16 or f64, got {:?}", t.dtype()))?;
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
    let bytes = std::fs::read(path).map_err(|e| anyhow!("cannot read pixel file {}: {e}", path.display()))?;
    pixels_from_safetensors(&bytes).map_err(|e| anyhow!("cannot load pixels from {}: {e:#}", path.display()))
}
