//! A cooperative stop inside the encoders' long CPU passes. The image tower (and the learned
//! modes' DPAM pass) calls [`check`] after every transformer block, so a caller that installed a
//! check with [`set`] can stop one image in the middle: the browser's worker installs one that
//! reads the page's cancel flag, and a full-size ViT-L/14 image at 518 px (about a minute on two
//! CPU threads) then stops within one block instead of at its end. Without a check installed,
//! [`check`] does nothing. The check is per thread: it is read on the thread that runs the block
//! loop, never inside the blocks' parallel work.
use anyhow::Result;
use std::cell::RefCell;

/// This thread's check: an error stops the pass with it.
pub type Check = Box<dyn Fn() -> Result<()>>;

thread_local! {
    static CHECK: RefCell<Option<Check>> = const { RefCell::new(None) };
}

/// Installs (`Some`) or removes (`None`) this thread's check.
pub fn set(check: Option<Check>) {
    CHECK.with(|c| *c.borrow_mut() = check);
}

/// Runs this thread's check, if one is installed; its error stops the pass that called this.
pub fn check() -> Result<()> {
    CHECK.with(|c| match &*c.borrow() {
        Some(f) => f(),
        None => Ok(()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn a_check_runs_until_removed_and_its_error_comes_back() {
        assert!(check().is_ok(), "no check installed");
        let calls = Rc::new(Cell::new(0));
        let seen = calls.clone();
        set(Some(Box::new(move || {
            seen.set(seen.get() + 1);
            if seen.get() >= 3 {
                anyhow::bail!("stopped at call {}", seen.get());
            }
            Ok(())
        })));
        assert!(check().is_ok());
        assert!(check().is_ok());
        assert_eq!(check().unwrap_err().to_string(), "stopped at call 3");
        set(None);
        assert!(check().is_ok());
        assert_eq!(calls.get(), 3);
    }
}
