//! The image-tower passes the detection modes run, behind one asynchronous interface, so that
//! each mode is written once and runs both natively (the [`VisionTower`] itself: CPU, or the GPU
//! through its blocking accelerator) and in the browser, where WebGPU results arrive on the event
//! loop and cannot be waited for ([`Accelerated`]).
//!
//! Natively the modes' synchronous functions (`fast::detect`, `winclip::detect`, …) drive their
//! `*_on` versions with [`now`]: the tower's passes never wait, so one poll completes them.
use crate::model::{AsyncVisionAccel, EncodeOptions, VisionOutput, VisionTower};
use anyhow::Result;
use candle_core::Tensor;
use std::future::Future;
use std::task::{Context, Poll, Waker};

/// What the modes ask of the image tower (the [`VisionTower`] methods of the same names).
#[allow(async_fn_in_trait)] // the browser's implementation is not Send; none is needed
pub trait Passes {
    /// [`VisionTower::forward`].
    async fn forward(&self, pixels: &Tensor, opts: &EncodeOptions) -> Result<VisionOutput>;
    /// [`VisionTower::forward_embedded`].
    async fn forward_embedded(
        &self,
        embeddings: &Tensor,
        grid: (usize, usize),
        opts: &EncodeOptions,
    ) -> Result<VisionOutput>;
    /// [`VisionTower::forward_subsets`].
    async fn forward_subsets(&self, embeddings: &Tensor, subsets: &[Vec<usize>], batch_size: usize) -> Result<Tensor>;
}

/// The tower's own passes (synchronous: CPU, or its blocking accelerator natively).
impl Passes for VisionTower {
    async fn forward(&self, pixels: &Tensor, opts: &EncodeOptions) -> Result<VisionOutput> {
        VisionTower::forward(self, pixels, opts)
    }

    async fn forward_embedded(
        &self,
        embeddings: &Tensor,
        grid: (usize, usize),
        opts: &EncodeOptions,
    ) -> Result<VisionOutput> {
        VisionTower::forward_embedded(self, embeddings, grid, opts)
    }

    async fn forward_subsets(&self, embeddings: &Tensor, subsets: &[Vec<usize>], batch_size: usize) -> Result<Tensor> {
        VisionTower::forward_subsets(self, embeddings, subsets, batch_size)
    }
}

/// The tower's passes on an asynchronous accelerator (the browser's WebGPU), redone on the CPU
/// when one fails ([`VisionTower::forward_on`]).
pub struct Accelerated<'a, A: ?Sized> {
    /// The tower whose weights the passes use, and whose CPU path redoes a failed pass.
    pub tower: &'a VisionTower,
    /// The asynchronous accelerator that runs the passes first.
    pub accel: &'a A,
}

impl<A: AsyncVisionAccel + ?Sized> Passes for Accelerated<'_, A> {
    async fn forward(&self, pixels: &Tensor, opts: &EncodeOptions) -> Result<VisionOutput> {
        self.tower.forward_on(self.accel, pixels, opts).await
    }

    async fn forward_embedded(
        &self,
        embeddings: &Tensor,
        grid: (usize, usize),
        opts: &EncodeOptions,
    ) -> Result<VisionOutput> {
        self.tower.forward_embedded_on(self.accel, embeddings, grid, opts).await
    }

    async fn forward_subsets(&self, embeddings: &Tensor, subsets: &[Vec<usize>], batch_size: usize) -> Result<Tensor> {
        self.tower
            .forward_subsets_on(self.accel, embeddings, subsets, batch_size)
            .await
    }
}

/// Runs a future that never waits (a mode on the tower's synchronous passes) to completion.
///
/// # Panics
/// If the future waits: only futures over synchronous [`Passes`] may be given.
pub fn now<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("passes::now was given a future that waits"),
    }
}
