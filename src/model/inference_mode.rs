//! A scope in which libtorch runs in inference mode: the autograd and
//! inplace-or-view dispatch keys are skipped for every op, which no_grad
//! alone does not do. Tensors made inside are inference tensors: they can
//! be read anywhere but not changed in place outside such a scope, so a
//! model's forward runs inside one and hands back only results that are
//! read (logits are copied out).

use std::ffi::c_void;
use std::marker::PhantomData;

#[cfg(inferd_torch_shim)]
extern "C" {
    fn inferd_inference_mode_enter() -> *mut c_void;
    fn inferd_inference_mode_exit(guard: *mut c_void);
}

/// Inference mode until dropped, on this thread. Without the C++ shim it
/// does nothing (ops then take the no_grad path).
pub struct InferenceMode {
    guard: *mut c_void,
    // The guard is thread-local state in libtorch: keep it on its thread.
    _not_send: PhantomData<*mut ()>,
}

impl InferenceMode {
    pub fn enter() -> InferenceMode {
        #[cfg(inferd_torch_shim)]
        // SAFETY: no arguments; returns a fresh guard object or null.
        let guard = unsafe { inferd_inference_mode_enter() };
        #[cfg(not(inferd_torch_shim))]
        let guard = std::ptr::null_mut();
        InferenceMode { guard, _not_send: PhantomData }
    }
}

impl Drop for InferenceMode {
    fn drop(&mut self) {
        #[cfg(inferd_torch_shim)]
        if !self.guard.is_null() {
            // SAFETY: `guard` came from inferd_inference_mode_enter on this
            // thread (the type is !Send) and is freed once, here.
            unsafe { inferd_inference_mode_exit(self.guard) };
        }
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    #[test]
    fn tensors_made_inside_are_inference_tensors_and_the_mode_ends_on_drop() {
        let mut before = Tensor::ones([4], (Kind::Float, Device::Cpu));
        let inside = {
            let _mode = InferenceMode::enter();
            // An in-place write to a tensor made outside is allowed inside.
            let _ = before.f_add_(&Tensor::ones([4], (Kind::Float, Device::Cpu))).unwrap();
            &before * 2.0
        };
        assert!(cfg!(not(inferd_torch_shim)) || inside.is_inference(), "made inside the scope: an inference tensor");
        let after = &before * 2.0;
        assert!(!after.is_inference(), "the mode ended with the guard");
        assert_eq!(inside.double_value(&[0]), 4.0);
    }
}
