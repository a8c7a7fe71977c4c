//! Tests of `anoscope::render` against worked examples and matplotlib's inferno table.

use anoscope::preprocess::{to_chw, Normalize, CLIP_MEAN, CLIP_STD};
use anoscope::render::{
    colormap, encode_png, heatmap_rgba, map_range, mask_to_rgb, normalized_pixels_to_rgb, overlay, resize_bilinear,
    side_by_side, threshold_outline, Normalization, RangeMode, INFERNO, OUTLINE_COLOR,
};
use image::{Rgb, RgbImage};

/// A deterministic, varied test picture.
fn test_image(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 37 + y * 11) as u8,
            (x * 5 + y * 53 + 7) as u8,
            ((x ^ y) * 29 + 100) as u8,
        ])
    })
}

fn assert_close(a: f32, b: f32, tol: f32) {
    assert!((a - b).abs() <= tol, "{a} vs {b}");
}

// ---------------------------------------------------------------------------------------------
// Colormap

#[test]
fn colormap_endpoints_and_midpoint_match_matplotlib_inferno() {
    // round(255 * matplotlib.colormaps["inferno"].colors[i])
    assert_eq!(colormap(0.0), [0, 0, 4]);
    assert_eq!(colormap(1.0), [252, 255, 164]);
    // matplotlib (`colormaps["inferno"](v)`) looks up entry floor(v * 256): 128 for 0.5
    assert_eq!(colormap(0.5), [188, 55, 84]);
    assert_eq!(colormap(0.25), [87, 16, 110]); // entry 64
    assert_eq!(colormap(0.75), [249, 142, 9]); // entry 192
    assert_eq!(colormap(0.7), [243, 120, 25]); // entry 179
}

#[test]
fn colormap_clamps_and_maps_nan_to_black() {
    assert_eq!(colormap(-3.0), colormap(0.0));
    assert_eq!(colormap(7.0), colormap(1.0));
    assert_eq!(colormap(f32::NEG_INFINITY), colormap(0.0));
    assert_eq!(colormap(f32::INFINITY), colormap(1.0));
    assert_eq!(colormap(f32::NAN), [0, 0, 0]);
    // just below 1 is still the last entry's neighbourhood, not out of bounds
    assert_eq!(colormap(0.999_999), INFERNO[255]);
    assert_eq!(colormap(1.0 / 256.0), INFERNO[1]);
}

/// Relative luminance (sRGB linearised, Rec. 709 weights).
fn luminance([r, g, b]: [u8; 3]) -> f64 {
    let lin = |c: u8| {
        let c = f64::from(c) / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)
}

#[test]
fn colormap_luminance_is_strictly_increasing() {
    for i in 1..256 {
        assert!(
            luminance(INFERNO[i]) > luminance(INFERNO[i - 1]),
            "luminance drops at entry {i}: {:?} -> {:?}",
            INFERNO[i - 1],
            INFERNO[i]
        );
    }
    // and the function walks the table in order
    let mut prev = luminance(colormap(0.0));
    for k in 1..=1000 {
        let l = luminance(colormap(k as f32 / 1000.0));
        assert!(l >= prev, "luminance drops at v = {}", k as f32 / 1000.0);
        prev = l;
    }
}

// ---------------------------------------------------------------------------------------------
// Ranges

#[test]
fn map_range_fixed_minmax_and_percentile() {
    let map = [3.0, f32::NAN, 1.0, 4.0, 1.0, f32::INFINITY, 5.0, 9.0, 2.0, 6.0];
    assert_eq!(
        map_range(&map, RangeMode::Fixed(0.5, 2.5)),
        Normalization { lo: 0.5, hi: 2.5 }
    );
    assert_eq!(map_range(&map, RangeMode::MinMax), Normalization { lo: 1.0, hi: 9.0 });
    // finite values sorted: 1 1 2 3 4 5 6 9 (n = 8); numpy.percentile(.., [25, 75]) = [1.75, 5.25]
    let p = map_range(&map, RangeMode::Percentile(25.0, 75.0));
    assert_close(p.lo, 1.75, 1e-6);
    assert_close(p.hi, 5.25, 1e-6);
    // 0 / 100 are min / max, 50 the median (3 + 4) / 2
    assert_eq!(
        map_range(&map, RangeMode::Percentile(0.0, 100.0)),
        Normalization { lo: 1.0, hi: 9.0 }
    );
    assert_close(map_range(&map, RangeMode::Percentile(50.0, 50.0)).lo, 3.5, 1e-6);
    // out-of-range percentiles clamp
    assert_eq!(
        map_range(&map, RangeMode::Percentile(-5.0, 250.0)),
        Normalization { lo: 1.0, hi: 9.0 }
    );
}

