//! The wasm int8 GEMM's choice of dot product (`model::wasm_qgemm::dot`, `set_dot`): alone in
//! its own test binary, because `set_dot` changes what every layer packed afterwards in the
//! process runs, and the library's unit tests pack layers in parallel.
use anoscope::model::wasm_qgemm::{dot, relaxed_dot_saturates, set_dot, Dot, PackedQ8};

#[test]
fn the_dot_product_is_the_builds_unless_asked() {
    let own = if cfg!(feature = "relaxed-simd") {
        Dot::Relaxed
    } else {
        Dot::Simd128
    };
    assert_eq!(dot(), own);
    assert_eq!(PackedQ8::quantize(&[0.5; 64], 32, 2).unwrap().dot(), own);
    assert_eq!(
        relaxed_dot_saturates(),
        None,
        "the probe runs only in the relaxed wasm build"
    );
    set_dot(Some(Dot::Simd128)).unwrap();
    assert_eq!(dot(), Dot::Simd128);
    assert_eq!(PackedQ8::quantize(&[0.5; 64], 32, 2).unwrap().dot(), Dot::Simd128);
    let relaxed = set_dot(Some(Dot::Relaxed));
    assert_eq!(relaxed.is_ok(), cfg!(feature = "relaxed-simd"));
    if let Err(e) = relaxed {
        assert!(e.to_string().contains("no relaxed-SIMD int8 kernel"), "{e}");
        assert_eq!(dot(), Dot::Simd128, "a refused choice changes nothing");
    }
    set_dot(None).unwrap();
    assert_eq!(dot(), own);
    assert_eq!(
        PackedQ8::with_dot(Dot::Relaxed, &[1; 32], &[1.0], 1, 32).is_ok(),
        cfg!(feature = "relaxed-simd")
    );
    assert_eq!(Dot::Simd128.name(), "simd128");
    assert_eq!(Dot::Relaxed.qmax(), 63.0);
}
