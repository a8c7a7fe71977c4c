//! `Image`: a decoded RGB image owned by wasm.
use super::js_err;
use crate::preprocess::{self, ImageLimits};
use image::RgbImage;
use wasm_bindgen::prelude::*;

/// A decoded 8-bit RGB image. `ClipModel.references` and `ClipModel.batch` take their images
/// over (the JS objects are spent afterwards); `ClipModel.detect` only borrows one.
#[wasm_bindgen]
pub struct Image {
    pub(crate) img: RgbImage,
}

#[wasm_bindgen]
impl Image {
    /// Decodes PNG, JPEG, WebP, BMP, GIF or TIFF bytes (format from the content). The pixel limit
    /// (`limits().maxImagePixels`) is checked from the header before decoding; empty, non-image,
    /// corrupt and truncated files get a message saying so.
    pub fn decode(bytes: &[u8]) -> Result<Image, JsError> {
        console_error_panic_hook::set_once();
        let img = preprocess::decode_image(bytes, &ImageLimits::default()).map_err(js_err)?;
        Ok(Image { img })
    }

    /// An image from canvas or video-frame RGBA data (`Uint8Array` or `Uint8ClampedArray` of
    /// `width × height × 4` bytes); alpha is dropped.
    #[wasm_bindgen(js_name = fromRgba)]
    pub fn from_rgba(
        #[wasm_bindgen(unchecked_param_type = "Uint8Array | Uint8ClampedArray")] rgba: &[u8],
        width: u32,
        height: u32,
    ) -> Result<Image, JsError> {
        console_error_panic_hook::set_once();
        let img = preprocess::rgb_from_rgba(rgba, width, height, &ImageLimits::default()).map_err(js_err)?;
        Ok(Image { img })
    }

    /// Width in pixels.
    #[wasm_bindgen(getter)]
    pub fn width(&self) -> u32 {
        self.img.width()
    }

    /// Height in pixels.
    #[wasm_bindgen(getter)]
    pub fn height(&self) -> u32 {
        self.img.height()
    }
}
