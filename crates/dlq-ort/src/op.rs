//! The `OrtCustomOp` descriptors ONNX Runtime reads (one per element type T: float and
//! float16) and their C callbacks. Every callback catches panics, so none unwinds into ORT, and
//! reports failures as ORT statuses.

use std::ffi::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use ort_sys::ONNXTensorElementDataType as Dt;
use ort_sys::OrtCustomOpInputOutputCharacteristic as Io;
use ort_sys::{OrtApi, OrtCustomOp, OrtKernelContext, OrtKernelInfo, OrtMemType, OrtStatusPtr};

use crate::api::{Ort, API_VERSION};
use crate::kernel::{Element, Kernel};

/// An `OrtCustomOp` with the element type its callbacks serve. `repr(C)` with the descriptor
/// first, so ORT's `*const OrtCustomOp` is also a pointer to the whole `TypedOp`.
#[repr(C)]
pub struct TypedOp {
    pub op: OrtCustomOp,
    element: Element,
}

/// Inputs: X, atoms, atom_indices (optional), coefficients (optional), assignment, B (optional).
const INPUTS: usize = 6;

const fn descriptor() -> OrtCustomOp {
    OrtCustomOp {
        version: API_VERSION,
        CreateKernel: None,
        GetName: Some(name),
        GetExecutionProviderType: Some(provider),
        GetInputType: Some(input_type),
        GetInputTypeCount: Some(input_count),
        GetOutputType: Some(output_type),
        GetOutputTypeCount: Some(output_count),
        KernelCompute: None,
        KernelDestroy: Some(destroy),
        GetInputCharacteristic: Some(input_characteristic),
        GetOutputCharacteristic: Some(output_characteristic),
        GetInputMemoryType: Some(memory_type),
        GetVariadicInputMinArity: Some(min_arity),
        GetVariadicInputHomogeneity: Some(homogeneity),
        GetVariadicOutputMinArity: Some(min_arity),
        GetVariadicOutputHomogeneity: Some(homogeneity),
        CreateKernelV2: Some(create),
        KernelComputeV2: Some(compute),
        InferOutputShapeFn: None,
        GetStartVersion: Some(version),
        GetEndVersion: Some(version),
        // Fields of API 18 and later: ORT does not read them for a version-17 op.
        GetMayInplace: None,
        ReleaseMayInplace: None,
        GetAliasMap: None,
        ReleaseAliasMap: None,
    }
}

/// `DlqConv` with T = float.
pub static DLQ_CONV_F32: TypedOp = TypedOp {
    op: descriptor(),
    element: Element::F32,
};

/// `DlqConv` with T = float16 (computed in float32, rounded once at the end).
pub static DLQ_CONV_F16: TypedOp = TypedOp {
    op: descriptor(),
    element: Element::F16,
};

fn element(op: *const OrtCustomOp) -> Element {
    // SAFETY: ORT passes back the pointer it was given: the `op` field of a `TypedOp` static.
    unsafe { (*(op as *const TypedOp)).element }
}

fn tensor_type(element: Element) -> Dt {
    match element {
        Element::F32 => Dt::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
        Element::F16 => Dt::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
    }
}

unsafe extern "system" fn name(_: *const OrtCustomOp) -> *const c_char {
    c"DlqConv".as_ptr()
}

unsafe extern "system" fn provider(_: *const OrtCustomOp) -> *const c_char {
    // NULL: the CPU execution provider.
    std::ptr::null()
}

unsafe extern "system" fn input_type(op: *const OrtCustomOp, index: usize) -> Dt {
    match index {
        // Index tensors: any unsigned integer type (checked when the kernel is created).
        2 | 4 => Dt::ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED,
        _ => tensor_type(element(op)),
    }
}

unsafe extern "system" fn input_count(_: *const OrtCustomOp) -> usize {
    INPUTS
}

unsafe extern "system" fn output_type(op: *const OrtCustomOp, _: usize) -> Dt {
    tensor_type(element(op))
}

unsafe extern "system" fn output_count(_: *const OrtCustomOp) -> usize {
    1
}

unsafe extern "system" fn input_characteristic(_: *const OrtCustomOp, index: usize) -> Io {
    match index {
        2 | 3 | 5 => Io::INPUT_OUTPUT_OPTIONAL,
        _ => Io::INPUT_OUTPUT_REQUIRED,
    }
}

unsafe extern "system" fn output_characteristic(_: *const OrtCustomOp, _: usize) -> Io {
    Io::INPUT_OUTPUT_REQUIRED
}

unsafe extern "system" fn memory_type(_: *const OrtCustomOp, _: usize) -> OrtMemType {
    OrtMemType::OrtMemTypeDefault
}

unsafe extern "system" fn min_arity(_: *const OrtCustomOp) -> c_int {
    1
}

unsafe extern "system" fn homogeneity(_: *const OrtCustomOp) -> c_int {
    0
}

/// The `ai.onnx_dlq` versions this op implements: exactly 1.
unsafe extern "system" fn version(_: *const OrtCustomOp) -> c_int {
    dlq_kernels::operator::VERSION as c_int
}

unsafe extern "system" fn create(
    op: *const OrtCustomOp,
    api: *const OrtApi,
    info: *const OrtKernelInfo,
    kernel: *mut *mut c_void,
) -> OrtStatusPtr {
    let ort = Ort { api: &*api };
    let element = element(op);
    let made = catch_unwind(AssertUnwindSafe(|| Kernel::create(ort, info, element)));
    match made {
        Ok(Ok(k)) => {
            *kernel = Box::into_raw(Box::new(k)).cast();
            OrtStatusPtr::default()
        }
        Ok(Err(message)) => ort.error(&message),
        Err(_) => ort.error("DlqConv: creating the kernel panicked (a bug: please report it)"),
    }
}

unsafe extern "system" fn compute(
    kernel: *mut c_void,
    context: *mut OrtKernelContext,
) -> OrtStatusPtr {
    // SAFETY: `kernel` is the pointer `create` returned; ORT may call compute concurrently,
    // so it is only borrowed shared (Kernel's mutable state is behind a Mutex).
    let kernel = &*(kernel as *const Kernel);
    match catch_unwind(AssertUnwindSafe(|| kernel.compute(context))) {
        Ok(Ok(())) => OrtStatusPtr::default(),
        Ok(Err(message)) => kernel.ort().error(&message),
        Err(_) => kernel
            .ort()
            .error("DlqConv: the kernel panicked (a bug: please report it)"),
    }
}

unsafe extern "system" fn destroy(kernel: *mut c_void) {
    if !kernel.is_null() {
        // SAFETY: made by `Box::into_raw` in `create`; ORT destroys each kernel once.
        drop(Box::from_raw(kernel as *mut Kernel));
    }
}
