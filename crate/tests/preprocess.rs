//! Tests for `anoscope::preprocess`: decoding (formats, colour conversions, limits, error
//! messages), Pillow-exact bicubic resampling, CLIP geometry / normalisation, and the
//! safetensors pixel reader.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use anoscope::preprocess::{
    center_crop, clip_preprocess, decode_image, load_image, pixels_from_safetensors, pixels_from_safetensors_file,
    resize_bicubic, resize_bicubic_pillow12, resize_preprocess, shortest_side_size, to_chw, ImageLimits, Normalize,
    CLIP_MEAN, CLIP_STD, MAX_IMAGE_PIXELS,
};
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, RgbImage, Rgba};

// ---------------------------------------------------------------------------------------------
// helpers

fn images_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images")
}

/// A fresh, empty scratch directory for one test, removed when dropped.
fn scratch(test: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("anoscope-preprocess-{test}-"))
        .tempdir()
        .unwrap()
}

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn err_string<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error message {msg:?} should contain {p:?}");
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

fn png_chunk(out: &mut Vec<u8>, ty: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = ty.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// zlib stream made of stored (uncompressed) deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(65535).collect()
    };
    for (i, c) in chunks.iter().enumerate() {
        out.push(u8::from(i + 1 == chunks.len()));
        out.extend_from_slice(&(c.len() as u16).to_le_bytes());
        out.extend_from_slice(&(!(c.len() as u16)).to_le_bytes());
        out.extend_from_slice(c);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

fn ihdr(w: u32, h: u32, bit_depth: u8, color_type: u8) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&w.to_be_bytes());
    d.extend_from_slice(&h.to_be_bytes());
    d.extend_from_slice(&[bit_depth, color_type, 0, 0, 0]);
    d
}

const PNG_SIG: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1A, b'\n'];

/// Hand-made 8-bit palette PNG (colour type 3) with an optional tRNS chunk.
fn palette_png(w: u32, h: u32, palette: &[[u8; 3]], trns: Option<&[u8]>, idx: &[u8]) -> Vec<u8> {
    let mut png = PNG_SIG.to_vec();
    png_chunk(&mut png, b"IHDR", &ihdr(w, h, 8, 3));
    png_chunk(&mut png, b"PLTE", &palette.concat());
    if let Some(t) = trns {
        png_chunk(&mut png, b"tRNS", t);
    }
    let mut raw = Vec::new();
    for row in idx.chunks(w as usize) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    png_chunk(&mut png, b"IDAT", &zlib_stored(&raw));
    png_chunk(&mut png, b"IEND", &[]);
    png
}

/// Deterministic high-frequency test pattern (same formula as the Pillow reference below).
fn pattern(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            ((x * 53 + y * 29 + 7) % 256) as u8,
            ((x * x * 13 + y * 101) % 256) as u8,
            (((x ^ y) * 41 + 3) % 256) as u8,
        ])
    })
}

fn norm_value(c: usize, v: u8) -> f32 {
    (v as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]
}

// ---------------------------------------------------------------------------------------------
// Pillow-exact resampling