#[test]
fn map_range_percentile_of_one_to_ten() {
    let map: Vec<f32> = (1..=10).map(|v| v as f32).collect();
    // numpy.percentile(arange(1, 11), [10, 90]) = [1.9, 9.1]
    let p = map_range(&map, RangeMode::Percentile(10.0, 90.0));
    assert_close(p.lo, 1.9, 1e-5);
    assert_close(p.hi, 9.1, 1e-5);
}

#[test]
fn map_range_degenerate_and_empty() {
    let constant = [0.7f32; 12];
    let n = map_range(&constant, RangeMode::MinMax);
    assert_eq!(n, Normalization { lo: 0.7, hi: 0.7 });
    assert!(n.is_degenerate());
    // no division by zero: a step at lo
    assert_eq!(n.normalize(0.7), 0.0);
    assert_eq!(n.normalize(0.6), 0.0);
    assert_eq!(n.normalize(0.8), 1.0);
    assert!(n.normalize(f32::NAN).is_nan());
    // no finite values
    assert_eq!(
        map_range(&[f32::NAN, f32::NAN], RangeMode::MinMax),
        Normalization::default()
    );
    assert_eq!(
        map_range(&[], RangeMode::Percentile(5.0, 95.0)),
        Normalization::default()
    );
}

#[test]
fn normalization_is_linear_and_clamps() {
    let n = Normalization::new(2.0, 6.0);
    assert_eq!(n.normalize(2.0), 0.0);
    assert_eq!(n.normalize(4.0), 0.5);
    assert_eq!(n.normalize(6.0), 1.0);
    assert_eq!(n.normalize(-10.0), 0.0);
    assert_eq!(n.normalize(10.0), 1.0);
    // a range wider than f32 can hold as a difference still works
    let wide = Normalization::new(-f32::MAX, f32::MAX);
    assert!(!wide.is_degenerate());
    assert_eq!(wide.normalize(0.0), 0.5);
}

// ---------------------------------------------------------------------------------------------
// Heatmap

#[test]
fn heatmap_rgba_colours_alpha_and_nan() {
    let map = [0.0, 0.5, 1.0, f32::NAN, 2.0, -1.0];
    let rgba = heatmap_rgba(&map, 3, 2, Normalization::default(), 0.5);
    assert_eq!(rgba.len(), 6 * 4);
    assert_eq!(&rgba[0..4], &[0, 0, 4, 128]);
    assert_eq!(&rgba[4..8], &[188, 55, 84, 128]);
    assert_eq!(&rgba[8..12], &[252, 255, 164, 128]);
    assert_eq!(&rgba[12..16], &[0, 0, 0, 0]);
    assert_eq!(&rgba[16..20], &[252, 255, 164, 128]);
    assert_eq!(&rgba[20..24], &[0, 0, 4, 128]);
    let opaque = heatmap_rgba(&map, 3, 2, Normalization::default(), 3.0);
    assert_eq!(opaque[3], 255);
}

#[test]
#[should_panic(expected = "heatmap_rgba")]
fn heatmap_rgba_rejects_wrong_size() {
    heatmap_rgba(&[0.0; 5], 3, 2, Normalization::default(), 1.0);
}

// ---------------------------------------------------------------------------------------------
// Resize and overlay

#[test]
fn resize_bilinear_half_pixel_centres() {
    // a 2x1 ramp to 4x1: sample positions -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
    let out = resize_bilinear(&[0.0, 1.0], 2, 1, 4, 1).unwrap();
    assert_eq!(out, vec![0.0, 0.25, 0.75, 1.0]);
    // 2x2 to 4x4 along both axes: torch.nn.functional.interpolate(.., mode="bilinear")
    let out = resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 2, 2, 4, 4).unwrap();
    let expected = [
        0.0, 0.25, 0.75, 1.0, //
        0.5, 0.75, 1.25, 1.5, //
        1.5, 1.75, 2.25, 2.5, //
        2.0, 2.25, 2.75, 3.0,
    ];
    for (a, b) in out.iter().zip(expected) {
        assert_close(*a, b, 1e-6);
    }
    // identity and constants
    let map: Vec<f32> = (0..12).map(|v| v as f32 * 0.1).collect();
    assert_eq!(resize_bilinear(&map, 4, 3, 4, 3).unwrap(), map);
    assert!(resize_bilinear(&[0.3; 6], 3, 2, 17, 9)
        .unwrap()
        .iter()
        .all(|&v| v == 0.3));
    // downscale 4x1 -> 2x1 averages pairs
    assert_eq!(
        resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 4, 1, 2, 1).unwrap(),
        vec![0.5, 2.5]
    );
    // errors
    assert!(resize_bilinear(&[0.0; 5], 2, 3, 4, 4).is_err());
    assert!(resize_bilinear(&[], 0, 0, 4, 4).is_err());
}

