//! WinCLIP (zero-shot) and WinCLIP+ (few-shot with normal references), as anomalib's
//! `WinClipModel` computes them.
//!
//! * Image score `softmax(cos(img, [n, a]) / τ)[1]`.
//! * Windows of `s × s` patches (s ∈ scales, stride 1) run through the tower on their own
//!   tokens (class token + window patches, [`VisionTower::forward_subsets`]); each window is
//!   scored like an image and every patch gets the harmonic mean of the windows covering it.
//! * Zero-shot map: harmonic mean of [image score broadcast, one map per scale].
//! * Few-shot: visual association `min over references (1 − cos) / 2`, for the patch tokens
//!   (after `ln_post`, before the projection, as open_clip's `output_tokens` gives them) against
//!   all reference patch tokens, and for each scale's window embeddings against all reference
//!   windows of that scale (harmonically aggregated); the few-shot map is the mean of those maps.
//!   Map = mean of zero-shot and few-shot maps; score = mean of the zero-shot score and the
//!   few-shot map's maximum.
//! * Maps are upsampled bilinearly to the input size.
//!
//! [`VisionTower::forward_subsets`]: crate::model::VisionTower::forward_subsets
use super::aggregate::{bilinear_resize, harmonic_aggregation, harmonic_mean_maps, make_windows};
use super::passes::{self, Passes};
use super::{Detection, TextPair, TEMPERATURE};
use crate::model::{Clip, EncodeOptions};
use anyhow::{bail, Result};
use candle_core::Tensor;

/// Settings of the WinCLIP modes.
#[derive(Clone, Debug)]
pub struct WinClipConfig {
    /// Window sides in patches (anomalib: 2 and 3).
    pub scales: Vec<usize>,
    /// Softmax temperature τ of the two-class scores (default [`TEMPERATURE`], 0.07).
    pub temperature: f32,
    /// Windows per token-subset batch (bounds memory; does not change results).
    pub window_batch: usize,
}

impl Default for WinClipConfig {
    fn default() -> Self {
        Self {
            scales: vec![2, 3],
            temperature: TEMPERATURE,
            window_batch: 64,
        }
    }
}

/// What one image contributes: global embedding, patch tokens and window embeddings.
#[derive(Clone, Debug)]
pub struct Features {
    /// `[P]` projected image embedding.
    pub image_embed: Vec<f32>,
    /// `[N, D]` patch tokens after `ln_post`, before the projection.
    pub patch_tokens: Tensor,
    /// Per scale, `[M_s, P]` window embeddings (projected class token of each window pass).
    pub windows: Vec<Tensor>,
    /// Patch grid `(rows, columns)`; N = rows · columns.
    pub grid: (usize, usize),
    /// Input size `(height, width)` in pixels, the size of the upsampled map.
    pub size: (usize, usize),
}

/// Encodes each image of normalised `pixels: [B, 3, H, W]`.
pub fn features(clip: &Clip, pixels: &Tensor, cfg: &WinClipConfig) -> Result<Vec<Features>> {
    passes::now(features_on(clip, &clip.vision, pixels, cfg))
}

/// [`features`] with the image tower's passes run by `tower` (see [`Passes`]).
pub async fn features_on(
    clip: &Clip,
    tower: &impl Passes,
    pixels: &Tensor,
    cfg: &WinClipConfig,
) -> Result<Vec<Features>> {
    let (b, _, h, w) = pixels.dims4()?;
    let mut out = Vec::with_capacity(b);
    for i in 0..b {
        let px = pixels.narrow(0, i, 1)?;
        let emb = clip.vision.embed(&px)?;
        let full = tower
            .forward_embedded(&emb, clip.vision.grid_for(h, w)?, &EncodeOptions::default())
            .await?;
        let grid = full.grid;
        let n = grid.0 * grid.1;
        let patch_tokens = clip
            .vision
            .w
            .ln_post
            .forward(&full.last_hidden_state.narrow(1, 1, n)?.squeeze(0)?)?;
        let mut windows = Vec::with_capacity(cfg.scales.len());
        for &s in &cfg.scales {
            let subsets = make_windows(grid.0, grid.1, s, 1);
            if subsets.is_empty() {
                bail!("a {s}×{s} window does not fit the {}×{} patch grid", grid.0, grid.1);
            }
            windows.push(tower.forward_subsets(&emb, &subsets, cfg.window_batch).await?);
        }
        out.push(Features {
            image_embed: full.image_embeds.squeeze(0)?.to_vec1()?,
            patch_tokens,
            windows,
            grid,
            size: (h, w),
        });
    }
    Ok(out)
}

