//! One `DlqConv` node in an ONNX Runtime session: `Kernel::create` reads the attributes and the
//! constant inputs once, when the session is created, and decodes them with the kernel crate's
//! `operator` module (the same checks as onnx-dlq's tract op, errors naming the node);
//! `Kernel::compute` runs `dlq_kernels::DlqConv::run_parallel` on X, its tasks (subspaces, then
//! blocks of output channels) on ORT's intra-op thread pool.

use std::ffi::{c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use dlq_kernels::operator::{Attributes, Constant, Inputs, Padding, RawAttributes};
use dlq_kernels::DlqConv;
use half::f16;
use ort_sys::ONNXTensorElementDataType as Dt;
use ort_sys::{OrtKernelContext, OrtKernelInfo, OrtValue};

use crate::api::{Ort, TensorView};

/// The element type T of X, atoms, coefficients, B and Y.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    F32,
    F16,
}

/// A kernel valid for one input size (SAME padding depends on it).
struct Prepared {
    key: [usize; 3],
    conv: Arc<DlqConv>,
}

/// The node's state, immutable after creation except for the prepared-kernel cache.
pub struct Kernel {
    ort: Ort,
    name: String,
    element: Element,
    attributes: Attributes,
    inputs: Inputs,
    prepared: Mutex<Option<Prepared>>,
}

/// Input names in slot order, for messages.
const SLOTS: [&str; 6] = [
    "X",
    "atoms",
    "atom_indices",
    "coefficients",
    "assignment",
    "B",
];

/// Values as f32 from a float or (for T = float16) float16 tensor.
unsafe fn floats(t: &TensorView, element: Element, what: &str) -> Result<Constant<f32>, String> {
    let values = match (t.element, element) {
        _ if t.len == 0 => Vec::new(),
        (Dt::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, Element::F32) => {
            std::slice::from_raw_parts(t.data as *const f32, t.len).to_vec()
        }
        (Dt::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, Element::F16) => {
            let bits = std::slice::from_raw_parts(t.data as *const u16, t.len);
            bits.iter().map(|&b| f16::from_bits(b).to_f32()).collect()
        }
        (other, _) => {
            return Err(format!(
                "input {what} has element type {other:?}, expected {element:?}"
            ))
        }
    };
    Ok(Constant {
        shape: t.shape.clone(),
        values,
    })
}

/// Values as u32 from an unsigned (or non-negative signed) integer tensor.
unsafe fn indices(t: &TensorView, what: &str) -> Result<Constant<u32>, String> {
    unsafe fn read<T: Copy + TryInto<u32>>(t: &TensorView) -> Option<Vec<u32>> {
        if t.len == 0 {
            return Some(Vec::new());
        }
        let raw = std::slice::from_raw_parts(t.data as *const T, t.len);
        raw.iter().map(|&v| v.try_into().ok()).collect()
    }
    let values = match t.element {
        Dt::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 => read::<u8>(t),
        Dt::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16 => read::<u16>(t),
        Dt::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32 => read::<u32>(t),
        Dt::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64 => read::<u64>(t),
        Dt::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 => read::<i8>(t),
        Dt::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16 => read::<i16>(t),
        Dt::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 => read::<i32>(t),
        Dt::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 => read::<i64>(t),
        other => {
            return Err(format!(
                "input {what} has element type {other:?}, expected an unsigned integer type"
            ))
        }
    }
    .ok_or_else(|| format!("input {what} holds a value outside 0..2^32"))?;
    Ok(Constant {
        shape: t.shape.clone(),
        values,
    })
}

impl Kernel {
    /// The API table the kernel was created with.
    pub fn ort(&self) -> Ort {
        self.ort
    }