#[test]
fn overlay_opacity_zero_is_the_image() {
    let img = test_image(20, 14);
    let map: Vec<f32> = (0..7 * 5).map(|i| (i as f32 * 0.37).sin()).collect();
    let out = overlay(&img, &map, 7, 5, Normalization::new(-1.0, 1.0), 0.0, None).unwrap();
    assert_eq!(out, img);
}

#[test]
fn overlay_opacity_one_constant_map_is_the_colour() {
    let img = test_image(9, 6);
    let map = [0.7f32; 4 * 3];
    let out = overlay(&img, &map, 4, 3, Normalization::default(), 1.0, None).unwrap();
    let c = colormap(0.7);
    assert_eq!(c, INFERNO[179]);
    assert!(out.pixels().all(|p| p.0 == c));
}

#[test]
fn overlay_blends_halfway() {
    let img = RgbImage::from_pixel(2, 2, Rgb([100, 0, 255]));
    let out = overlay(&img, &[1.0; 4], 2, 2, Normalization::default(), 0.5, None).unwrap();
    // (100 + 252) / 2 = 176, (0 + 255) / 2 = 127.5 -> 128, (255 + 164) / 2 = 209.5 -> 210
    assert!(out.pixels().all(|p| p.0 == [176, 128, 210]));
    // NaN values leave the image alone
    let out = overlay(&img, &[f32::NAN; 4], 2, 2, Normalization::default(), 1.0, None).unwrap();
    assert_eq!(out, img);
}

#[test]
fn overlay_threshold_outlines_a_square() {
    // 8x8 map, a 4x4 square of ones at rows / columns 2..=5
    let (w, h) = (8usize, 8usize);
    let mut map = vec![0.0f32; w * h];
    for y in 2..=5 {
        for x in 2..=5 {
            map[y * w + x] = 1.0;
        }
    }
    let img = test_image(8, 8);
    let out = overlay(&img, &map, w, h, Normalization::default(), 0.0, Some(0.5)).unwrap();
    let mut outlined = Vec::new();
    for y in 0..8u32 {
        for x in 0..8u32 {
            let p = out.get_pixel(x, y);
            if p.0 == OUTLINE_COLOR {
                outlined.push((x, y));
            } else {
                assert_eq!(p, img.get_pixel(x, y), "pixel ({x}, {y}) changed");
            }
        }
    }
    // exactly the 12 pixels of the square's ring; the inner 2x2 (3..=4) is not outlined
    let mut expected = Vec::new();
    for y in 2..=5u32 {
        for x in 2..=5u32 {
            if x == 2 || x == 5 || y == 2 || y == 5 {
                expected.push((x, y));
            }
        }
    }
    assert_eq!(outlined, expected);
    assert_eq!(outlined.len(), 12);
}

#[test]
fn overlay_threshold_on_an_upscaled_map() {
    // a 4x4 map with one hot cell at (1, 1), upscaled x2: bilinear values >= 0.5 form the 2x2 block
    // at rows / columns 2..=3 (0.5625 there, 0.1875 / 0.0625 or less around)
    let mut map = vec![0.0f32; 16];
    map[4 + 1] = 1.0;
    let up = resize_bilinear(&map, 4, 4, 8, 8).unwrap();
    assert_close(up[2 * 8 + 2], 0.5625, 1e-6);
    assert_close(up[2 * 8 + 1], 0.1875, 1e-6);
    let outline = threshold_outline(&up, 8, 8, 0.5);
    let on: Vec<usize> = (0..64).filter(|&i| outline[i]).collect();
    assert_eq!(on, vec![18, 19, 26, 27]);
    let img = test_image(8, 8);
    let out = overlay(&img, &map, 4, 4, Normalization::default(), 0.3, Some(0.5)).unwrap();
    for i in 0..64u32 {
        assert_eq!(
            out.get_pixel(i % 8, i / 8).0 == OUTLINE_COLOR,
            on.contains(&(i as usize))
        );
    }
}

