//! `Ort`: the few ONNX Runtime C API calls the operator needs, wrapped so that every returned
//! status is either turned into a `Result` (and released) or handed back to ORT, and every
//! two-call size query is done once, here. All calls stay within API version 17.

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::{null, null_mut};

use ort_sys::{
    ONNXTensorElementDataType, OrtApi, OrtErrorCode, OrtKernelInfo, OrtStatusPtr, OrtValue,
};

/// The C API version requested from ONNX Runtime (1.17, November 2023, or later).
pub const API_VERSION: u32 = 17;

/// ORT's API table (static inside the ORT library, valid while it is loaded).
#[derive(Clone, Copy)]
pub struct Ort {
    pub api: &'static OrtApi,
}

/// A tensor ORT owns: element type, shape and data pointer (valid while the value is).
pub struct TensorView {
    pub element: ONNXTensorElementDataType,
    pub shape: Vec<usize>,
    pub data: *mut c_void,
    pub len: usize,
}

impl Ort {
    /// `Ok` for a null status, else its message (the status is released).
    ///
    /// # Safety
    /// `status` comes from a call of this API.
    pub unsafe fn check(&self, status: OrtStatusPtr) -> Result<(), String> {
        if status.0.is_null() {
            return Ok(());
        }
        let message = CStr::from_ptr((self.api.GetErrorMessage)(status.0))
            .to_string_lossy()
            .into_owned();
        (self.api.ReleaseStatus)(status.0);
        Err(message)
    }

    /// A status ORT takes ownership of, carrying `message`.
    pub fn error(&self, message: &str) -> OrtStatusPtr {
        let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
        // SAFETY: CreateStatus copies the message; the pointer is valid for the call.
        unsafe { (self.api.CreateStatus)(OrtErrorCode::ORT_INVALID_ARGUMENT, text.as_ptr()) }
    }

    /// A string filled by a two-call API (`fill(buffer, size)`: size query with a null buffer).
    unsafe fn string(
        &self,
        fill: impl Fn(*mut c_char, *mut usize) -> OrtStatusPtr,
    ) -> Result<String, String> {
        let mut size = 0usize;
        self.check(fill(null_mut(), &mut size))?;
        let mut buffer = vec![0u8; size.max(1)];
        self.check(fill(buffer.as_mut_ptr().cast(), &mut size))?;
        let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
        Ok(String::from_utf8_lossy(&buffer[..end]).into_owned())
    }

    /// The node's name.
    pub unsafe fn node_name(&self, info: *const OrtKernelInfo) -> Result<String, String> {
        self.string(|b, s| (self.api.KernelInfo_GetNodeName)(info, b, s))
    }

    /// An absent attribute (`None`) or any other failure (`Err`), from a failed status.
    fn absent<T>(message: String) -> Result<Option<T>, String> {
        if message.contains("No attribute with") {
            Ok(None)
        } else {
            Err(message)
        }
    }

    /// An int attribute, `None` when absent.
    pub unsafe fn attr_int(
        &self,
        info: *const OrtKernelInfo,
        name: &CStr,
    ) -> Result<Option<i64>, String> {
        let mut value = 0i64;
        let status = (self.api.KernelInfoGetAttribute_int64)(info, name.as_ptr(), &mut value);
        match self.check(status) {
            Ok(()) => Ok(Some(value)),
            Err(message) => Self::absent(message),
        }
    }

    /// An ints attribute, `None` when absent.
    pub unsafe fn attr_ints(
        &self,
        info: *const OrtKernelInfo,
        name: &CStr,
    ) -> Result<Option<Vec<i64>>, String> {
        let get = self.api.KernelInfoGetAttributeArray_int64;
        let mut size = 0usize;
        if let Err(message) = self.check(get(info, name.as_ptr(), null_mut(), &mut size)) {
            return Self::absent(message);
        }
        let mut values = vec![0i64; size];
        self.check(get(info, name.as_ptr(), values.as_mut_ptr(), &mut size))?;
        values.truncate(size);
        Ok(Some(values))
    }

