//! `anoscope embed`: one image through the image tower, written as safetensors (image
//! embedding, projected patch tokens, hidden states, v-v tokens). The tensors themselves come
//! from [`anoscope::embed`]; the encoder flags are in [`super::args`].
use super::args::{use_backend, BackendOpts};
use anoscope::embed::embed_image;
use anoscope::model::Clip;
use anoscope::preprocess::{self, ImageLimits, Normalize};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// How the image is brought to the input size.
#[derive(Clone, Copy, ValueEnum)]
enum Preprocess {
    /// Shortest side to the size (bicubic), then center crop (CLIP / open_clip).
    Clip,
    /// Plain bicubic resize to a square (WinCLIP).
    Resize,
}

/// The flags of `anoscope embed`. The input is one of: the image path (positional, as for
/// `detect`), `--image IMG` (the old spelling, deprecated) or `--pixels FILE`.
#[derive(Args)]
pub struct EmbedArgs {
    /// Checkpoint directory (Hugging Face or open_clip layout).
    #[arg(long)]
    model: PathBuf,
    /// Image file (PNG, JPEG, WebP, BMP, GIF, TIFF).
    #[arg(value_name = "IMG", conflicts_with = "pixels", required_unless_present_any = ["pixels", "image_flag"])]
    image: Option<PathBuf>,
    /// Deprecated spelling of the positional IMG.
    #[arg(long = "image", value_name = "IMG", hide = true, conflicts_with_all = ["image", "pixels"])]
    image_flag: Option<PathBuf>,
    /// Already-normalised input: safetensors with `pixel_values` [1,3,H,W].
    #[arg(long)]
    pixels: Option<PathBuf>,
    /// Input side in pixels for IMG (default: the checkpoint's image size).
    #[arg(long, conflicts_with = "pixels")]
    size: Option<u32>,
    /// Preprocessing for IMG.
    #[arg(long, value_enum, default_value = "clip", conflicts_with = "pixels")]
    preprocess: Preprocess,
    /// Run the value-to-value (CLIP Surgery) path in the last K blocks.
    #[arg(long, value_name = "K")]
    surgery_layers: Option<usize>,
    /// Also write these hidden states (0 = after ln_pre, i = output of block i).
    #[arg(long, value_delimiter = ',', value_name = "L,L,...")]
    hidden_layers: Vec<usize>,
    #[command(flatten)]
    backend: BackendOpts,
    #[arg(long)]
    out: PathBuf,
}

/// Runs `anoscope embed`.
pub fn embed(args: EmbedArgs) -> Result<()> {
    let EmbedArgs {
        model,
        image,
        image_flag,
        pixels,
        size,
        preprocess,
        surgery_layers,
        hidden_layers,
        backend,
        out,
    } = args;
    if image_flag.is_some() {
        super::warn_at_exit("--image is deprecated; pass the image path positionally: anoscope embed … IMG");
    }
    let mut clip = Clip::load_dir(&model)?;
    let input = match (image.or(image_flag), pixels) {
        (Some(path), _) => {
            let img = preprocess::load_image(&path, &ImageLimits::default())?;
            let s = size.unwrap_or(clip.cfg.vision.image_size as u32);
            if s == 0 || s > 4096 {
                bail!("--size must be in 1..=4096, got {s}");
            }
            let norm = Normalize {
                mean: clip.cfg.mean,
                std: clip.cfg.std,
            };
            let chw = match preprocess {
                Preprocess::Clip => preprocess::clip_preprocess(&img, s, &norm),
                Preprocess::Resize => preprocess::resize_preprocess(&img, s, &norm),
            };
            Tensor::from_vec(chw, (1, 3, s as usize, s as usize), &Device::Cpu)?
        }
        (None, Some(path)) => {
            let (values, shape) = preprocess::pixels_from_safetensors_file(&path)?;
            if shape[0] != 1 {
                bail!(
                    "{}: `pixel_values` must hold one image ([1,3,H,W]), got {:?}",
                    path.display(),
                    shape
                );
            }
            Tensor::from_vec(values, shape.to_vec(), &Device::Cpu)?
        }
        (None, None) => bail!("give an image (IMG) or --pixels FILE"),
    };
    use_backend(&mut clip, backend)?;
    let named = embed_image(&clip, &input, surgery_layers.unwrap_or(0), &hidden_layers)?;
    super::write_out(&out, &named)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