/// Normal reference images for WinCLIP+: their patch tokens and window embeddings, rows
/// L2-normalised.
#[derive(Clone, Debug)]
pub struct References {
    /// Number of reference images K (1 to [`MAX_REFERENCES`]).
    pub k: usize,
    /// `[K·N, D]` patch tokens of all references (after `ln_post`, unprojected).
    pub patch_tokens: Tensor,
    /// Per scale, `[K·M_s, P]`.
    pub windows: Vec<Tensor>,
    /// Patch grid `(rows, columns)` the references were encoded at; images must match it.
    pub grid: (usize, usize),
}

fn normalize_rows(t: &Tensor) -> Result<Tensor> {
    let norm = t.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
    Ok(t.broadcast_div(&norm)?)
}

/// `min over reference rows of (1 − cos) / 2` for each query row (WinCLIP eq. 4).
fn visual_association(query: &Tensor, refs_unit: &Tensor) -> Result<Vec<f32>> {
    let sims = normalize_rows(query)?.matmul(&refs_unit.t()?)?; // [Q, R]
    let max = sims.max(1)?.to_vec1::<f32>()?;
    Ok(max.into_iter().map(|m| (1.0 - m) / 2.0).collect())
}

/// Most reference images of few-shot mode (WinCLIP+ uses 1 to 4); about 1.4 MB of features
/// each for ViT-B/16 at 240 px.
pub const MAX_REFERENCES: usize = 64;

fn check_reference_count(k: usize) -> Result<()> {
    if k == 0 {
        bail!("few-shot mode needs at least one normal reference image");
    }
    if k > MAX_REFERENCES {
        bail!("few-shot mode takes at most {MAX_REFERENCES} reference images, got {k}");
    }
    Ok(())
}