/// Expected outputs of `PIL.Image.resize(size, Image.BICUBIC)` (Pillow 13.0.0) on
/// `pattern(7, 5)`, computed once with Python.
#[test]
fn resize_bicubic_matches_pillow_bit_exactly() {
    let src = pattern(7, 5);
    let cases: [((u32, u32), &[u8]); 4] = [
        (
            (3, 2),
            &[
                73, 102, 42, 174, 141, 118, 88, 116, 165, 145, 137, 130, 146, 139, 63, 113, 114, 125,
            ],
        ),
        (
            (11, 8),
            &[
                1, 0, 0, 24, 0, 18, 63, 8, 51, 97, 32, 72, 130, 65, 99, 164, 110, 129, 217, 197, 151, 173, 187, 176,
                24, 65, 206, 34, 148, 245, 71, 234, 255, 13, 34, 17, 36, 38, 14, 75, 50, 27, 109, 73, 88, 141, 117,
                112, 176, 165, 112, 239, 155, 157, 196, 134, 191, 37, 117, 199, 45, 132, 175, 83, 148, 155, 34, 107,
                49, 57, 111, 23, 96, 123, 12, 130, 147, 98, 163, 187, 112, 197, 215, 82, 243, 100, 170, 198, 70, 212,
                56, 164, 169, 67, 108, 83, 104, 49, 24, 52, 188, 71, 75, 192, 85, 114, 205, 91, 148, 240, 47, 189, 197,
                30, 215, 101, 57, 130, 108, 205, 67, 99, 221, 63, 54, 63, 95, 99, 81, 122, 142, 125, 70, 163, 96, 93,
                167, 114, 132, 180, 113, 165, 213, 24, 214, 171, 0, 242, 84, 29, 85, 164, 148, 10, 162, 180, 76, 34,
                92, 118, 73, 144, 140, 128, 199, 88, 49, 126, 111, 53, 109, 150, 65, 79, 184, 89, 48, 231, 122, 21,
                255, 164, 4, 116, 239, 13, 43, 232, 93, 95, 122, 236, 135, 42, 236, 158, 4, 207, 109, 99, 153, 132,
                103, 154, 172, 116, 159, 216, 150, 177, 191, 126, 122, 117, 75, 20, 77, 132, 0, 76, 180, 33, 117, 187,
                128, 156, 110, 142, 179, 50, 136, 121, 154, 167, 144, 158, 187, 184, 171, 222, 236, 214, 255, 158, 137,
                193, 10, 0, 36, 44, 40, 1, 96, 129, 3, 129, 221, 26, 168, 165, 58, 191, 103, 80,
            ],
        ),
        (
            (7, 3),
            &[
                17, 44, 18, 70, 57, 24, 123, 96, 105, 176, 161, 111, 237, 137, 189, 26, 113, 188, 79, 149, 154, 65,
                148, 85, 118, 161, 86, 171, 200, 31, 234, 126, 41, 75, 154, 198, 74, 69, 113, 127, 95, 144, 113, 104,
                152, 166, 117, 159, 219, 156, 161, 122, 72, 19, 61, 171, 11, 122, 173, 132, 175, 60, 141,
            ],
        ),
        (
            (4, 5),
            &[
                28, 3, 19, 123, 63, 88, 172, 158, 164, 45, 150, 233, 57, 104, 26, 152, 169, 88, 201, 126, 173, 74, 103,
                98, 86, 215, 103, 186, 195, 33, 87, 93, 150, 96, 96, 113, 115, 50, 110, 215, 110, 32, 116, 214, 61,
                125, 56, 230, 154, 161, 193, 163, 135, 185, 64, 92, 9, 164, 159, 66,
            ],
        ),
    ];
    for ((w, h), expected) in cases {
        let out = resize_bicubic(&src, w, h);
        assert_eq!(out.dimensions(), (w, h));
        assert_eq!(out.as_raw().as_slice(), expected, "7x5 -> {w}x{h}");
    }
    // Same size: identity.
    assert_eq!(resize_bicubic(&src, 7, 5), src);
    // Pillow ≤ 12 does the same for these (horizontal pass first in both).
    assert_eq!(resize_bicubic_pillow12(&src, 3, 2), resize_bicubic(&src, 3, 2));
}

/// Pillow ≥ 13 runs the vertical pass first when the height shrinks by more than twice what the
/// width does (here 12 -> 3 vs 5 -> 4); Pillow ≤ 12 always ran the horizontal pass first. The
/// intermediate image is rounded to u8, so the two orders differ by 1 level in a few pixels.
#[test]
fn resize_bicubic_pass_order_matches_pillow_13_and_12() {
    let src = pattern(5, 12);
    let pillow13: [u8; 36] = [
        63, 103, 77, 135, 128, 79, 186, 137, 64, 140, 148, 135, 169, 141, 158, 125, 122, 145, 84, 125, 158, 115, 139,
        94, 89, 145, 130, 86, 148, 146, 159, 112, 146, 187, 132, 112,
    ];
    // Pillow 13 `im.resize((4, 12)).resize((4, 3))` == Pillow ≤ 12 `im.resize((4, 3))`.
    let pillow12: [u8; 36] = [
        62, 103, 77, 134, 128, 79, 186, 137, 64, 140, 148, 135, 169, 140, 158, 125, 122, 145, 84, 125, 158, 115, 138,
        94, 88, 145, 130, 86, 149, 145, 160, 112, 146, 187, 132, 112,
    ];
    assert_eq!(resize_bicubic(&src, 4, 3).as_raw().as_slice(), pillow13);
    assert_eq!(resize_bicubic_pillow12(&src, 4, 3).as_raw().as_slice(), pillow12);
}