#[test]
fn threshold_outline_closes_regions_at_the_image_edge() {
    // everything above threshold: the outline is the image's border
    let outline = threshold_outline(&[1.0; 12], 4, 3, 0.5);
    let expected = [
        true, true, true, true, //
        true, false, false, true, //
        true, true, true, true,
    ];
    assert_eq!(outline, expected);
    // nothing above threshold, NaN threshold: nothing
    assert!(threshold_outline(&[0.0; 12], 4, 3, 0.5).iter().all(|&b| !b));
    assert!(threshold_outline(&[1.0; 12], 4, 3, f32::NAN).iter().all(|&b| !b));
}

#[test]
fn overlay_rejects_mismatched_maps() {
    let img = test_image(8, 8);
    let err = overlay(&img, &[0.0; 15], 4, 4, Normalization::default(), 0.5, None).unwrap_err();
    assert!(format!("{err:#}").contains("4x4"), "{err:#}");
    assert!(overlay(&img, &[], 0, 0, Normalization::default(), 0.5, None).is_err());
    assert!(overlay(&img, &[0.0; 4], 2, 2, Normalization::default(), 0.5, None).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Report pictures and PNG

#[test]
fn side_by_side_concatenates_and_pads() {
    let a = RgbImage::from_pixel(2, 3, Rgb([10, 20, 30]));
    let b = RgbImage::from_pixel(3, 2, Rgb([40, 50, 60]));
    let c = mask_to_rgb(&[0, 1, 255, 0], 2, 2);
    let s = side_by_side(&[&a, &b, &c]);
    assert_eq!(s.dimensions(), (7, 3));
    assert_eq!(s.get_pixel(1, 2).0, [10, 20, 30]);
    assert_eq!(s.get_pixel(2, 0).0, [40, 50, 60]);
    assert_eq!(s.get_pixel(4, 1).0, [40, 50, 60]);
    assert_eq!(s.get_pixel(3, 2).0, [0, 0, 0]); // padding under b
    assert_eq!(s.get_pixel(5, 0).0, [0, 0, 0]);
    assert_eq!(s.get_pixel(6, 0).0, [255, 255, 255]);
    assert_eq!(s.get_pixel(5, 1).0, [255, 255, 255]);
    assert_eq!(s.get_pixel(6, 1).0, [0, 0, 0]);
    assert_eq!(side_by_side(&[]).dimensions(), (0, 0));
}

#[test]
fn png_round_trip() {
    let img = test_image(13, 7);
    let bytes = encode_png(&img).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let back = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .unwrap()
        .to_rgb8();
    assert_eq!(back, img);
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn save_png_writes_and_names_the_path_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.overlay.png");
    let img = test_image(5, 4);
    anoscope::render::save_png(&img, &path).unwrap();
    assert_eq!(image::open(&path).unwrap().to_rgb8(), img);
    let bad = dir.path().join("missing-dir").join("y.png");
    let err = anoscope::render::save_png(&img, &bad).unwrap_err();
    assert!(format!("{err:#}").contains("missing-dir"), "{err:#}");
}

#[test]
fn normalized_pixels_to_rgb_inverts_clip_normalisation() {
    let img = test_image(11, 6);
    let chw = to_chw(&img, &Normalize::clip());
    let back = normalized_pixels_to_rgb(&chw, 6, 11, CLIP_MEAN, CLIP_STD);
    assert_eq!(back.dimensions(), (11, 6));
    for (a, b) in back.pixels().zip(img.pixels()) {
        for k in 0..3 {
            assert!((i16::from(a.0[k]) - i16::from(b.0[k])).abs() <= 1, "{a:?} vs {b:?}");
        }
    }
    // and in fact exactly, since the round trip error is far below half a level
    assert_eq!(back, img);
    // out-of-range values clamp
    let extreme = [10.0, -10.0, 0.0];
    let px = normalized_pixels_to_rgb(&extreme, 1, 1, CLIP_MEAN, CLIP_STD);
    assert_eq!(px.get_pixel(0, 0).0, [255, 0, 104]); // 255 * 0.40821 = 104.09
}