    /// Reads and checks the node once (at session creation). With explicit padding and a known
    /// channel count the kernel is built here too, so an invalid codebook fails the session.
    pub unsafe fn create(
        ort: Ort,
        info: *const OrtKernelInfo,
        element: Element,
    ) -> Result<Kernel, String> {
        let name = ort.node_name(info).unwrap_or_default();
        let at = |e: String| format!("DlqConv node `{name}`: {e}");
        let attributes = Self::attributes(ort, info).map_err(at)?;
        let inputs = Self::constants(ort, info, element).map_err(at)?;
        let kernel = Kernel {
            ort,
            name,
            element,
            attributes,
            inputs,
            prepared: Mutex::new(None),
        };
        let channels = ort
            .declared_shape(info, 0)
            .ok()
            .flatten()
            .and_then(|d| d.get(1).copied().flatten());
        if let (Padding::Explicit(_), Some(c)) = (kernel.attributes.padding, channels) {
            kernel.prepare(c, 0, 0)?;
        }
        Ok(kernel)
    }

    unsafe fn attributes(ort: Ort, info: *const OrtKernelInfo) -> Result<Attributes, String> {
        let ints = |name: &CStr| ort.attr_ints(info, name);
        let raw = RawAttributes {
            strides: ints(c"strides")?,
            pads: ints(c"pads")?,
            dilations: ints(c"dilations")?,
            auto_pad: ort.attr_string(info, c"auto_pad")?,
            subspace: ort.attr_int(info, c"subspace")?,
            activation: ort.attr_string(info, c"activation")?,
        };
        raw.check().map_err(|e| e.to_string())
    }

    /// The constant inputs 1–5; absent optional ones are `None`, a present input that is not an
    /// initializer is an error.
    unsafe fn constants(
        ort: Ort,
        info: *const OrtKernelInfo,
        element: Element,
    ) -> Result<Inputs, String> {
        let count = ort.input_count(info)?;
        let constant = |slot: usize| -> Result<Option<TensorView>, String> {
            if slot >= count || ort.input_name(info, slot)?.is_empty() {
                return Ok(None);
            }
            match ort.constant_input(info, slot)? {
                Some(t) => Ok(Some(t)),
                None => Err(format!(
                    "input {} must be a constant (an initializer)",
                    SLOTS[slot]
                )),
            }
        };
        let required = |slot: usize| {
            constant(slot)?.ok_or_else(|| format!("input {} is required", SLOTS[slot]))
        };
        Ok(Inputs {
            atoms: floats(&required(1)?, element, SLOTS[1])?,
            atom_indices: constant(2)?.map(|t| indices(&t, SLOTS[2])).transpose()?,
            coefficients: constant(3)?
                .map(|t| floats(&t, element, SLOTS[3]))
                .transpose()?,
            assignment: indices(&required(4)?, SLOTS[4])?,
            bias: constant(5)?
                .map(|t| floats(&t, element, SLOTS[5]))
                .transpose()?,
        })
    }

    /// The kernel for `c` channels and (for SAME padding) an `h × w` input, built once per
    /// distinct size and cached.
    fn prepare(&self, c: usize, h: usize, w: usize) -> Result<Arc<DlqConv>, String> {
        let same = matches!(self.attributes.padding, Padding::Same { .. });
        let key = if same { [c, h, w] } else { [c, 0, 0] };
        let mut cache = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.as_ref().filter(|p| p.key == key) {
            return Ok(p.conv.clone());
        }
        let at = |e: String| format!("DlqConv node `{}`: {e}", self.name);
        let kernel = self
            .inputs
            .kernel()
            .ok_or_else(|| at("input assignment must have rank 4".into()))?;
        let pads = self
            .attributes
            .pads_for(h, w, kernel)
            .ok_or_else(|| at("the SAME padding overflows".into()))?;
        let conv = Arc::new(
            self.inputs
                .build(&self.attributes, pads, c)
                .map_err(|e| at(e.to_string()))?,
        );
        *cache = Some(Prepared {
            key,
            conv: conv.clone(),
        });
        Ok(conv)
    }