/// `tests/images/bottle_64_pil_bicubic_40x24.png` is Pillow's bicubic resize of
/// `tests/images/bottle_broken_large_000_64.png` to 40x24.
#[test]
fn resize_bicubic_matches_pillow_on_real_image() {
    let limits = ImageLimits::default();
    let src = load_image(&images_dir().join("bottle_broken_large_000_64.png"), &limits).unwrap();
    assert_eq!(src.dimensions(), (64, 64));
    let reference = load_image(&images_dir().join("bottle_64_pil_bicubic_40x24.png"), &limits).unwrap();
    let ours = resize_bicubic(&src, 40, 24);
    let max_diff = ours
        .as_raw()
        .iter()
        .zip(reference.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert_eq!(max_diff, 0, "max abs difference to Pillow");
}

#[test]
fn resize_keeps_constant_images_constant() {
    let src = RgbImage::from_pixel(37, 23, Rgb([0, 255, 131]));
    for (w, h) in [(5, 3), (224, 224), (37, 100), (1, 1)] {
        let out = resize_bicubic(&src, w, h);
        assert!(out.pixels().all(|p| p.0 == [0, 255, 131]), "{w}x{h}");
    }
}

// ---------------------------------------------------------------------------------------------
// geometry + normalisation

#[test]
fn shortest_side_sizes_follow_torchvision() {
    assert_eq!(shortest_side_size(640, 480, 224), (298, 224)); // int(224*640/480) = 298
    assert_eq!(shortest_side_size(480, 640, 224), (224, 298));
    assert_eq!(shortest_side_size(900, 900, 240), (240, 240));
    assert_eq!(shortest_side_size(40, 20, 10), (20, 10));
    assert_eq!(shortest_side_size(3, 1000, 224), (224, 74666));
}

#[test]
fn center_crop_rounds_half_to_even_like_torchvision() {
    // Red channel = x coordinate, green = y coordinate.
    let img = |w, h| RgbImage::from_fn(w, h, |x, y| Rgb([x as u8, y as u8, 0]));
    // (len - crop) / 2 = 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4, 1.0 -> 1
    for (w, left) in [(11, 0), (13, 2), (15, 2), (17, 4), (12, 1), (10, 0)] {
        let c = center_crop(&img(w, 10), 10, 10);
        assert_eq!(c.dimensions(), (10, 10));
        assert_eq!(c.get_pixel(0, 0).0, [left, 0, 0], "width {w}");
        assert_eq!(c.get_pixel(9, 9).0, [left + 9, 9, 0], "width {w}");
    }
    let c = center_crop(&img(10, 13), 10, 10);
    assert_eq!(c.get_pixel(0, 0).0, [0, 2, 0]);
}

/// 40x20 image, left half red, right half blue. CLIP transform to 10: resize to 20x10 (the
/// colour boundary falls between resized columns 9 and 10), then crop columns 5..15.
#[test]
fn clip_preprocess_geometry_left_right_pattern() {
    let red = [255u8, 0, 0];
    let blue = [0u8, 0, 255];
    let src = RgbImage::from_fn(40, 20, |x, _| Rgb(if x < 20 { red } else { blue }));
    let norm = Normalize::clip();
    let out = clip_preprocess(&src, 10, &norm);
    assert_eq!(out.len(), 3 * 10 * 10);
    let at = |c: usize, y: usize, x: usize| out[c * 100 + y * 10 + x];
    for y in 0..10 {
        // Resized columns 5..=7 only see red input columns (taps 7..=18), 12..=14 only blue.
        for x in 0..3 {
            for c in 0..3 {
                assert_eq!(at(c, y, x), norm_value(c, red[c]), "({c},{y},{x})");
                assert_eq!(at(c, y, 9 - x), norm_value(c, blue[c]), "({c},{y},{})", 9 - x);
            }
        }
        // Red decreases and blue increases across the boundary (columns 4 and 5 straddle it).
        for x in 3..9 {
            assert!(at(0, y, x + 1) <= at(0, y, x), "red not decreasing at {x}");
            assert!(at(2, y, x + 1) >= at(2, y, x), "blue not increasing at {x}");
        }
        assert!(at(0, y, 4) > at(0, y, 5));
        // Mirror symmetry of the pattern survives (red of x == blue of 9-x).
        for x in 0..10 {
            let r = at(0, y, x) * CLIP_STD[0] + CLIP_MEAN[0];
            let b = at(2, y, 9 - x) * CLIP_STD[2] + CLIP_MEAN[2];
            assert!((r - b).abs() < 1e-5, "asymmetric at {x}: {r} vs {b}");
        }
    }
    // Same picture upright (20x40): shortest side is the width now, crop is vertical.
    let tall = RgbImage::from_fn(20, 40, |_, y| Rgb(if y < 20 { red } else { blue }));
    let out = clip_preprocess(&tall, 10, &norm);
    assert_eq!(out[0], norm_value(0, 255)); // top-left red
    assert_eq!(out[2 * 100 + 99], norm_value(2, 255)); // bottom-right blue
}

/// `clip_preprocess` only computes the crop window; it must equal resize-then-crop exactly,
/// for both pass orders (20x200 -> 10x100 runs the vertical pass first in Pillow 13).
#[test]
fn clip_preprocess_equals_resize_then_crop() {
    let norm = Normalize::clip();
    for (w, h, size) in [(20, 200, 10), (200, 20, 10), (31, 77, 12), (77, 31, 13), (5, 9, 16)] {
        let src = pattern(w, h);
        let (rw, rh) = shortest_side_size(w, h, size);
        let full = center_crop(&resize_bicubic(&src, rw, rh), size, size);
        assert_eq!(
            clip_preprocess(&src, size, &norm),
            to_chw(&full, &norm),
            "{w}x{h} -> {size}"
        );
    }
    // Extreme aspect ratio: 1x60000 -> (shortest side 16) 16x960000, only 16x16 computed.
    let thin = RgbImage::from_pixel(1, 60_000, Rgb([9, 99, 199]));
    let out = clip_preprocess(&thin, 16, &norm);
    assert_eq!(out.len(), 3 * 16 * 16);
    assert_eq!(out[0], norm_value(0, 9));
    assert_eq!(out[3 * 256 - 1], norm_value(2, 199));
}

#[test]
#[allow(clippy::excessive_precision)]
fn normalisation_of_constant_image_is_exact() {
    let v = [10u8, 128, 250];
    let src = RgbImage::from_pixel(30, 20, Rgb(v));
    let norm = Normalize::clip();
    let clip = clip_preprocess(&src, 8, &norm);
    let plain = resize_preprocess(&src, 8, &norm);
    assert_eq!(clip.len(), 3 * 64);
    assert_eq!(plain.len(), 3 * 64);
    for c in 0..3 {
        let expected = (v[c] as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
        for i in 0..64 {
            assert_eq!(clip[c * 64 + i], expected);
            assert_eq!(plain[c * 64 + i], expected);
        }
    }
    // Spot values computed independently in float64: (128/255 - 0.4578275) / 0.26130258 and
    // (10/255 - 0.48145466) / 0.26862954.
    assert!((clip[64] - 0.168_897_24).abs() < 1e-6, "{}", clip[64]);
    assert!((clip[0] - (-1.646_278_3)).abs() < 1e-6, "{}", clip[0]);
    // A custom normalisation.
    let n = Normalize {
        mean: [0.5; 3],
        std: [0.5; 3],
    };
    let out = to_chw(&RgbImage::from_pixel(2, 2, Rgb([0, 255, 51])), &n);
    assert_eq!(&out[..4], &[-1.0; 4]);
    assert_eq!(&out[4..8], &[1.0; 4]);
    assert!((out[8] - (-0.6)).abs() < 1e-6);
    assert_eq!(Normalize::clip().mean, [0.481_454_66, 0.457_827_5, 0.408_210_73]);
    assert_eq!(Normalize::clip().std, [0.268_629_54, 0.261_302_58, 0.275_777_11]);
}

#[test]
fn resize_preprocess_ignores_aspect_ratio_and_is_chw() {
    let src = pattern(7, 5);
    let norm = Normalize::clip();
    let out = resize_preprocess(&src, 11, &norm);
    let resized = resize_bicubic(&src, 11, 11);
    assert_eq!(out, to_chw(&resized, &norm));
    // CHW layout: the G plane starts after the full R plane.
    let p = resized.get_pixel(3, 2).0;
    for c in 0..3 {
        assert_eq!(out[c * 121 + 2 * 11 + 3], norm_value(c, p[c]));
    }
    // Already the right size: CLIP transform is just the normalisation.
    let sq = pattern(9, 9);
    assert_eq!(clip_preprocess(&sq, 9, &norm), to_chw(&sq, &norm));
}

// ---------------------------------------------------------------------------------------------
// decoding: formats and colour conversions

#[test]
fn decodes_grayscale_and_gray_alpha() {
    let l = ImageBuffer::from_raw(3, 1, vec![0u8, 77, 255]).unwrap();
    let rgb = decode_image(
        &encode(DynamicImage::ImageLuma8(l), ImageFormat::Png),
        &ImageLimits::default(),
    )
    .unwrap();
    let px: Vec<[u8; 3]> = rgb.pixels().map(|p| p.0).collect();
    assert_eq!(px, [[0, 0, 0], [77, 77, 77], [255, 255, 255]]);

    let la: ImageBuffer<LumaA<u8>, _> = ImageBuffer::from_raw(2, 1, vec![200u8, 0, 30, 128]).unwrap();
    let rgb = decode_image(
        &encode(DynamicImage::ImageLumaA8(la), ImageFormat::Png),
        &ImageLimits::default(),
    )
    .unwrap();
    let px: Vec<[u8; 3]> = rgb.pixels().map(|p| p.0).collect();
    // alpha dropped, not composited
    assert_eq!(px, [[200, 200, 200], [30, 30, 30]]);
}

#[test]
fn decodes_rgba_by_dropping_alpha() {
    let rgba: ImageBuffer<Rgba<u8>, _> = ImageBuffer::from_raw(2, 1, vec![10u8, 20, 30, 0, 250, 128, 1, 77]).unwrap();
    let rgb = decode_image(
        &encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png),
        &ImageLimits::default(),
    )
    .unwrap();
    assert_eq!(rgb.as_raw(), &[10, 20, 30, 250, 128, 1]);
}

#[test]
fn decodes_16_bit_with_rounding_to_8_bit() {
    let vals: Vec<u16> = vec![0, 1000, 25700, 32896, 65535];
    let expected: Vec<u8> = vec![0, 4, 100, 128, 255]; // round(v * 255 / 65535)
    let l16: ImageBuffer<Luma<u16>, _> = ImageBuffer::from_raw(5, 1, vals.clone()).unwrap();
    let rgb = decode_image(
        &encode(DynamicImage::ImageLuma16(l16), ImageFormat::Png),
        &ImageLimits::default(),
    )
    .unwrap();
    let got: Vec<u8> = rgb.pixels().map(|p| p.0[0]).collect();
    assert_eq!(got, expected);
    assert!(rgb.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));

    let mut rgb16 = Vec::new();
    for &v in &vals {
        rgb16.extend_from_slice(&[v, 65535 - v, 257 * 3]);
    }
    let img: ImageBuffer<Rgb<u16>, _> = ImageBuffer::from_raw(5, 1, rgb16).unwrap();
    let rgb = decode_image(
        &encode(DynamicImage::ImageRgb16(img), ImageFormat::Png),
        &ImageLimits::default(),
    )
    .unwrap();
    for (i, p) in rgb.pixels().enumerate() {
        assert_eq!(p.0, [expected[i], 255 - expected[i], 3], "pixel {i}");
    }
}