impl References {
    /// Collects reference features (1 to [`MAX_REFERENCES`] images).
    pub fn new(feats: &[Features]) -> Result<Self> {
        check_reference_count(feats.len())?;
        let first = &feats[0];
        if feats
            .iter()
            .any(|f| f.grid != first.grid || f.windows.len() != first.windows.len())
        {
            bail!("reference images must share one input size");
        }
        let patches: Vec<Tensor> = feats.iter().map(|f| f.patch_tokens.clone()).collect();
        let windows = (0..first.windows.len())
            .map(|s| {
                let per: Vec<Tensor> = feats.iter().map(|f| f.windows[s].clone()).collect();
                normalize_rows(&Tensor::cat(&per, 0)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            k: feats.len(),
            patch_tokens: normalize_rows(&Tensor::cat(&patches, 0)?)?,
            windows,
            grid: first.grid,
        })
    }
}

/// Zero-shot image score and grid map for one image.
pub fn zero_shot(f: &Features, text: &TextPair, cfg: &WinClipConfig) -> Result<(f32, Vec<f32>)> {
    let n = f.grid.0 * f.grid.1;
    let image_score = text.score(&f.image_embed, cfg.temperature);
    let mut maps: Vec<Vec<f32>> = vec![vec![image_score; n]];
    for (&s, win) in cfg.scales.iter().zip(&f.windows) {
        let scores: Vec<f32> = win
            .to_vec2::<f32>()?
            .iter()
            .map(|e| text.score(e, cfg.temperature))
            .collect();
        maps.push(harmonic_aggregation(
            &scores,
            &make_windows(f.grid.0, f.grid.1, s, 1),
            n,
        ));
    }
    let refs: Vec<&[f32]> = maps.iter().map(Vec::as_slice).collect();
    Ok((image_score, harmonic_mean_maps(&refs)))
}

/// Few-shot (visual association) grid map for one image.
pub fn few_shot_map(f: &Features, refs: &References, cfg: &WinClipConfig) -> Result<Vec<f32>> {
    if refs.grid != f.grid {
        bail!(
            "reference images were encoded at a {:?} grid, the image at {:?}",
            refs.grid,
            f.grid
        );
    }
    let n = f.grid.0 * f.grid.1;
    let mut maps = vec![visual_association(&f.patch_tokens, &refs.patch_tokens)?];
    for ((&s, win), rwin) in cfg.scales.iter().zip(&f.windows).zip(&refs.windows) {
        let va = visual_association(win, rwin)?;
        maps.push(harmonic_aggregation(&va, &make_windows(f.grid.0, f.grid.1, s, 1), n));
    }
    let k = maps.len() as f32;
    Ok((0..n).map(|i| maps.iter().map(|m| m[i]).sum::<f32>() / k).collect())
}

/// WinCLIP (no references) or WinCLIP+ (with references) for every image of `pixels`.
pub fn detect(
    clip: &Clip,
    pixels: &Tensor,
    text: &TextPair,
    refs: Option<&References>,
    cfg: &WinClipConfig,
) -> Result<Vec<Detection>> {
    passes::now(detect_on(clip, &clip.vision, pixels, text, refs, cfg))
}

/// [`detect`] with the image tower's passes run by `tower` (see [`Passes`]).
pub async fn detect_on(
    clip: &Clip,
    tower: &impl Passes,
    pixels: &Tensor,
    text: &TextPair,
    refs: Option<&References>,
    cfg: &WinClipConfig,
) -> Result<Vec<Detection>> {
    text.check_model(clip)?;
    let feats = features_on(clip, tower, pixels, cfg).await?;
    feats.iter().map(|f| detect_features(f, text, refs, cfg)).collect()
}

/// As [`detect`], from already computed features.
pub fn detect_features(
    f: &Features,
    text: &TextPair,
    refs: Option<&References>,
    cfg: &WinClipConfig,
) -> Result<Detection> {
    let (mut score, mut grid_map) = zero_shot(f, text, cfg)?;
    if let Some(r) = refs {
        let fs = few_shot_map(f, r, cfg)?;
        let top = fs.iter().copied().fold(f32::MIN, f32::max);
        grid_map.iter_mut().zip(&fs).for_each(|(z, s)| *z = 0.5 * (*z + s));
        score = 0.5 * (score + top);
    }
    let (h, w) = f.size;
    Ok(Detection {
        score,
        map: bilinear_resize(&grid_map, f.grid.0, f.grid.1, h, w),
        height: h,
        width: w,
        grid_map,
        grid: f.grid,
    })
}

/// Convenience: reference features from normalised reference pixels `[K, 3, H, W]`.
pub fn references(clip: &Clip, ref_pixels: &Tensor, cfg: &WinClipConfig) -> Result<References> {
    passes::now(references_on(clip, &clip.vision, ref_pixels, cfg))
}

/// [`references`] with the image tower's passes run by `tower` (see [`Passes`]).
pub async fn references_on(
    clip: &Clip,
    tower: &impl Passes,
    ref_pixels: &Tensor,
    cfg: &WinClipConfig,
) -> Result<References> {
    check_reference_count(ref_pixels.dims().first().copied().unwrap_or(0))?;
    References::new(&features_on(clip, tower, ref_pixels, cfg).await?)
}