    /// Y for the X of `context`.
    pub unsafe fn compute(&self, context: *mut OrtKernelContext) -> Result<(), String> {
        let ort = self.ort;
        let at = |e: String| format!("DlqConv node `{}`: {e}", self.name);
        let mut x_value: *const OrtValue = std::ptr::null();
        ort.check((ort.api.KernelContext_GetInput)(context, 0, &mut x_value))
            .map_err(at)?;
        let x = ort.tensor(x_value).map_err(at)?;
        let [b, c, h, w] = x.shape[..] else {
            return Err(at(format!(
                "input X has shape {:?}, expected rank 4",
                x.shape
            )));
        };
        let conv = self.prepare(c, h, w)?;
        let [oh, ow] = conv.geometry().output_size(h, w).ok_or_else(|| {
            at(format!(
                "no output for a {h}×{w} input (the dilated kernel does not fit the padded input)"
            ))
        })?;
        let m = conv.geometry().out_channels;
        let dims = [b, m, oh, ow].map(|d| d as i64);
        let mut y_value: *mut OrtValue = std::ptr::null_mut();
        ort.check((ort.api.KernelContext_GetOutput)(
            context,
            0,
            dims.as_ptr(),
            4,
            &mut y_value,
        ))
        .map_err(at)?;
        let y = ort.tensor(y_value).map_err(at)?;
        let product = |d: &[usize]| d.iter().try_fold(1usize, |p, &v| p.checked_mul(v));
        let (per_x, per_y) = (product(&[c, h, w]), product(&[m, oh, ow]));
        // ORT's tensors are dense: their lengths are the products of their shapes. Checked
        // anyway, as the slices below rely on it.
        let (Some(per_x), Some(per_y)) = (per_x, per_y) else {
            return Err(at("the tensor sizes overflow".into()));
        };
        if Some(x.len) != b.checked_mul(per_x) || Some(y.len) != b.checked_mul(per_y) {
            return Err(at(format!(
                "tensor lengths {} and {} disagree with their shapes",
                x.len, y.len
            )));
        }
        if b == 0 || y.len == 0 {
            return Ok(());
        }
        let result = match self.element {
            Element::F32 => {
                let x = std::slice::from_raw_parts(x.data as *const f32, b * per_x);
                let y = std::slice::from_raw_parts_mut(y.data as *mut f32, b * per_y);
                let done = run_on_pool(ort, context, &conv, x, [b, h, w], y);
                self.attributes.activate(y);
                done
            }
            Element::F16 => {
                let x16 = std::slice::from_raw_parts(x.data as *const u16, b * per_x);
                let y16 = std::slice::from_raw_parts_mut(y.data as *mut u16, b * per_y);
                let x32: Vec<f32> = x16.iter().map(|&v| f16::from_bits(v).to_f32()).collect();
                let mut y32 = vec![0.0f32; b * per_y];
                let done = run_on_pool(ort, context, &conv, &x32, [b, h, w], &mut y32);
                self.attributes.activate(&mut y32);
                for (o, v) in y16.iter_mut().zip(y32) {
                    *o = f16::from_f32(v).to_bits();
                }
                done
            }
        };
        result.map_err(at)
    }
}

/// One `par(n, f)` call of `DlqConv::run_parallel` as seen by ORT's parallel-for callback.
struct Tasks<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    panicked: AtomicBool,
}

/// ORT's parallel-for callback: task `index` (panics are caught and reported after).
unsafe extern "system" fn run_task(data: *mut c_void, index: usize) {
    let tasks = &*(data as *const Tasks);
    if catch_unwind(AssertUnwindSafe(|| (tasks.f)(index))).is_err() {
        tasks.panicked.store(true, Ordering::Relaxed);
    }
}

/// `conv` on the whole batch, its tasks on ORT's intra-op thread pool (the output does not
/// depend on the number of threads: `run_parallel`'s contract).
unsafe fn run_on_pool(
    ort: Ort,
    context: *mut OrtKernelContext,
    conv: &DlqConv,
    x: &[f32],
    [b, h, w]: [usize; 3],
    y: &mut [f32],
) -> Result<(), String> {
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let fail = |e: String| {
        failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    };
    let par = |n: usize, f: &(dyn Fn(usize) + Sync)| {
        let tasks = Tasks {
            f,
            panicked: AtomicBool::new(false),
        };
        let data = &tasks as *const Tasks as *mut c_void;
        if let Err(e) = ort.check((ort.api.KernelContext_ParallelFor)(
            context, run_task, n, 0, data,
        )) {
            fail(e);
        }
        if tasks.panicked.load(Ordering::Relaxed) {
            fail("the kernel panicked (a bug: please report it)".into());
        }
    };
    conv.run_parallel(x, b, h, w, y, &par)
        .map_err(|e| e.to_string())?;
    match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