#[test]
fn decodes_palette_png_with_transparency() {
    let palette = [[255u8, 0, 0], [0, 128, 0], [10, 20, 30]];
    let idx = [0u8, 1, 2, 2, 1, 0];
    let png = palette_png(3, 2, &palette, Some(&[0, 128]), &idx);
    let rgb = decode_image(&png, &ImageLimits::default()).unwrap();
    assert_eq!(rgb.dimensions(), (3, 2));
    let px: Vec<[u8; 3]> = rgb.pixels().map(|p| p.0).collect();
    let expected: Vec<[u8; 3]> = idx.iter().map(|&i| palette[i as usize]).collect();
    assert_eq!(px, expected);
    // Without tRNS as well.
    let png = palette_png(3, 2, &palette, None, &idx);
    assert_eq!(decode_image(&png, &ImageLimits::default()).unwrap(), rgb);
}

#[test]
fn decodes_other_formats_by_content_not_name() {
    let src = pattern(9, 7);
    for format in [ImageFormat::Bmp, ImageFormat::Tiff, ImageFormat::WebP] {
        let bytes = encode(DynamicImage::ImageRgb8(src.clone()), format);
        let rgb = decode_image(&bytes, &ImageLimits::default()).unwrap();
        assert_eq!(rgb, src, "{format:?} (lossless) round trip");
    }
    let jpeg = encode(DynamicImage::ImageRgb8(src.clone()), ImageFormat::Jpeg);
    assert_eq!(
        decode_image(&jpeg, &ImageLimits::default()).unwrap().dimensions(),
        (9, 7)
    );
    // A PNG saved under a .jpg name is still decoded as a PNG.
    let scratch_dir = scratch("by_content");
    let dir = scratch_dir.path().to_path_buf();
    let path = dir.join("really_a_png.jpg");
    std::fs::write(&path, encode(DynamicImage::ImageRgb8(src.clone()), ImageFormat::Png)).unwrap();
    assert_eq!(load_image(&path, &ImageLimits::default()).unwrap(), src);
}

