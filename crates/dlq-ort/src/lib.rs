//! `libonnx_dlq_ort`: an ONNX Runtime custom-op library that runs onnx-dlq's fused layers — the
//! `DlqConv` operator of domain `ai.onnx_dlq` (docs/OPERATOR.md) — with the native kernel of
//! `dlq-kernels`. ORT loads it with `SessionOptions.register_custom_ops_library(path)` (Python)
//! or `RegisterCustomOpsLibrary` / `Ort::SessionOptions::RegisterCustomOpsLibrary` (C, C++) and
//! calls [`RegisterCustomOps`], which adds the domain with `DlqConv` for float and float16.
//!
//! Nothing here links against ONNX Runtime: ORT hands its API table to `RegisterCustomOps` and
//! to each kernel, and ort-sys only provides the C struct layouts.

mod api;
mod kernel;
mod op;

use std::panic::{catch_unwind, AssertUnwindSafe};

use ort_sys::{OrtApiBase, OrtCustomOpDomain, OrtSessionOptions, OrtStatusPtr};

use api::{Ort, API_VERSION};

/// Adds the `ai.onnx_dlq` domain with `DlqConv` (float and float16) to `options`. Called by
/// ONNX Runtime when it loads the library; returns NULL on success.
///
/// # Safety
/// `options` and `api_base` must be the live pointers ONNX Runtime passes.
#[no_mangle]
pub unsafe extern "system" fn RegisterCustomOps(
    options: *mut OrtSessionOptions,
    api_base: *const OrtApiBase,
) -> OrtStatusPtr {
    let api = if api_base.is_null() {
        std::ptr::null()
    } else {
        ((*api_base).GetApi)(API_VERSION)
    };
    if api.is_null() {
        // No API table, so no way to return an error status: say why on stderr; the session
        // then fails on the unknown operator.
        eprintln!("libonnx_dlq_ort: this ONNX Runtime does not offer C API version {API_VERSION} (ONNX Runtime 1.17 or later is needed)");
        return OrtStatusPtr::default();
    }
    let ort = Ort { api: &*api };
    match catch_unwind(AssertUnwindSafe(|| register(ort, options))) {
        Ok(Ok(())) => OrtStatusPtr::default(),
        Ok(Err(message)) => ort.error(&format!("libonnx_dlq_ort: {message}")),
        Err(_) => ort.error("libonnx_dlq_ort: registration panicked (a bug: please report it)"),
    }
}

unsafe fn register(ort: Ort, options: *mut OrtSessionOptions) -> Result<(), String> {
    let mut domain: *mut OrtCustomOpDomain = std::ptr::null_mut();
    ort.check((ort.api.CreateCustomOpDomain)(
        c"ai.onnx_dlq".as_ptr(),
        &mut domain,
    ))?;
    for op in [&op::DLQ_CONV_F32, &op::DLQ_CONV_F16] {
        ort.check((ort.api.CustomOpDomain_Add)(domain, &op.op))?;
    }
    // ORT keeps the domain's pointer for the sessions made from `options` and never frees it;
    // it is not released here either (one small allocation per registration).
    ort.check((ort.api.AddCustomOpDomain)(options, domain))
}