    /// A string attribute, `None` when absent.
    pub unsafe fn attr_string(
        &self,
        info: *const OrtKernelInfo,
        name: &CStr,
    ) -> Result<Option<String>, String> {
        let get = self.api.KernelInfoGetAttribute_string;
        match self.string(|b, s| get(info, name.as_ptr(), b, s)) {
            Ok(value) => Ok(Some(value)),
            Err(message) => Self::absent(message),
        }
    }

    /// The number of inputs the node declares (absent optional ones included when followed by
    /// present ones).
    pub unsafe fn input_count(&self, info: *const OrtKernelInfo) -> Result<usize, String> {
        let mut count = 0usize;
        self.check((self.api.KernelInfo_GetInputCount)(info, &mut count))?;
        Ok(count)
    }

    /// The name of input `index` ("" for an absent optional input).
    pub unsafe fn input_name(
        &self,
        info: *const OrtKernelInfo,
        index: usize,
    ) -> Result<String, String> {
        self.string(|b, s| (self.api.KernelInfo_GetInputName)(info, index, b, s))
    }

    /// Input `index`'s value when it is a constant (an initializer), else `None`.
    pub unsafe fn constant_input(
        &self,
        info: *const OrtKernelInfo,
        index: usize,
    ) -> Result<Option<TensorView>, String> {
        let mut is_constant = 0;
        let mut value: *const OrtValue = null();
        self.check((self.api.KernelInfoGetConstantInput_tensor)(
            info,
            index,
            &mut is_constant,
            &mut value,
        ))?;
        if is_constant == 0 || value.is_null() {
            return Ok(None);
        }
        self.tensor(value).map(Some)
    }

    /// The static dimensions of input `index` as declared in the model (`None` entries are
    /// symbolic or unknown), or `None` when ORT knows no shape.
    pub unsafe fn declared_shape(
        &self,
        info: *const OrtKernelInfo,
        index: usize,
    ) -> Result<Option<Vec<Option<usize>>>, String> {
        let mut type_info = null_mut();
        self.check((self.api.KernelInfo_GetInputTypeInfo)(
            info,
            index,
            &mut type_info,
        ))?;
        let mut tensor_info = null();
        let cast = (self.api.CastTypeInfoToTensorInfo)(type_info, &mut tensor_info);
        let shape = match self.check(cast) {
            Ok(()) if !tensor_info.is_null() => self
                .dims(tensor_info)
                .map(|d| Some(d.into_iter().map(|v| usize::try_from(v).ok()).collect())),
            Ok(()) => Ok(None),
            Err(e) => Err(e),
        };
        (self.api.ReleaseTypeInfo)(type_info);
        shape
    }

    unsafe fn dims(
        &self,
        info: *const ort_sys::OrtTensorTypeAndShapeInfo,
    ) -> Result<Vec<i64>, String> {
        let mut rank = 0usize;
        self.check((self.api.GetDimensionsCount)(info, &mut rank))?;
        let mut dims = vec![0i64; rank];
        self.check((self.api.GetDimensions)(info, dims.as_mut_ptr(), rank))?;
        Ok(dims)
    }

    /// Element type, shape and data of a tensor value.
    pub unsafe fn tensor(&self, value: *const OrtValue) -> Result<TensorView, String> {
        let mut info = null_mut();
        self.check((self.api.GetTensorTypeAndShape)(value, &mut info))?;
        let described = (|| {
            let mut element = ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
            self.check((self.api.GetTensorElementType)(info, &mut element))?;
            let mut len = 0usize;
            self.check((self.api.GetTensorShapeElementCount)(info, &mut len))?;
            let shape = self.dims(info)?;
            let shape = shape
                .iter()
                .map(|&d| usize::try_from(d).map_err(|_| format!("tensor dimension {d}")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, String>((element, shape, len))
        })();
        (self.api.ReleaseTensorTypeAndShapeInfo)(info);
        let (element, shape, len) = described?;
        let mut data = null_mut();
        // ORT has no const accessor at API 17; the data is only read through this pointer.
        self.check((self.api.GetTensorMutableData)(value.cast_mut(), &mut data))?;
        Ok(TensorView {
            element,
            shape,
            data,
            len,
        })
    }
}