// ---------------------------------------------------------------------------------------------
// decoding: limits and errors

/// A PNG whose IHDR claims `w x h` followed by a truncated IDAT.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut png = PNG_SIG.to_vec();
    png_chunk(&mut png, b"IHDR", &ihdr(w, h, 8, 2));
    // IDAT chunk announcing 1000 bytes but holding only a few.
    png.extend_from_slice(&1000u32.to_be_bytes());
    png.extend_from_slice(b"IDAT\x78\x01\x00");
    png
}

#[test]
fn rejects_oversized_png_header_without_decoding() {
    let png = png_header_only(30000, 30000);
    let msg = err_string(decode_image(&png, &ImageLimits::default()));
    assert_contains(
        &msg,
        &[
            "too large",
            "30000x30000",
            "900000000",
            &MAX_IMAGE_PIXELS.to_string(),
            "limit",
        ],
    );
    assert_eq!(MAX_IMAGE_PIXELS, 67_108_864);
    assert_eq!(ImageLimits::default().max_pixels(), MAX_IMAGE_PIXELS);

    let scratch_dir = scratch("oversized");
    let dir = scratch_dir.path().to_path_buf();
    let path = dir.join("huge.png");
    std::fs::write(&path, &png).unwrap();
    let msg = err_string(load_image(&path, &ImageLimits::default()));
    assert_contains(&msg, &["huge.png", "too large", "limit"]);
}

#[test]
fn rejects_oversized_bmp_header_without_decoding() {
    // 54-byte BMP header (24-bit, uncompressed) claiming 30000x30000, no pixel data.
    let mut bmp = Vec::new();
    bmp.extend_from_slice(b"BM");
    bmp.extend_from_slice(&(54u32 + 30000 * 30000 * 3).to_le_bytes());
    bmp.extend_from_slice(&[0; 4]);
    bmp.extend_from_slice(&54u32.to_le_bytes());
    bmp.extend_from_slice(&40u32.to_le_bytes());
    bmp.extend_from_slice(&30000i32.to_le_bytes());
    bmp.extend_from_slice(&30000i32.to_le_bytes());
    bmp.extend_from_slice(&1u16.to_le_bytes());
    bmp.extend_from_slice(&24u16.to_le_bytes());
    bmp.extend_from_slice(&[0; 24]);
    let msg = err_string(decode_image(&bmp, &ImageLimits::default()));
    assert_contains(&msg, &["Bmp", "30000x30000", "limit"]);
}

#[test]
fn custom_pixel_limit_applies_to_every_format() {
    let src = pattern(40, 20); // 800 pixels
    for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Bmp, ImageFormat::Gif] {
        let bytes = encode(DynamicImage::ImageRgb8(src.clone()), format);
        let msg = err_string(decode_image(&bytes, &ImageLimits::new(799)));
        assert_contains(&msg, &["40x20", "800 pixels", "limit of 799 pixels"]);
        // Exactly at the limit is fine.
        let ok = decode_image(&bytes, &ImageLimits::new(800)).unwrap();
        assert_eq!(ok.dimensions(), (40, 20), "{format:?}");
    }
}

#[test]
fn rejects_zero_sized_png() {
    let mut png = PNG_SIG.to_vec();
    png_chunk(&mut png, b"IHDR", &ihdr(0, 5, 8, 2));
    png_chunk(&mut png, b"IDAT", &zlib_stored(&[]));
    png_chunk(&mut png, b"IEND", &[]);
    let msg = err_string(decode_image(&png, &ImageLimits::default()));
    assert_contains(&msg, &["zero width or height", "0x5"]);
}

#[test]
fn rejects_non_images_empty_and_truncated_input() {
    let limits = ImageLimits::default();
    let msg = err_string(decode_image(b"hello, I am not a picture\n", &limits));
    assert_contains(&msg, &["not a recognised image format"]);
    let msg = err_string(decode_image(b"", &limits));
    assert_contains(&msg, &["empty", "0 bytes"]);

    // Noise does not compress, so half the file is half the pixel data.
    let noise = RgbImage::from_fn(64, 64, |x, y| {
        let v = (x * 7919 + y * 104_729).wrapping_mul(2_654_435_761) >> 8;
        Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
    });
    let png = encode(DynamicImage::ImageRgb8(noise), ImageFormat::Png);
    let msg = err_string(decode_image(&png[..png.len() / 2], &limits));
    assert_contains(&msg, &["truncated", "Png"]);
    // Corrupt: valid header, garbage data.
    let mut bad = png.clone();
    for b in &mut bad[100..200] {
        *b ^= 0x5A;
    }
    let msg = err_string(decode_image(&bad, &limits));
    assert_contains(&msg, &["Png"]);
    assert!(msg.contains("corrupt") || msg.contains("truncated"), "{msg}");
}

#[test]
fn path_errors_name_the_file_and_the_problem() {
    let limits = ImageLimits::default();
    let scratch_dir = scratch("path_errors");
    let dir = scratch_dir.path().to_path_buf();

    let missing = dir.join("no_such_image.png");
    let msg = err_string(load_image(&missing, &limits));
    assert_contains(&msg, &["no_such_image.png", "No such file"]);

    let empty = dir.join("empty_file.png");
    std::fs::write(&empty, b"").unwrap();
    let msg = err_string(load_image(&empty, &limits));
    assert_contains(&msg, &["empty_file.png", "empty", "0 bytes"]);

    let text = dir.join("notes_really_text.png");
    std::fs::write(&text, b"just some text, not a PNG at all\n").unwrap();
    let msg = err_string(load_image(&text, &limits));
    assert_contains(&msg, &["notes_really_text.png", "not a recognised image format"]);

    let png = encode(DynamicImage::ImageRgb8(pattern(64, 64)), ImageFormat::Png);
    let cut = dir.join("cut_in_half.png");
    std::fs::write(&cut, &png[..png.len() / 2]).unwrap();
    let msg = err_string(load_image(&cut, &limits));
    assert_contains(&msg, &["cut_in_half.png", "truncated"]);

    let msg = err_string(load_image(&dir, &limits));
    assert_contains(&msg, &[&dir.display().to_string(), "directory"]);

    let ok = dir.join("fine.png");
    std::fs::write(&ok, &png).unwrap();
    assert_eq!(load_image(&ok, &limits).unwrap(), pattern(64, 64));
}

// ---------------------------------------------------------------------------------------------
// safetensors pixels

fn st_bytes(name: &str, dtype: safetensors::Dtype, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let view = safetensors::tensor::TensorView::new(dtype, shape.to_vec(), data).unwrap();
    safetensors::serialize([(name, view)], None).unwrap()
}

#[test]
fn pixels_from_safetensors_round_trip_f32_f16_bf16() {
    use safetensors::Dtype;
    let shape = [1usize, 3, 2, 4];
    let values: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 2.0).collect();

    let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let (got, s) = pixels_from_safetensors(&st_bytes("pixel_values", Dtype::F32, &shape, &f32_bytes)).unwrap();
    assert_eq!(s, shape);
    assert_eq!(got, values);

    // Multiples of 0.25 in [-2, 3.75] are exact in f16 and bf16.
    let f16_bytes: Vec<u8> = values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let (got, s) = pixels_from_safetensors(&st_bytes("pixel_values", Dtype::F16, &shape, &f16_bytes)).unwrap();
    assert_eq!(s, shape);
    assert_eq!(got, values);
    let v = [0.1f32, -1.7, 2.5];
    let bytes: Vec<u8> = v.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    let (got, _) = pixels_from_safetensors(&st_bytes("pixel_values", Dtype::F16, &[1, 3, 1, 1], &bytes)).unwrap();
    for (g, e) in got.iter().zip(v) {
        assert_eq!(*g, half::f16::from_f32(e).to_f32());
        assert!((g - e).abs() < 1e-3);
    }

    let bf16_bytes: Vec<u8> = values
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    let (got, _) = pixels_from_safetensors(&st_bytes("pixel_values", Dtype::BF16, &shape, &bf16_bytes)).unwrap();
    assert_eq!(got, values);

    // Path variant.
    let scratch_dir = scratch("st_round_trip");
    let dir = scratch_dir.path().to_path_buf();
    let path = dir.join("pixels.safetensors");
    std::fs::write(&path, st_bytes("pixel_values", Dtype::F32, &shape, &f32_bytes)).unwrap();
    assert_eq!(pixels_from_safetensors_file(&path).unwrap(), (values, shape));
}

#[test]
fn pixels_from_safetensors_errors() {
    use safetensors::Dtype;
    let four = |n: usize| vec![0u8; n * 4];
    let msg = err_string(pixels_from_safetensors(&st_bytes(
        "image",
        Dtype::F32,
        &[1, 3, 2, 2],
        &four(12),
    )));
    assert_contains(&msg, &["pixel_values", "image"]);
    let msg = err_string(pixels_from_safetensors(&st_bytes(
        "pixel_values",
        Dtype::F32,
        &[3, 2, 2],
        &four(12),
    )));
    assert_contains(&msg, &["rank 4", "[3, 2, 2]"]);
    let msg = err_string(pixels_from_safetensors(&st_bytes(
        "pixel_values",
        Dtype::F32,
        &[1, 4, 2, 2],
        &four(16),
    )));
    assert_contains(&msg, &["3 channels", "[1, 4, 2, 2]"]);
    let msg = err_string(pixels_from_safetensors(&st_bytes(
        "pixel_values",
        Dtype::F32,
        &[1, 3, 0, 2],
        &[],
    )));
    assert_contains(&msg, &["empty dimension", "[1, 3, 0, 2]"]);
    let msg = err_string(pixels_from_safetensors(&st_bytes(
        "pixel_values",
        Dtype::U8,
        &[1, 3, 1, 1],
        &[1, 2, 3],
    )));
    assert_contains(&msg, &["f32, f16, bf16", "U8"]);
    let msg = err_string(pixels_from_safetensors(b"definitely not safetensors"));
    assert_contains(&msg, &["not a valid safetensors file"]);

    let scratch_dir = scratch("st_errors");
    let dir = scratch_dir.path().to_path_buf();
    let missing = dir.join("missing_pixels.safetensors");
    let msg = err_string(pixels_from_safetensors_file(&missing));
    assert_contains(&msg, &["missing_pixels.safetensors", "No such file"]);
    let wrong = dir.join("wrong_tensor.safetensors");
    std::fs::write(&wrong, st_bytes("other", Dtype::F32, &[1, 3, 1, 1], &four(3))).unwrap();
    let msg = err_string(pixels_from_safetensors_file(&wrong));
    assert_contains(&msg, &["wrong_tensor.safetensors", "pixel_values"]);
}

// ---------------------------------------------------------------------------------------------
// One-off parity measurement against Pillow / torchvision (needs Python; ignored by default)

/// Compares against references written by this Python script (Pillow + torchvision +
/// open_clip), then prints the max abs differences. Any file with the same tensor naming works:
/// `<stem>.src` (H, W, 3 u8, what Pillow decoded), `<stem>.pil<W>x<H>` (Pillow bicubic resize,
/// u8), `<stem>.clip<S>` / `<stem>.resize<S>` ([1, 3, S, S] f32 after the open_clip /
/// `Resize((S, S))` transforms) and `<stem>.encoded` (file bytes, u8, decoded by Pillow to `src`).
///
/// ```text
/// ANOSCOPE_PIL_REF=/tmp/pil_ref.safetensors \
///   cargo test -p anoscope --test preprocess -- --ignored --nocapture pil_reference_parity
/// ```
///
/// ```python
/// import sys, numpy as np, open_clip
/// from PIL import Image
/// from safetensors.numpy import save_file
/// from torchvision import transforms as T
/// root = '/work/shared/datasets/mvtec_bottle/test/'
/// imgs = {'bottle_bl000': Image.open(root + 'broken_large/000.png').convert('RGB'),
///         'bottle_c003': Image.open(root + 'contamination/003.png').convert('RGB')}
/// imgs['wide_448x301'] = imgs['bottle_c003'].crop((0, 70, 448, 371))
/// imgs['tall_97x150'] = imgs['bottle_bl000'].crop((100, 100, 197, 250))
/// imgs['small_64'] = imgs['bottle_bl000'].resize((64, 64), Image.BICUBIC)
/// mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
/// out = {}
/// for name, im in imgs.items():
///     out[f'{name}.src'] = np.asarray(im, dtype=np.uint8)
///     for (w, h) in [(224, 224), (333, 517), (37, 29)]:
///         out[f'{name}.pil{w}x{h}'] = np.asarray(im.resize((w, h), Image.BICUBIC), dtype=np.uint8)
///     for s in (224, 240, 336):
///         tf = open_clip.image_transform(s, is_train=False, mean=mean, std=std)
///         out[f'{name}.clip{s}'] = tf(im).unsqueeze(0).numpy().astype(np.float32)
///         tf2 = T.Compose([T.Resize((s, s), interpolation=T.InterpolationMode.BICUBIC),
///                          T.ToTensor(), T.Normalize(mean, std)])
///         out[f'{name}.resize{s}'] = tf2(im).unsqueeze(0).numpy().astype(np.float32)
/// save_file(out, sys.argv[1])
/// ```
#[test]
#[ignore = "needs ANOSCOPE_PIL_REF (reference tensors written with Python/Pillow)"]
fn pil_reference_parity() {
    let Ok(path) = std::env::var("ANOSCOPE_PIL_REF") else {
        eprintln!("ANOSCOPE_PIL_REF not set; skipping");
        return;
    };
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let norm = Normalize::clip();
    let (mut worst_px, mut worst_cmr, mut worst_f) = (0u8, 0u8, 0f32);
    for name in names.iter().filter(|n| n.ends_with(".src")) {
        let stem = name.trim_end_matches(".src");
        let t = st.tensor(name).unwrap();
        let (h, w) = (t.shape()[0] as u32, t.shape()[1] as u32);
        let src = RgbImage::from_raw(w, h, t.data().to_vec()).unwrap();
        for other in names.iter().filter(|n| n.starts_with(&format!("{stem}."))) {
            let kind = &other[stem.len() + 1..];
            if kind == "src" {
                continue;
            }
            let r = st.tensor(other).unwrap();
            if kind == "encoded" {
                // `src` is what Pillow decoded from these bytes (e.g. a JPEG).
                let ours = decode_image(r.data(), &ImageLimits::default()).unwrap();
                let d = ours
                    .as_raw()
                    .iter()
                    .zip(src.as_raw())
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap();
                println!("{stem}: max |our decode - Pillow decode| = {d}");
                continue;
            }
            if let Some(size) = kind.strip_prefix("pil") {
                let (ow, oh) = size.split_once('x').unwrap();
                let (ow, oh): (u32, u32) = (ow.parse().unwrap(), oh.parse().unwrap());
                let ours = resize_bicubic(&src, ow, oh);
                let d = ours
                    .as_raw()
                    .iter()
                    .zip(r.data())
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap();
                let cmr = image::imageops::resize(&src, ow, oh, image::imageops::FilterType::CatmullRom);
                let dc = cmr
                    .as_raw()
                    .iter()
                    .zip(r.data())
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap();
                println!("{stem} {w}x{h} -> {ow}x{oh}: max |ours - PIL| = {d}, max |CatmullRom - PIL| = {dc}");
                worst_px = worst_px.max(d);
                worst_cmr = worst_cmr.max(dc);
            } else {
                let (reference, shape) =
                    pixels_from_safetensors(&safetensors::serialize([("pixel_values", r)], None).unwrap()).unwrap();
                let s = shape[2] as u32;
                let ours = if kind.starts_with("clip") {
                    clip_preprocess(&src, s, &norm)
                } else {
                    resize_preprocess(&src, s, &norm)
                };
                let d = ours
                    .iter()
                    .zip(&reference)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                println!("{stem} {kind}: max |ours - torchvision| = {d:e} (normalised units)");
                worst_f = worst_f.max(d);
            }
        }
    }
    println!("WORST: pixels {worst_px}, CatmullRom {worst_cmr}, normalised {worst_f:e}");
    assert_eq!(worst_px, 0);
    assert!(worst_f < 1e-5);
}
